"""The site's registry holds whole bundles: bundler push, restore oci://, and what stock tools see."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from bundler import cli
from bundler.format.archive import read_head
from bundler.format.site import BUNDLE_ARTIFACT, HEAD_SHA256, KIND
from conftest import bundler_cmd
from testbed import services


@pytest.fixture(scope="module")
def site(registry_factory) -> services.Registry:
    return registry_factory()


def get_manifest(registry: services.Registry, repository: str, reference: str) -> tuple[str, dict]:
    accept = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])
    response = requests.get(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": accept},
                            timeout=10)
    assert response.status_code == 200, (repository, reference, response.text)
    return response.headers["Docker-Content-Digest"], response.json()


def test_push_puts_the_images_under_their_names_and_the_bundle_at_repo_tag(site, built_bundle, capsys):
    head, _ = read_head(built_bundle)
    assert cli.main(["push", str(built_bundle), f"{site.host}/bundles/testbed:v1", "--plain-http"]) == 0
    out = capsys.readouterr().out
    digest, index = get_manifest(site, "bundles/testbed", "v1")
    assert digest in out
    assert index["annotations"][HEAD_SHA256]
    kinds = [m["annotations"][KIND] for m in index["manifests"]]
    assert kinds.count("image") == len(head["images"]) and kinds.count("bundle") == 1
    for image in head["images"]:
        repository, tag = image["name"].split("/", 1)[1].rsplit(":", 1)
        _, manifest = get_manifest(site, repository, tag)
        assert manifest["config"]["digest"] == image["id"]
        assert all(layer["mediaType"].endswith("+gzip") for layer in manifest["layers"])
    artifact = next(m for m in index["manifests"] if m["annotations"][KIND] == "bundle")
    _, body = get_manifest(site, "bundles/testbed", artifact["digest"])
    assert body["artifactType"] == BUNDLE_ARTIFACT
    titles = {layer["annotations"]["org.opencontainers.image.title"] for layer in body["layers"]}
    assert "bundle.json" in titles and "requirements.lock" in titles
    assert {f"wheels/{w['filename']}" for w in head["wheels"]} <= titles


def test_a_second_push_sends_nothing_again(site, built_bundle, capsys):
    assert cli.main(["push", str(built_bundle), f"{site.host}/bundles/testbed:v1", "--plain-http"]) == 0
    capsys.readouterr()
    assert cli.main(["push", str(built_bundle), f"{site.host}/bundles/testbed:again", "--plain-http"]) == 0
    assert "0 blobs sent" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pushed_site(site, built_bundle):
    assert cli.main(["push", str(built_bundle), f"{site.host}/bundles/testbed:v1", "--plain-http", "-q"]) == 0
    return f"oci://{site.host}/bundles/testbed:v1"


@pytest.fixture
def clean_docker(dockerd, built_bundle):
    head, _ = read_head(built_bundle)
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
        for tag in image["tags"]:
            dockerd.docker("rmi", "-f", tag, check=False)
    return head


def restore(dockerd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    return subprocess.run(bundler_cmd("restore", *args), capture_output=True, text=True, env=env, check=False)


def test_a_node_restores_images_and_a_venv_from_the_registry(dockerd, pushed_site, clean_docker, python310, tmp_path):
    dest = tmp_path / "node"
    result = restore(dockerd, pushed_site, "--plain-http", "--dest", str(dest), "--python", str(python310))
    assert result.returncode == 0, result.stderr
    loaded = set(dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split())
    assert {image["id"] for image in clean_docker["images"]} <= loaded
    out = subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import alpha, beta, native; print(native.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "1.0\n"
    again = restore(dockerd, pushed_site, "--plain-http", "--dest", str(dest), "--python", str(python310))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


def test_a_damaged_blob_in_the_registry_is_caught_and_nothing_is_restored(site, built_bundle, dockerd, clean_docker,
                                                                          python310, tmp_path):
    assert cli.main(["push", str(built_bundle), f"{site.host}/bundles/damaged:v1", "--plain-http", "-q"]) == 0
    head, _ = read_head(built_bundle)
    wheel = head["wheels"][0]["sha256"]
    blob = next((site.root / "data").rglob(f"blobs/sha256/{wheel[:2]}/{wheel}/data"))
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        dest = tmp_path / "node"
        result = restore(dockerd, f"oci://{site.host}/bundles/damaged:v1", "--plain-http", "--dest", str(dest),
                         "--python", str(python310))
        assert result.returncode == 3, result.stderr
        assert head["wheels"][0]["filename"] in result.stderr
        loaded = set(dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split())
        assert not {image["id"] for image in clean_docker["images"]} & loaded
        assert not (dest / "venv" / ".bundler-restored").exists()
    finally:
        blob.write_bytes(original)


def test_a_delta_pushed_after_its_base_restores_on_a_node_as_the_full_bundle(site, delta_bundles, dockerd, python310,
                                                                             tmp_path, capsys):
    base, delta, full = delta_bundles["v1"], delta_bundles["d2"], delta_bundles["v2"]
    refused = cli.main(["push", str(delta), f"{site.host}/bundles/delta:v2", "--plain-http"])
    assert refused == 1
    err = capsys.readouterr().err
    assert "not in this delta, and not on" in err and "v1.tar.zst" in err
    assert cli.main(["push", str(base), f"{site.host}/bundles/delta:v1", "--plain-http", "-q"]) == 0
    assert cli.main(["push", str(delta), f"{site.host}/bundles/delta:v2", "--plain-http", "-q"]) == 0
    out = capsys.readouterr().out
    assert "blobs sent" in out
    # the registry holds v2 whole: its images pull by name, with every layer
    head, _ = read_head(full)
    for image in head["images"]:
        dockerd.docker("rmi", "-f", *image["tags"], check=False)
        dockerd.docker("rmi", "-f", image["id"], check=False)
    result = restore(dockerd, f"oci://{site.host}/bundles/delta:v2", "--plain-http", "--dest", str(tmp_path / "n"),
                     "--python", str(python310))
    assert result.returncode == 0, result.stderr
    loaded = set(dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split())
    assert {image["id"] for image in head["images"]} <= loaded
    marker = dockerd.docker("run", "--rm", "--network", "none", head["images"][0]["tags"][0], "cat",
                            "/etc/bundler-test.txt").stdout.decode()
    assert marker.endswith(" v2\n")


def test_skopeo_copies_a_pushed_bundle_and_a_node_restores_from_the_copy(site, pushed_site, registry_factory,
                                                                         dockerd, clean_docker, tmp_path):
    inner = registry_factory()
    source = pushed_site.replace("oci://", "docker://")
    copied = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", source,
                             f"docker://{inner.host}/enclave/testbed:v1"], capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    result = restore(dockerd, f"oci://{inner.host}/enclave/testbed:v1", "--plain-http", "--images-only")
    assert result.returncode == 0, result.stderr
    loaded = set(dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split())
    assert {image["id"] for image in clean_docker["images"]} <= loaded
