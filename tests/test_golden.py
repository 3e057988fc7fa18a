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


# a delta of format 2 against the format-1 golden bundle: the image rebuilt (a patch), one wheel more
DELTA = "format2-delta-bundler-0.2.0.tar.zst"
DELTA_SHA256 = "8a2dfb06e94c5428262163da34377f8d9476bc63d08bcd402d45c3d7acc0d8a2"


# a wheels-only bundle of format 1, signed by a key made for it (only its public half was kept)
SIGNED = "format1-signed-bundler-0.2.0.tar.zst"
SIGNED_SHA256 = "7c4256a03a99dadd842d8f7744447ed1d4bcc6cdf873d31e28f3b0b66b16281c"
SIGNERS = GOLDEN / "format1-signed-bundler-0.2.0.allowed_signers"


@pytest.mark.parametrize("name", sorted(BUNDLES) + [DELTA, SIGNED])
def test_the_golden_bundle_is_the_one_its_release_made(name):
    expected = BUNDLES[name][0] if name in BUNDLES else {DELTA: DELTA_SHA256, SIGNED: SIGNED_SHA256}[name]
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


def test_the_golden_delta_restores_offline_onto_the_site_of_the_format_1_golden_bundle(dockerd, python310, tmp_path,
                                                                                       registry_factory, can_unshare):
    base, delta = tmp_path / "format1.tar.zst", tmp_path / DELTA
    shutil.copyfile(GOLDEN / "format1-bundler-0.1.0.tar.zst", base)
    shutil.copyfile(GOLDEN / DELTA, delta)
    head = json.loads(subprocess.run(bundler_cmd("inspect", str(delta), "--json"), capture_output=True, text=True,
                                     check=True).stdout)
    assert head["format"] == 2 and head["delta"]["patches"] and head["delta"]["wheels"]
    assert subprocess.run(bundler_cmd("verify", str(delta)), capture_output=True).returncode == 0
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    dest = tmp_path / "restored"
    for bundle in (base, delta):
        result = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310)),
                         capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    tag = head["images"][0]["tags"][0]
    assert dockerd.docker("run", "--rm", "--network", "none", tag).stdout == b"hello from the golden delta\n"
    assert dockerd.docker("run", "--rm", "--network", "none", tag, "cat", "/etc/golden-v2.txt").stdout == b"rebuilt\n"
    probe = subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import golden_extra; print(golden_extra.TEXT)"],
                           capture_output=True, text=True)
    assert probe.stdout == "hello from a golden update\n", probe.stderr
    site = registry_factory()   # a registry that never saw the base: the golden bundle gives it with --base
    result = subprocess.run(bundler_cmd("restore", str(delta), "--images-only", "--registry", site.host, "--base",
                                        str(base)), capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_the_signed_golden_bundle_is_trusted_and_restores_offline(python310, tmp_path, can_unshare):
    bundle = tmp_path / SIGNED
    shutil.copyfile(GOLDEN / SIGNED, bundle)
    dest = tmp_path / "restored"
    result = offline(bundler_cmd("restore", str(bundle), "--trust", str(SIGNERS), "--dest", str(dest),
                                 "--python", str(python310), "--check"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "signed by golden@bundler (ED25519 key SHA256:" in result.stdout
    assert "hello from a golden venv" in result.stdout and "check passed" in result.stdout
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "golden@bundler", "-f", str(stranger)],
                   check=True)
    kind, public = stranger.with_suffix(".pub").read_text().split()[:2]
    (tmp_path / "stranger.allowed").write_text(f"golden@bundler {kind} {public}\n")
    refused = subprocess.run(bundler_cmd("verify", str(bundle), "--trust", str(tmp_path / "stranger.allowed")),
                             capture_output=True, text=True)
    assert refused.returncode == 3 and "stranger.allowed does not trust" in refused.stderr, refused.stderr


def test_stock_ssh_keygen_verifies_the_signed_golden_bundle(tmp_path):
    """The signature a 0.2.0 build made, checked with zstd, tar and ssh-keygen as README shows."""
    bundle, sig = GOLDEN / SIGNED, GOLDEN / f"{SIGNED}.sig"
    script = (f"zstd -dc {bundle} | tar -xOf - --occurrence bundle.json > {tmp_path}/bundle.json && "
              f"ssh-keygen -Y verify -f {SIGNERS} -I golden@bundler -n bundler -s {sig} < {tmp_path}/bundle.json")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'Good "bundler" signature for golden@bundler with ED25519 key' in result.stdout
