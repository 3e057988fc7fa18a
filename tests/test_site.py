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
