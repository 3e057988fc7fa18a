"""A bundle's target (platform, CPython, glibc) against the machine that restores it, and the glibc a
profile targets choosing its wheels."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bundler import cli
from bundler.format.head import DEFAULT_GLIBC, glibc_version
from bundler.oci.reference import Platform
from bundler.restore.machine import this_glibc
from conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "format1-bundler-0.1.0.tar.zst"


def profile_file(folder: Path, index_url: str, requirements: list[str], platform: str = "linux/amd64",
                 python: str = "3.10", glibc: str | None = None, images: tuple[str, ...] = (),
                 registry_host: str = "localhost:5000") -> Path:
    lines = ["name: target", "target:", f"  platform: {platform}", f'  python: "{python}"']
    if glibc:
        lines.append(f'  glibc: "{glibc}"')
    if images:
        lines += ["images:"] + [f"  - {ref}" for ref in images]
    if requirements:
        lines += ["python:", "  requirements:"] + [f"    - {r!r}" for r in requirements]
    lines += ["mirrors:", "  registries:", f"    {registry_host}: [official]", f"  pypi: [{index_url}]"]
    path = folder / "target.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(capsys, profile: Path, out: Path, *args: str) -> dict:
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "--cache", str(out.parent / "cache"), "-q", *args]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the glibc a profile targets --------------------------------------------------------------

def test_the_default_glibc_takes_the_wheel_that_holds_the_program_and_restores_it(index, tmp_path, python310,
                                                                                  capsys):
    profile = profile_file(tmp_path, index.url, ["dataserver==1.0"])
    lock = tmp_path / "t.lock"
    assert cli.main(["lock", str(profile), "-o", str(lock), "-q"]) == 0
    assert f"glibc: '{DEFAULT_GLIBC}'" in lock.read_text()
    head = build(capsys, profile, tmp_path / "t.tar.zst", "--lock", str(lock))
    assert head["target"] == {"platform": "linux/amd64", "python": "3.10", "glibc": DEFAULT_GLIBC}
    assert [w["filename"] for w in head["wheels"]] == ["dataserver-1.0-py3-none-manylinux_2_31_x86_64.whl"]
    code, out, _ = run(capsys, "inspect", str(tmp_path / "t.tar.zst"))
    assert code == 0
    assert "target    linux/amd64, CPython 3.10, glibc 2.31 (manylinux_2_31 wheels)" in out
    assert "images" not in out, "a bundle of wheels only has no images line"
    dest = tmp_path / "dest"
    assert cli.main(["restore", str(tmp_path / "t.tar.zst"), "--dest", str(dest), "--python", str(python310)]) == 0
    subprocess.run([str(dest / "venv" / "bin" / "python"), "-c",
                    "import dataserver; assert dataserver.BINARY.is_file(), dataserver.BINARY"], check=True)


def test_an_older_glibc_takes_the_wheel_that_runs_there(index, tmp_path, capsys):
    head = build(capsys, profile_file(tmp_path, index.url, ["dataserver==1.0"], glibc="2.28"), tmp_path / "t.tar.zst")
    assert head["target"]["glibc"] == "2.28"
    assert [w["filename"] for w in head["wheels"]] == ["dataserver-1.0-py3-none-any.whl"]


def test_a_lock_from_before_the_glibc_key_fits_and_one_for_a_newer_glibc_does_not(index, tmp_path, capsys):
    profile = profile_file(tmp_path, index.url, ["dataserver==1.0"])
    lock = tmp_path / "t.lock"
    assert cli.main(["lock", str(profile), "-o", str(lock), "-q"]) == 0
    text = lock.read_text()
    old = tmp_path / "old.lock"
    old.write_text(text.replace(f"  glibc: '{DEFAULT_GLIBC}'\n", ""))
    head = build(capsys, profile, tmp_path / "t.tar.zst", "--lock", str(old))
    assert head["target"]["glibc"] == DEFAULT_GLIBC, "the wheels are chosen for the profile's glibc"
    assert head["wheels"][0]["filename"].endswith("manylinux_2_31_x86_64.whl")
    newer = tmp_path / "newer.lock"
    newer.write_text(text.replace(f"glibc: '{DEFAULT_GLIBC}'", "glibc: '2.35'"))
    code, _, err = run(capsys, "build", "--no-restorer", str(profile), "--lock", str(newer), "-o", str(tmp_path / "n.tar.zst"))
    assert code == 2 and f"the lock was resolved for glibc 2.35, the profile targets glibc {DEFAULT_GLIBC}" in err


@pytest.mark.parametrize("target,line,words", [
    ('platform: windows/amd64\n  glibc: "2.31"', 4, "only a linux target has a glibc"),
    ('platform: linux/amd64\n  glibc: "2.30"', 4, "'2.30' is not a manylinux level"),
    ("platform: linux/amd64\n  glibc: 2.31", 4, "was read as a number"),
])
def test_a_bad_glibc_is_named_with_its_line(target, line, words, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\ntarget:\n  {target}\n")
    code, _, err = run(capsys, "profiles", "show", str(path))
    assert code == 2 and f"{path}:{line}: target.glibc: " in err and words in err, err


def test_a_bundle_from_before_the_glibc_key_reads_as_glibc_2_28(capsys):
    code, out, _ = run(capsys, "inspect", str(GOLDEN), "--json")
    assert code == 0 and "glibc" not in json.loads(out)["target"]
    code, out, _ = run(capsys, "inspect", str(GOLDEN))
    assert code == 0
    assert "CPython 3.10, glibc 2.28 (manylinux_2_28 wheels)" in out


# ---- the machine a bundle is restored on ---------------------------------------------------------

@pytest.fixture
def windows_bundle(index, tmp_path_factory, capsys) -> Path:
    folder = tmp_path_factory.mktemp("windows")
    out = folder / "win.tar.zst"
    head = build(capsys, profile_file(folder, index.url, ["alpha==1.0", "native==1.0"], platform="windows/amd64",
                                      python="3.11"), out)
    assert "native-1.0-cp311-cp311-win_amd64.whl" in [w["filename"] for w in head["wheels"]]
    return out


def test_a_windows_bundle_is_built_without_a_restorer_and_says_why(index, tmp_path, capsys):
    """The one-file restorer is made for Linux machines: a bundle for Windows gets a note, not a failure."""
    out = tmp_path / "win.tar.zst"
    profile = profile_file(tmp_path, index.url, ["alpha==1.0"], platform="windows/amd64", python="3.11")
    assert cli.main(["build", str(profile), "-o", str(out), "--cache", str(tmp_path / "cache")]) == 0
    err = capsys.readouterr().err
    assert "no restorer for windows/amd64 beside the bundle: the one-file restorer is made for Linux machines " \
           "only" in err, err
    assert not out.with_name(out.name + ".pyz").exists()
    assert cli.main(["inspect", str(out), "--json"]) == 0
    assert "restorer" not in json.loads(capsys.readouterr().out)


def test_a_bundle_for_another_platform_is_refused_before_anything(windows_bundle, tmp_path, capsys):
    dest = tmp_path / "dest"
    code, out, err = run(capsys, "restore", str(windows_bundle), "--dest", str(dest))
    assert code == 2 and out == ""
    assert err == (f"bundler: error: {windows_bundle}: the bundle is for windows/amd64, this machine is "
                   f"{Platform.of_this_machine()}: the venv would not run it (--registry and --index-dir DIR take any platform; "
                   "--platform OS/ARCH restores anyway)\n")
    assert not dest.exists()


def test_an_index_of_another_platforms_wheels_needs_no_venv(windows_bundle, tmp_path, capsys):
    dest, site = tmp_path / "dest", tmp_path / "site"
    code, out, err = run(capsys, "restore", str(windows_bundle), "--dest", str(dest), "--index-dir", str(site))
    assert code == 0, err
    assert "native-1.0-cp311-cp311-win_amd64.whl" in (site / "simple" / "native" / "index.html").read_text()
    assert (site / "files" / "native-1.0-cp311-cp311-win_amd64.whl").is_file()
    assert (site / "requirements.lock").is_file() and not (dest / "venv").exists()
    assert "PEP 503 index of 4 wheels" in out


def test_images_for_another_platform_go_to_a_registry_or_where_platform_says(registry, registry_factory, pushed,
                                                                            dockerd, tmp_path, capsys, monkeypatch):
    profile = profile_file(tmp_path, "http://127.0.0.1:9/simple", [], platform="linux/arm64",
                           images=(pushed["multi"],), registry_host=registry.host)
    bundle = tmp_path / "arm.tar.zst"
    head = build(capsys, profile, bundle)
    assert head["images"][0]["platform"] == "linux/arm64"
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    code, _, err = run(capsys, "restore", str(bundle))
    assert code == 2 and f"the bundle is for linux/arm64, this machine is {Platform.of_this_machine()}: docker would not" in err
    site = registry_factory()
    code, out, err = run(capsys, "restore", str(bundle), "--registry", site.host)
    assert code == 0 and "pushed" in out, err
    code, out, err = run(capsys, "restore", str(bundle), "--platform", "linux/arm64")
    assert code == 0, err
    assert dockerd.docker("image", "inspect", head["images"][0]["id"], check=False).returncode == 0


def test_wheels_that_need_a_newer_glibc_are_refused_for_a_venv(index, tmp_path, capsys):
    found = this_glibc()
    if found is None or glibc_version(found) >= (2, 40):
        pytest.skip(f"this machine's C library is {found or 'not glibc'}")
    bundle = tmp_path / "new.tar.zst"
    build(capsys, profile_file(tmp_path, index.url, ["alpha==1.0"], glibc="2.40"), bundle)
    code, _, err = run(capsys, "restore", str(bundle), "--dest", str(tmp_path / "d"))
    assert code == 2 and err == (f"bundler: error: {bundle}: the bundle's wheels need glibc 2.40 or newer "
                                 f"(manylinux_2_40); this machine has glibc {found} (--index-dir DIR alone writes "
                                 "them for another machine)\n")
    assert cli.main(["restore", str(bundle), "--dest", str(tmp_path / "d"), "--index-dir", str(tmp_path / "i")]) == 0


def test_no_python_of_the_targets_version_is_bad_input_naming_both(built_bundle, tmp_path, monkeypatch, capsys):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").symlink_to("/bin/false")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}/usr/bin:/bin")
    code, _, err = run(capsys, "restore", str(built_bundle), "--wheels-only", "--dest", str(tmp_path / "d"))
    assert code == 2, err
    assert "the bundle's wheels are for CPython 3.10; this machine has no python3.10 on PATH (python3 is not " \
           "CPython)" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("flag", ["--dest", "--index-dir"])
def test_a_file_given_as_a_folder_is_bad_input(flag, built_bundle, python310, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    args = ["restore", str(built_bundle), "--wheels-only", "--python", str(python310), flag, str(taken)]
    if flag != "--dest":
        args += ["--dest", str(tmp_path / "d")]
    code, _, err = run(capsys, *args)
    assert (code, err) == (2, f"bundler: error: {flag} {taken}: exists and is not a folder\n")
    assert taken.read_text() == "mine"
