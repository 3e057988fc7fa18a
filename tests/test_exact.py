"""Images carried exactly as their registry serves them: the site's registry serves the upstream
digests, and the same bundle still loads into docker and containerd."""

from __future__ import annotations

import json

import pytest
import requests

from bundler import cli
from bundler.format.media import DOCKER_MANIFEST, OCI_MANIFEST
from conftest import write_profile

ACCEPT = f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"
HELLO = b"hello from bundler test image one\n"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def upstream_digest(registry_url: str, repository: str, tag: str) -> str:
    response = requests.head(f"{registry_url}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT},
                             timeout=10)
    assert response.status_code == 200
    return response.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def exact_bundle(tmp_path_factory, registry, pushed, index):
    """app (docker v2 manifest, gzip layers) and app-oci (OCI manifest), both carried exact."""
    folder = tmp_path_factory.mktemp("exact")
    profile = write_profile(folder, registry.host, [pushed["app"], pushed["app-oci"]], index.url, ["alpha==1.0"])
    out = folder / "exact.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "--exact-images", "-q"]) == 0
    return out


def test_the_head_records_the_registrys_own_manifests(exact_bundle, registry, capsys):
    code, out, err = run(capsys, "inspect", str(exact_bundle), "--json")
    assert code == 0, err
    head = json.loads(out)
    assert head["format"] == 2
    for image in head["images"]:
        repository, tag = image["name"].split("/", 1)[1].split(":")
        assert image["exact"] and image["manifest"] == image["digest"] == upstream_digest(registry.url, repository, tag)
        assert all(b["media_type"].endswith("gzip") for b in image["layer_blobs"])
        assert [b["digest"] for b in image["layer_blobs"]] != image["layer_digests"]
    types = {i["name"].rsplit(":", 1)[0].rsplit("/", 1)[1]: i["manifest_media_type"] for i in head["images"]}
    assert types == {"app": DOCKER_MANIFEST, "app-oci": OCI_MANIFEST}
    code, out, _ = run(capsys, "inspect", str(exact_bundle))
    assert code == 0 and "exact" in out
    assert run(capsys, "verify", str(exact_bundle))[0] == 0


def test_the_sites_registry_serves_the_upstream_digests(exact_bundle, registry, registry_factory, dockerd, capsys):
    site = registry_factory()
    code, out, err = run(capsys, "restore", str(exact_bundle), "--images-only", "--registry", site.host)
    assert code == 0, err
    head = json.loads(run(capsys, "inspect", str(exact_bundle), "--json")[1])
    for image in head["images"]:
        repository, tag = image["name"].split("/", 1)[1].split(":")
        assert f"pushed {site.host}/{repository}:{tag}" in out
        assert upstream_digest(site.url, repository, tag) == image["digest"]
        by_digest = f"{site.host}/{repository}@{image['digest']}"
        dockerd.docker("rmi", "-f", by_digest, check=False)
        dockerd.docker("pull", by_digest)
        assert dockerd.docker("run", "--rm", "--network", "none", by_digest).stdout == HELLO
        by_tag = f"{site.host}/{repository}:{tag}"
        dockerd.docker("pull", by_tag)
        assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", by_tag).stdout.decode().strip() == image["id"]


