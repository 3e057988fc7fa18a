"""The site's registry holds whole bundles: bundler push, restore oci://, and what stock tools see."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

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


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links followed) and what it hashes to."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_models_go_up_as_modelpack_artifacts_and_a_node_lays_them_out_as_from_the_file(site, sample_models_bundle, tmp_path):
    assert cli.main(["push", str(sample_models_bundle), f"{site.host}/bundles/models:v1", "--plain-http", "-q"]) == 0
    head, _ = read_head(sample_models_bundle)
    _, index = get_manifest(site, "bundles/models", "v1")
    models = [m for m in index["manifests"] if m["annotations"][KIND] == "model"]
    assert len(models) == len(head["models"])
    for child, model in zip(models, head["models"]):
        _, manifest = get_manifest(site, "bundles/models", child["digest"])
        assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
        assert [layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]] == \
            [f["path"] for f in model["files"]]
        assert [layer["digest"] for layer in manifest["layers"]] == [f"sha256:{f['sha256']}" for f in model["files"]]
    from_file, from_site = tmp_path / "file", tmp_path / "site"
    assert cli.main(["restore", str(sample_models_bundle), "--models-only", "--dest", str(from_file), "-q"]) == 0
    assert cli.main(["restore", f"oci://{site.host}/bundles/models:v1", "--plain-http", "--models-only",
                     "--dest", str(from_site), "-q"]) == 0
    assert tree(from_site) == tree(from_file) and tree(from_site)


def test_a_signed_bundle_keeps_its_signature_in_the_registry_and_trust_is_checked(site, testbed_profile, tmp_path,
                                                                                 capsys):
    from test_trust import allowed_signers, keygen
    key, other = keygen(tmp_path, "site"), keygen(tmp_path, "other")
    signed = tmp_path / "signed.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(signed), "--sign", str(key), "-q"]) == 0
    assert cli.main(["push", str(signed), f"{site.host}/bundles/signed:v1", "--plain-http", "-q",
                     "--trust", str(allowed_signers(tmp_path / "trusted", key))]) == 0
    ref = f"oci://{site.host}/bundles/signed:v1"
    trusted = allowed_signers(tmp_path / "mine", key)
    assert cli.main(["restore", ref, "--plain-http", "--wheels-only", "--dest", str(tmp_path / "d1"), "--index-dir",
                     str(tmp_path / "index"),
                     "--trust", str(trusted)]) == 0
    assert "signed by" in capsys.readouterr().out
    refused = cli.main(["restore", ref, "--plain-http", "--wheels-only", "--dest", str(tmp_path / "d2"), "--index-dir",
                        str(tmp_path / "index2"),
                        "--trust", str(allowed_signers(tmp_path / "theirs", other))])
    assert refused == 3 and "does not trust" in capsys.readouterr().err
    assert not (tmp_path / "index2").exists()


def test_containerd_takes_the_images_from_the_registry(site, pushed_site, built_bundle, containerd, capsys):
    assert cli.main(["restore", pushed_site, "--plain-http", "--images-only", "--containerd", "--address",
                     containerd.address, "--namespace", "site-test"]) == 0
    listed = containerd.ctr("images", "ls", "-q", namespace="site-test").stdout
    head, _ = read_head(built_bundle)
    for image in head["images"]:
        assert image["annotations"]["io.containerd.image.name"] in listed


def test_an_inventory_of_the_registry_makes_a_delta_that_carries_only_what_it_lacks(site, delta_bundles,
                                                                                    delta_updates, tmp_path, capsys):
    assert cli.main(["push", str(delta_bundles["v1"]), f"{site.host}/bundles/inv:v1", "--plain-http", "-q"]) == 0
    inventory = tmp_path / "site.json"
    assert cli.main(["inventory", "--registry", site.host, "--insecure", "--repository", "bundles/inv",
                     "-o", str(inventory), "-q"]) == 0
    data = json.loads(inventory.read_text())
    v1, _ = read_head(delta_bundles["v1"])
    assert {w["sha256"] for w in v1["wheels"]} <= {w["sha256"] for w in data["wheels"]}
    delta = tmp_path / "d2.tar.zst"
    assert cli.main(["build", "--no-restorer", str(delta_updates["v2"]), "--since", str(inventory), "-o", str(delta),
                     "-q"]) == 0
    head, _ = read_head(delta)
    assert set(head["delta"]["wheels"]) == {w["sha256"] for w in v1["wheels"]}
    carried = {m["path"] for m in head["members"]}
    assert not {f"wheels/{w['filename']}" for w in v1["wheels"]} & carried
    assert cli.main(["push", str(delta), f"{site.host}/bundles/inv:v2", "--plain-http", "-q"]) == 0
    index = tmp_path / "index"
    assert cli.main(["restore", f"oci://{site.host}/bundles/inv:v2", "--plain-http", "--wheels-only",
                     "--dest", str(tmp_path / "dest"), "--index-dir", str(index), "-q"]) == 0
    assert {p.name for p in (index / "files").iterdir()} == {w["filename"] for w in head["wheels"]}


def test_a_registry_with_a_login_takes_it_from_the_environment_and_never_says_it(registry_factory, built_bundle,
                                                                                 tmp_path, monkeypatch, capsys):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(services.htpasswd_line("site", "s3cret-pw") + "\n")
    secured = registry_factory(auth={"htpasswd": {"realm": "site", "path": str(htpasswd)}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.setenv("BUNDLER_REGISTRY_USER", "site")
    monkeypatch.setenv("BUNDLER_REGISTRY_PASSWORD", "wrong-pw")
    assert cli.main(["push", str(built_bundle), f"{secured.host}/bundles/locked:v1", "--plain-http"]) == 1
    err = capsys.readouterr().err
    assert "credentials were refused" in err and "wrong-pw" not in err
    monkeypatch.setenv("BUNDLER_REGISTRY_PASSWORD", "s3cret-pw")
    assert cli.main(["push", str(built_bundle), f"{secured.host}/bundles/locked:v1", "--plain-http", "-q"]) == 0
    assert cli.main(["restore", f"oci://{secured.host}/bundles/locked:v1", "--plain-http", "--wheels-only",
                     "--dest", str(tmp_path / "dest"), "--index-dir", str(tmp_path / "index"), "-q"]) == 0
    assert "s3cret-pw" not in "".join(capsys.readouterr())


def test_an_exact_image_keeps_its_upstream_digest_on_the_site(site, testbed_profile, registry, tmp_path):
    exact = tmp_path / "exact.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "--exact-images", "-o", str(exact), "-q"]) == 0
    assert cli.main(["push", str(exact), f"{site.host}/bundles/exact:v1", "--plain-http", "-q"]) == 0
    head, _ = read_head(exact)
    for image in head["images"]:
        repository, tag = image["name"].split("/", 1)[1].rsplit(":", 1)
        upstream, _ = get_manifest(registry, repository, tag)
        pushed, _ = get_manifest(site, repository, tag)
        assert pushed == upstream == image["digest"]
