"""The shared cache's temp files: what a killed process left is reclaimed by the next one (never what a
live one holds), and `bundler cache info | prune` show and trim the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundler import cli
from bundler.build.cache import Cache
from conftest import REPO, offline
from testbed import services

# A process that takes a temp file in the cache, fills it, says so, then waits to be killed.
HOLDER = """
import sys, time
from bundler.build.cache import Cache
cache = Cache(sys.argv[1])
path = cache.temp("layer")
path.write_bytes(b"x" * int(sys.argv[2]))
print(path, flush=True)
time.sleep(600)
"""


def holder(root: Path, size: int) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(size)], stdout=subprocess.PIPE,
                               text=True)
    return process, Path(process.stdout.readline().strip())


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_the_temp_files_of_a_killed_process_are_reclaimed_and_a_live_ones_kept(tmp_path):
    root = tmp_path / "cache"
    dead, dead_file = holder(root, 3 << 20)
    live, live_file = holder(root, 1 << 20)
    try:
        stop(dead)
        assert dead_file.is_file(), "the killed process's temp file is there until someone reclaims it"
        cache = Cache(root)
        assert (cache.reclaimed.entries, cache.reclaimed.bytes) == (1, 3 << 20)
        assert not dead_file.exists() and not dead_file.parent.exists()
        assert live_file.is_file(), "a live process's temp file was taken from it"
        assert Cache(root).reclaimed.entries == 0
    finally:
        stop(live)
    assert Cache(root).reclaimed.entries == 1 and not live_file.parent.exists()


def test_a_cache_used_to_its_end_leaves_no_temp_folder(tmp_path):
    script = "import sys; from bundler.build.cache import Cache; Cache(sys.argv[1]).temp('x').write_bytes(b'y')"
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p.name for p in (tmp_path / "locks").iterdir()] == ["cache"]


def test_a_loose_temp_file_of_an_older_release_goes_once_nobody_wrote_to_it_for_an_hour(tmp_path):
    Cache(tmp_path)
    old, recent = tmp_path / "tmp" / "0123456789abcdef.x1", tmp_path / "tmp" / "fedcba9876543210.x2"
    old.write_bytes(b"o" * 100)
    recent.write_bytes(b"r" * 100)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert Cache(tmp_path).reclaimed.entries == 1
    assert not old.exists() and recent.exists()


def cache_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["cache", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cache_info_and_prune(built_bundle, testbed_profile, tmp_path, capsys):
    root = tmp_path / "cache"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "b.tar.zst"), "--cache", str(root),
                     "-q"]) == 0
    (root / "partial" / "file-cut-off.whl").write_bytes(b"p" * 5000)
    dead, _ = holder(root, 7000)
    stop(dead)
    capsys.readouterr()

    code, out, _ = cache_cli(capsys, "info", "--cache", str(root), "--json")
    assert code == 0
    found = json.loads(out)
    areas = {a["name"]: a for a in found["areas"]}
    assert areas["partial"]["bytes"] == 5000 and areas["tmp"]["bytes"] == 7000
    assert found["abandoned"] == {"name": "tmp", "what": "left by killed runs", "entries": 1, "bytes": 7000}
    assert areas["blobs"]["entries"] > 5 and areas["frames"]["bytes"] > 0
    assert found["bytes"] == sum(a["bytes"] for a in found["areas"])
    code, out, _ = cache_cli(capsys, "info", "--cache", str(root))
    assert "partial" in out and "left by killed runs" in out and out.startswith(f"cache     {root}\n")

    code, out, err = cache_cli(capsys, "prune", "--cache", str(root))
    assert code == 0 and out.startswith("freed "), out
    assert "removed 1 files of partial/" in err and "removed 1 files of tmp/" in err
    after = {a["name"]: a for a in json.loads(cache_cli(capsys, "info", "--cache", str(root), "--json")[1])["areas"]}
    assert after["partial"]["bytes"] == after["tmp"]["bytes"] == after["uv"]["bytes"] == 0
    assert after["blobs"] == areas["blobs"] and after["frames"] == areas["frames"]
    # what the build used is still there: a rebuild from the pruned cache fetches nothing
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "c.tar.zst"), "--cache", str(root),
                     "-q"]) == 0
    assert (tmp_path / "c.tar.zst").read_bytes() == (tmp_path / "b.tar.zst").read_bytes()

    old = time.time() - 40 * 86400
    for path in (root / "blobs").rglob("*"):
        os.utime(path, (old, old))
    code, _, _ = cache_cli(capsys, "prune", "--cache", str(root), "--older-than", "30")
    assert code == 0 and not any(p.is_file() for p in (root / "blobs").rglob("*"))
    assert any(p.is_file() for p in (root / "frames").rglob("*"))
    code, out, _ = cache_cli(capsys, "prune", "--cache", str(root), "--all")
    assert code == 0
    assert json.loads(cache_cli(capsys, "info", "--cache", str(root), "--json")[1])["bytes"] == 0


def test_prune_is_refused_while_another_process_uses_the_cache(tmp_path, capsys):
    root = tmp_path / "cache"
    live, live_file = holder(root, 100)
    try:
        code, _, err = cache_cli(capsys, "prune", "--cache", str(root))
        assert code == 1 and err == f"bundler: error: the cache {root} is in use by another bundler process; " \
                                    "try again when it has finished\n"
        assert live_file.is_file()
    finally:
        stop(live)
    assert cache_cli(capsys, "prune", "--cache", str(root))[0] == 0


@pytest.mark.parametrize("args", [["prune", "--older-than", "-1"], ["prune", "--older-than", "x"]])
def test_prune_takes_a_number_of_days(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cache", *args])
    assert exit_.value.code == 2 and "--older-than" in capsys.readouterr().err


RESTORER_WHEELS = REPO / ".testbed-wheels" / "restorer"   # scripts/setup.sh downloads them


def test_prune_keeps_the_models_patches_and_restorer_that_recent_builds_used(hubs, delta_updates, tmp_path):
    """Every file of the cache is aged 60 days, then the builds run again (and so date what they use):
    ``prune --older-than 30`` leaves them what they need, and they run again with no network at all."""
    if not (RESTORER_WHEELS / ".complete").is_file():
        pytest.fail(f"{RESTORER_WHEELS} is missing or incomplete: scripts/setup.sh downloads the restorer's wheels")
    root = tmp_path / "cache"
    models = tmp_path / "models.yaml"
    models.write_text('name: models\ntarget:\n  platform: linux/amd64\n  python: "3.10"\nmodels:\n  - hf: team/tiny\n'
                      f"  - modelscope: team/tiny-ms\nmirrors:\n  huggingface: [{hubs.hf.url}]\n"
                      f"  modelscope: [{hubs.ms.url}]\n")
    base = tmp_path / "v1.tar.zst"
    for profile in (models, delta_updates["v1"], delta_updates["v2"]):
        assert cli.main(["lock", str(profile), "-o", str(profile.with_suffix(".lock")), "-q"]) == 0
    # the delta's base layers, in this cache (in another process, as every use of it here: prune wants it alone)
    subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(delta_updates["v1"]), "--lock",
                    str(delta_updates["v1"].with_suffix(".lock")), "-o", str(base), "--cache", str(root), "-q"],
                   check=True)
    restorer_index = services.IndexServer(RESTORER_WHEELS).start()
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"pypi: [{restorer_index.url}]\n")
    builds = {
        "models": ["build", "--no-restorer", str(models), "--lock", str(models.with_suffix(".lock"))],
        "delta": ["build", "--no-restorer", str(delta_updates["v2"]), "--lock",
                                 str(delta_updates["v2"].with_suffix(".lock")), "--since", str(base)],
        "restorer": ["restorer", "--python", "3.10", "--mirrors", str(mirrors)],
    }

    def run_all(round_: str, *, network: bool) -> None:
        failed = []
        for what, args in builds.items():
            command = [sys.executable, "-m", "bundler", *args, "-o", str(tmp_path / f"{round_}-{what}.out"),
                       "--cache", str(root), "-q"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300) if network else \
                offline(command, capture_output=True, text=True, timeout=300)
            if result.returncode:
                failed.append(f"{what}: {result.stderr.strip()[-300:]}")
        assert not failed, f"{round_} round: " + "\n".join(failed)

    try:
        run_all("first", network=True)
        head = json.loads(subprocess.run([sys.executable, "-m", "bundler", "inspect", "--json",
                                          str(tmp_path / "first-delta.out")],
                                         capture_output=True, text=True, check=True).stdout)
        assert head["delta"]["patches"], "the delta carries no patch: the test would prove nothing of patches"
        old = time.time() - 60 * 86400
        for path in [*(root / "blobs").rglob("*"), *(root / "frames").rglob("*")]:
            os.utime(path, (old, old))
        run_all("second", network=True)
    finally:
        restorer_index.stop()
    pruned = subprocess.run([sys.executable, "-m", "bundler", "cache", "prune", "--cache", str(root), "--older-than",
                             "30"], capture_output=True, text=True)   # another process: it holds the cache alone
    assert pruned.returncode == 0 and "of blobs/" in pruned.stderr, pruned.stderr   # what only v1's build used
    run_all("third", network=False)
