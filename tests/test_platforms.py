"""A bundle for several platforms (linux/amd64 and linux/arm64): images for each with their index,
wheels for each (common ones stored once) under one lock that says which pin is for which."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from bundler import cli
from bundler.format.media import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from conftest import bundler_cmd, offline

ACCEPT = f"{OCI_INDEX}, {DOCKER_MANIFEST}, {OCI_MANIFEST}"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def served(registry_url: str, repository: str, reference: str) -> tuple[int, str | None]:
    response = requests.head(f"{registry_url}/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT},
                             timeout=10)
    return response.status_code, response.headers.get("Docker-Content-Digest")


def two_platform_profile(folder, registry, image: str, index_url: str, exact: bool):
    text = f"""\
name: both
target:
  platform: [linux/amd64, linux/arm64]
  python: "3.10"
images:
  - ref: {image}
    exact: {'true' if exact else 'false'}
python:
  requirements: [alpha==1.0, native==1.0]
mirrors:
  registries:
    {registry.host}: [official]
  pypi: [{index_url}]
"""
    path = folder / "both.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["exact", "unpacked"])
def two_platforms(request, tmp_path_factory, registry, pushed, index):
    folder = tmp_path_factory.mktemp("platforms")
    profile = two_platform_profile(folder, registry, pushed["multi"], index.url, request.param)
    out = folder / "both.tar.zst"
    result = subprocess.run(bundler_cmd("build", "--no-restorer", str(profile), "-o", str(out)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    head = json.loads(subprocess.run(bundler_cmd("inspect", str(out), "--json"), capture_output=True, text=True,
                                     check=True).stdout)
    return request.param, out, head


def test_the_bundle_holds_each_platform_and_the_index(two_platforms, registry, pushed):
    exact, _, head = two_platforms
    assert head["format"] == 2 and head["target"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert sorted(i["platform"] for i in head["images"]) == ["linux/amd64", "linux/arm64"]
    (index,) = head["indexes"]
    repository = pushed["multi"].split("/", 1)[1].split(":")[0]
    upstream = served(registry.url, repository, "1.0")[1]
    assert index["upstream"] is exact and (index["digest"] == upstream) is exact
    assert sorted(index["manifests"]) == sorted(i["manifest"] for i in head["images"])
    wheels = {w["filename"]: w["platforms"] for w in head["wheels"]}
    assert wheels["alpha-1.0-py3-none-any.whl"] == ["linux/amd64", "linux/arm64"]   # stored once, for both
    native = {name: platforms for name, platforms in wheels.items() if name.startswith("native-")}
    assert sorted(native.values()) == [["linux/amd64"], ["linux/arm64"]]
    assert sum(1 for w in head["wheels"] if w["name"] == "alpha") == 1


def test_a_registry_gets_every_platform_and_the_index(two_platforms, registry_factory, dockerd, capsys):
    _, bundle, head = two_platforms
    site = registry_factory()
    code, out, err = run(capsys, "restore", str(bundle), "--images-only", "--registry", site.host)
    assert code == 0, err
    (index,) = head["indexes"]
    repository = index["name"].split("/", 1)[1].split(":")[0]
    assert served(site.url, repository, "1.0") == (200, index["digest"])
    assert f"pushed {site.host}/{repository}:1.0 (an index of linux/amd64, linux/arm64)" in out
    for image in head["images"]:   # both platforms' manifests, and every blob of arm64 too
        assert served(site.url, repository, image["manifest"]) == (200, image["manifest"])
        for blob in image["layer_blobs"] + [{"digest": image["id"]}]:
            response = requests.head(f"{site.url}/v2/{repository}/blobs/{blob['digest']}", timeout=10)
            assert response.status_code == 200, (image["platform"], blob)
    ref = f"{site.host}/{repository}:1.0"
    dockerd.docker("rmi", "-f", ref, check=False)
    dockerd.docker("pull", ref)   # the index: docker picks amd64
    assert dockerd.docker("run", "--rm", "--network", "none", ref).stdout == b"amd64\n"


def test_docker_and_the_venv_take_this_machines_platform(two_platforms, dockerd, python310, tmp_path, can_unshare):
    _, bundle, head = two_platforms
    amd64 = next(i for i in head["images"] if i["platform"] == "linux/amd64")
    arm64 = next(i for i in head["images"] if i["platform"] == "linux/arm64")
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    dest = tmp_path / "restored"
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    result = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310)),
                     capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    ids = dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split()
    assert amd64["id"] in ids and arm64["id"] not in ids
    tag = amd64["tags"][0]
    assert dockerd.docker("run", "--rm", "--network", "none", tag).stdout == b"amd64\n"
    venv = dest / "venv" / "bin" / "python"
    out = subprocess.run([str(venv), "-c", "import native, alpha; print(native.__file__)"], capture_output=True,
                         text=True, check=True).stdout
    assert "site-packages" in out
    installed = subprocess.run([str(venv), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                               check=True).stdout
    assert {p["name"] for p in json.loads(installed)} >= {"alpha", "beta", "native"}
    record = next((dest / "venv").glob("lib/python3.10/site-packages/native-1.0.dist-info/WHEEL")).read_text()
    assert "x86_64" in record and "aarch64" not in record
    here = [w for w in head["wheels"] if "linux/amd64" in w["platforms"]]
    assert len(here) < len(head["wheels"])     # the count said is this platform's, not the bundle's
    assert f"venv {dest / 'venv'}: {len(here)} wheels installed offline" in result.stdout, result.stdout


def test_the_other_platform_is_chosen_by_name_and_an_unknown_one_refused(two_platforms, dockerd, tmp_path, capsys,
                                                                        monkeypatch):
    _, bundle, head = two_platforms
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    arm64 = next(i for i in head["images"] if i["platform"] == "linux/arm64")
    dockerd.docker("rmi", "-f", arm64["id"], check=False)
    code, _, err = run(capsys, "restore", str(bundle), "--images-only", "--platform", "linux/arm64")
    assert code == 0, err
    inspected = json.loads(dockerd.docker("image", "inspect", arm64["id"]).stdout)
    assert inspected[0]["Architecture"] == "arm64"
    dockerd.docker("rmi", "-f", arm64["id"], check=False)
    code, _, err = run(capsys, "restore", str(bundle), "--images-only", "--platform", "linux/s390x")
    assert code == 2 and "the bundle holds linux/amd64, linux/arm64; --platform is linux/s390x" in err


def test_one_lock_says_which_pin_is_for_which_platform(registry, pushed, index, tmp_path, capsys):
    profile = two_platform_profile(tmp_path, registry, pushed["multi"], index.url, exact=False)
    lock = tmp_path / "both.lock"
    assert run(capsys, "lock", str(profile), "-o", str(lock))[0] == 0
    text = lock.read_text()
    assert "platform:\n  - linux/amd64\n  - linux/arm64" in text
    assert text.count("name: ") == 2   # the image, once per platform
    assert run(capsys, "build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(tmp_path / "b.tar.zst"))[0] == 0
