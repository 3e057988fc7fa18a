"""Bundles made by earlier releases restore with this one, offline: the format's promise.

The files in tests/golden/ were made once by the release their name gives (tests/golden/make_golden.py
says how) and are never made again: a change that breaks one of these tests breaks the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import bundler_cmd, offline

GOLDEN = Path(__file__).parent / "golden"

# name -> (sha256 of the file as committed, format it stands for, the image it holds)
BUNDLES = {
    "format1-bundler-0.1.0.tar.zst": ("463bfb1fc8d0ad4abbef77dbc2747dd7b2e3b8699a2b271e69186c570aa82a51", 1,
                                      "golden/app:1.0"),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_the_golden_bundle_is_the_one_its_release_made(name):
    expected, _, _ = BUNDLES[name]
    assert _sha256(GOLDEN / name) == expected, (
        f"{name} changed: golden bundles are never made again; a new format gets a new golden bundle beside it")


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_inspect_and_verify_read_the_golden_bundle(name):
    _, version, image = BUNDLES[name]
    shown = subprocess.run(bundler_cmd("inspect", str(GOLDEN / name), "--json"), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    head = json.loads(shown.stdout)
    assert head["format"] == version
    assert [i["tags"][0].split("/", 1)[1] for i in head["images"]] == [image]
    checked = subprocess.run(bundler_cmd("verify", str(GOLDEN / name)), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_the_golden_bundle_restores_offline_into_docker_and_a_venv(name, dockerd, python310, tmp_path,
                                                                     can_unshare):
    _, _, image = BUNDLES[name]
    bundle = tmp_path / name
    shutil.copyfile(GOLDEN / name, bundle)
    head = json.loads(subprocess.run(bundler_cmd("inspect", str(bundle), "--json"), capture_output=True,
                                     text=True, check=True).stdout)
    tag = head["images"][0]["tags"][0]
    dockerd.docker("rmi", "-f", head["images"][0]["id"], check=False)
    dest = tmp_path / "restored"
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    result = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310), "--check"),
                     capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "hello from a golden venv" in result.stdout and "check passed" in result.stdout
    run = dockerd.docker("run", "--rm", "--network", "none", tag)
    assert run.stdout == b"hello from the golden bundle\n"
    assert tag.endswith(image)