def test_docker_loads_the_same_bundle_decoding_its_layers(exact_bundle, dockerd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    head = json.loads(run(capsys, "inspect", str(exact_bundle), "--json")[1])
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    code, out, err = run(capsys, "restore", str(exact_bundle), "--images-only")
    assert code == 0, err
    for image in head["images"]:
        assert f"loaded {image['tags'][0]}" in out
        assert dockerd.docker("run", "--rm", "--network", "none", image["tags"][0]).stdout == HELLO


def test_containerd_keeps_the_upstream_digests(exact_bundle, containerd, capsys):
    code, _, err = run(capsys, "restore", str(exact_bundle), "--images-only", "--containerd", "--address",
                       containerd.address, "--namespace", "bundler-test")
    assert code == 0, err
    listed = containerd.ctr("images", "ls").stdout
    head = json.loads(run(capsys, "inspect", str(exact_bundle), "--json")[1])
    for image in head["images"]:
        name = image["annotations"]["io.containerd.image.name"]
        line = next(line for line in listed.splitlines() if line.startswith(name + " "))
        assert image["digest"] in line


def test_a_layer_that_does_not_unpack_to_its_diff_id_loads_nothing(exact_bundle, dockerd, tmp_path, capsys,
                                                                    monkeypatch):
    """bundle.json holds every member's sha256, so a lie about what a compressed layer unpacks to can only
    come from a head rewritten to match: restore decodes and checks each layer before docker commits."""
    from bundler.format.archive import read_head
    from testbed import bundles
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    head, _ = read_head(exact_bundle)
    image = head["images"][0]
    layer = image["layer_digests"][0]
    for each in head["images"]:   # the layer, one byte longer than it unpacks to, wherever it is listed
        if layer in each["layer_digests"]:
            each["layer_sizes"][each["layer_digests"].index(layer)] += 1
            each["size"] += 1
    head["totals"]["images"] += 1
    forged = bundles.rewrite_head(exact_bundle, tmp_path / "forged.tar.zst", head)
    dockerd.docker("rmi", "-f", image["id"], check=False)
    code, _, err = run(capsys, "restore", str(forged), "--images-only")
    assert code == 3 and "unpacks to" in err, err
    assert dockerd.docker("image", "inspect", image["id"], check=False).returncode != 0


def test_an_image_pinned_by_digest_alone_gets_a_name_docker_can_run(registry, pushed, index, dockerd, tmp_path,
                                                                     capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    repository = pushed["app"].split("/", 1)[1].split(":")[0]
    digest = upstream_digest(registry.url, repository, "1.0")
    ref = f"{registry.host}/{repository}@{digest}"
    profile = write_profile(tmp_path, registry.host, [ref], index.url, [])
    out = tmp_path / "pinned.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(profile), "-o", str(out), "--exact-images")[0] == 0
    image_id = json.loads(run(capsys, "inspect", str(out), "--json")[1])["images"][0]["id"]
    dockerd.docker("rmi", "-f", image_id, check=False)
    code, printed, err = run(capsys, "restore", str(out), "--images-only")
    assert code == 0, err
    name = f"{registry.host}/{repository}:sha256-{digest[7:19]}"
    assert f"loaded {name}" in printed and "pinned by digest only" in printed
    assert dockerd.docker("run", "--rm", "--network", "none", name).stdout == HELLO


def test_an_index_with_attestations_keeps_its_own_digest_on_the_site(registry, sample_layout, index,
                                                                      registry_factory, dockerd, tmp_path, capsys):
    """buildx lists provenance attestations (platform unknown/unknown) in an image's index: carried with
    the image, they let the site serve the index's own digest, even for a bundle of one platform."""
    from testbed import images as tb_images
    spec = tb_images.ImageSpec([tb_images.busybox_layer(), tb_images.layer_tar({"etc/bundler-test.txt": "attested\n"})])
    sample_layout.add("attested", [spec], index=True, attestations=True)
    sample_layout.push("attested", f"{registry.host}/team/attested:1.0")
    profile = write_profile(tmp_path, registry.host, [f"{registry.host}/team/attested:1.0"], index.url, [])
    out = tmp_path / "attested.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(profile), "-o", str(out), "--exact-images")[0] == 0
    head = json.loads(run(capsys, "inspect", str(out), "--json")[1])
    (entry,) = head["indexes"]
    assert entry["upstream"] and len(entry["attachments"]) == 1
    site = registry_factory()
    code, printed, err = run(capsys, "restore", str(out), "--images-only", "--registry", site.host)
    assert code == 0, err
    assert f"pushed {site.host}/team/attested:1.0" in printed
    response = requests.head(f"{site.url}/v2/team/attested/manifests/1.0",
                             headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    assert response.headers["Docker-Content-Digest"] == entry["digest"]
    index_digest = requests.head(f"{registry.url}/v2/team/attested/manifests/1.0",
                                 headers={"Accept": "application/vnd.oci.image.index.v1+json"},
                                 timeout=10).headers["Docker-Content-Digest"]
    assert entry["digest"] == index_digest
    attachment = entry["attachments"][0]["digest"]
    got = requests.get(f"{site.url}/v2/team/attested/manifests/{attachment}",
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert got.status_code == 200
    by_index = f"{site.host}/team/attested@{entry['digest']}"
    dockerd.docker("pull", by_index)
    assert dockerd.docker("run", "--rm", "--network", "none", by_index).stdout == b"attested\n"
