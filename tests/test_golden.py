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
import sys
from pathlib import Path

import pytest

from conftest import bundler_cmd, offline

GOLDEN = Path(__file__).parent / "golden"

# name -> (sha256 of the file as committed, format it stands for, the image it holds)
BUNDLES = {
    "format1-bundler-0.1.0.tar.zst": ("463bfb1fc8d0ad4abbef77dbc2747dd7b2e3b8699a2b271e69186c570aa82a51", 1,
                                      "golden/app:1.0"),
    "format2-bundler-0.2.0.tar.zst": ("d6f6a1e54d7a66f8e2a2db740c6f1dd53897e52c270aa173006c8279a80a230a", 2,
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
    assert {i["tags"][0].split("/", 1)[1] for i in head["images"]} == {image}
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
    here = next(i for i in head["images"] if i["platform"] == "linux/amd64")   # what restore takes here
    tag = here["tags"][0]
    dockerd.docker("rmi", "-f", here["id"], check=False)
    dest = tmp_path / "restored"
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    result = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310), "--check"),
                     capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "hello from a golden venv" in result.stdout and "check passed" in result.stdout
    run = dockerd.docker("run", "--rm", "--network", "none", tag)
    assert run.stdout == b"hello from the golden bundle\n"
    assert tag.endswith(image)


# what the format-2 golden bundle's models hold (tests/golden/make_golden.py --format2): path -> sha256
GOLDEN_MODELS = {
    "hf:golden/tiny@main": {"config.json", "model.safetensors", "tokenizer/vocab.txt"},
    "hf:datasets/golden/data@main": {"train.jsonl"},
    "ms:golden/tiny-ms@master": {"configuration.json", "model.safetensors"},
}


def test_the_format_2_golden_bundles_models_restore_where_the_hubs_clients_find_them(tmp_path, can_unshare):
    bundle = tmp_path / "format2.tar.zst"
    shutil.copyfile(GOLDEN / "format2-bundler-0.2.0.tar.zst", bundle)
    head = json.loads(subprocess.run(bundler_cmd("inspect", str(bundle), "--json"), capture_output=True,
                                     text=True, check=True).stdout)
    pinned = {f"{'hf' if m['hub'] == 'huggingface' else 'ms'}:{'datasets/' if m['repo_type'] == 'dataset' else ''}"
              f"{m['repo']}@{m['revision']}": {f["path"]: f["sha256"] for f in m["files"]} for m in head["models"]}
    assert {name: set(files) for name, files in pinned.items()} == GOLDEN_MODELS
    dest = tmp_path / "restored"
    result = offline(bundler_cmd("restore", str(bundle), "--models-only", "--dest", str(dest)), capture_output=True,
                     text=True)
    assert result.returncode == 0, result.stderr
    script = (
        "import hashlib, json, pathlib\n"
        "from huggingface_hub import snapshot_download\n"
        "found = {}\n"
        "for name, repo, kind in (('hf:golden/tiny@main', 'golden/tiny', 'model'),\n"
        "                         ('hf:datasets/golden/data@main', 'golden/data', 'dataset')):\n"
        "    folder = pathlib.Path(snapshot_download(repo, revision='main', repo_type=kind))\n"
        "    found[name] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()\n"
        "                   for p in folder.rglob('*') if p.is_file()}\n"
        "print(json.dumps(found))\n")
    env = {**os.environ, "HF_HOME": str(dest / "huggingface"), "HF_HUB_OFFLINE": "1"}
    read = offline([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert read.returncode == 0, read.stderr
    found = json.loads(read.stdout)
    assert found == {name: files for name, files in pinned.items() if name.startswith("hf:")}
    # ModelScope's layout (1.38 and later): models/ORG--NAME/snapshots/REVISION/PATH, plain files
    snapshot = dest / "modelscope" / "models" / "golden--tiny-ms" / "snapshots" / "master"
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in snapshot.iterdir()} == \
        pinned["ms:golden/tiny-ms@master"]
