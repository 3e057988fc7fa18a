"""Before fetching: build --dry-run shows what a build would fetch, and build checks the free space it
needs before downloading anything. While working: progress with totals, on a terminal or not; the
summary survives -q; --json for scripts."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from bundler import cli
from bundler.cli.terminal import PlainBar, TerminalProgress
from conftest import bundler_cmd, write_profile


def proxied_profile(tmp_path: Path, registry, pushed, index, faulty, requirements=("alpha==1.0", "native==1.0"),
                    fault: str = "ok", **kwargs) -> tuple[Path, object, object]:
    """A profile and its lock, fetched through counting proxies in front of the registry and the index."""
    profile = write_profile(tmp_path, registry.host, [pushed["app"], pushed["app2"]], index.url, list(requirements))
    lock = tmp_path / "p.lock"
    subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock), "-q"), check=True)
    images, wheels = faulty(registry.url, fault, **kwargs), faulty(index.url.removesuffix("/simple"), fault, **kwargs)
    text = profile.read_text().replace(f"{registry.host}: [official]", f"{registry.host}: [{images.url}]")
    profile.write_text(text.replace(index.url, f"{wheels.url}/simple"))
    return profile, lock, (images, wheels)


def layer_digests(registry, ref: str) -> list[str]:
    import requests
    repository, _, tag = ref.removeprefix(f"{registry.host}/").partition(":")
    manifest = requests.get(f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=10, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"}).json()
    return [layer["digest"] for layer in manifest["layers"]]


def test_dry_run_shows_what_would_be_fetched_from_where_and_downloads_nothing(registry, pushed, index, faulty,
                                                                             tmp_path, capsys):
    profile, lock, (images, wheels) = proxied_profile(tmp_path, registry, pushed, index, faulty)
    cache, out = tmp_path / "cache", tmp_path / "out.tar.zst"
    args = ["build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(out), "--cache", str(cache), "--dry-run"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("dry run: nothing was downloaded; bundler build would fetch ")
    assert re.search(rf"fetch   layer sha256:[0-9a-f]{{12}}\.\. of {re.escape(pushed['app'])}  [0-9.]+ KiB  "
                     rf"from {images.url}", text), text
    assert re.search(rf"fetch   native 1.0 \(native-1.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl\)"
                     rf"  2.0 MiB  from {wheels.url}/simple", text), text
    assert "wheels    3: 0 in the cache (0 B), 3 to fetch" in text and "bundle    about " in text
    assert not out.exists()
    # manifests, configs and index pages only: no layer, no wheel
    layers = {d for name in ("app", "app2") for d in layer_digests(registry, pushed[name])}
    assert not [r for r in images.requests if any(d in r for d in layers)]
    assert wheels.bytes_sent == 0 and not [r for r in wheels.requests if "/files/" in r]

    assert cli.main(["build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(out), "--cache", str(cache), "-q"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["fetch_bytes"] == 0 and planned["dry_run"] is True
    assert {k["kind"]: all(p["cached"] for p in k["pieces"]) for k in planned["kinds"]} == {"images": True,
                                                                                           "wheels": True}
    assert 0.5 < planned["bundle_bytes"] / out.stat().st_size < 2, "the expected bundle size is far off"


def test_a_build_that_would_not_fit_the_output_fails_before_downloading(registry, pushed, index, faulty, small_disk,
                                                                        tmp_path, capsys):
    profile, lock, (images, wheels) = proxied_profile(tmp_path, registry, pushed, index, faulty)
    out = small_disk / "b.tar.zst"
    code = cli.main(["build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(out), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(rf"bundler: error: {small_disk}: the bundle needs about [0-9.]+ MiB, only [0-9.]+ MiB is free\n$",
                     err), err
    assert images.bytes_sent < 64 << 10 and wheels.bytes_sent == 0, "it downloaded before finding the disk full"
    assert list(small_disk.iterdir()) == []


def test_a_build_that_would_not_fit_the_cache_fails_before_downloading(registry, pushed, index, faulty, small_disk,
                                                                       tmp_path, capsys):
    profile, lock, (_, wheels) = proxied_profile(tmp_path, registry, pushed, index, faulty)
    code = cli.main(["build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(tmp_path / "b.tar.zst"), "--cache",
                     str(small_disk / "cache")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(rf"{small_disk / 'cache'}: fetching needs about [0-9.]+ MiB in the cache, only [0-9.]+ (MiB|KiB) "
                     "is free\n$", err), err
    assert wheels.bytes_sent == 0 and not list(tmp_path.glob("b.tar.zst*"))


def test_without_a_terminal_a_long_fetch_says_how_far_it_is_every_few_seconds(index, faulty, tmp_path):
    slow = faulty(index.url.removesuffix("/simple"), "throttle", rate=256 << 10)
    profile = write_profile(tmp_path, "localhost:5000", [], index.url, ["alpha==1.0", "native==1.0"])
    lock = tmp_path / "p.lock"
    subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock), "-q"), check=True)
    profile.write_text(profile.read_text().replace(index.url, f"{slow.url}/simple"))
    result = subprocess.run(bundler_cmd("build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(tmp_path / "o.tar.zst"),
                                        "--cache", str(tmp_path / "cache")), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bundler: fetching 3 of 3 wheels: ")]
    assert lines and re.fullmatch(r"bundler: fetching 3 of 3 wheels: [0-9.]+ (KiB|MiB) of 2\.0 MiB \(\d+%\), \d+ s, "
                                  r"[0-9.]+ KiB/s, about \d+ s left", lines[0]), result.stderr
    assert re.fullmatch(r"bundler: fetching 3 of 3 wheels: 2\.0 MiB in \d+ s", lines[-1]), result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'o.tar.zst'}: ")


def test_quiet_keeps_the_summary_and_json_gives_the_result(testbed_profile, tmp_path, capsys):
    out = tmp_path / "q.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(tmp_path / "c"), "-q"]) == 0
    printed, err = capsys.readouterr()
    assert printed.startswith(f"wrote {out}: ") and printed.count("\n") == 1 and err == ""
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(tmp_path / "c"), "--force",
                     "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["paths"] == [str(out)] and result["size"] == out.stat().st_size
    assert result["images"] == 2 and result["wheels"] == 3
    assert result["fetched"]["wheels"]["cached"] == 3 and result["fetched"]["images"]["downloaded"] == 0
    assert cli.main(["verify", str(out), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: all ")


def test_restore_says_what_it_did_under_quiet_and_as_json(built_bundle, python310, tmp_path, capsys):
    dest = tmp_path / "d"
    args = ["restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--python", str(python310)]
    assert cli.main([*args, "-q"]) == 0
    printed = capsys.readouterr().out
    assert re.fullmatch(rf"restored {re.escape(str(built_bundle))} in [0-9.]+ s \(venv {dest / 'venv'}\)\n", printed)
    assert cli.main([*args, "--json", "--check"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["venv"] == str(dest / "venv") and result["check"]["exit"] == 0
    assert "check ok 1.0" in result["check"]["output"]
    assert result["notes"] == ["the bundle is not signed (nothing proves who made it; bundler build --sign KEY)",
                               "nothing to do: everything in the bundle is already restored"]


def test_plain_progress_lines_have_totals_percent_and_time_left():
    now = [100.0]
    lines: list[str] = []
    bar = PlainBar("fetching layers", 4 << 30, "B", lines.append, interval=5, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 3
        bar.update(256 << 20)
    bar.close()
    assert lines == ["fetching layers: 512.0 MiB of 4.0 GiB (12%), 6 s, 85.3 MiB/s, about 42 s left",
                     "fetching layers: 1.0 GiB of 4.0 GiB (25%), 12 s, 85.3 MiB/s, about 36 s left",
                     "fetching layers: 1.0 GiB in 12 s"]
    counted: list[str] = []
    wheels = PlainBar("installing 57 wheels with pip", 57, "wheel", counted.append, interval=5, clock=lambda: now[0])
    now[0] += 6
    wheels.update(1)
    assert counted == ["installing 57 wheels with pip: 1 wheel of 57 wheels (2%), 6 s, about 5:36 left"]


def test_a_terminal_bar_speaks_binary_units(capsys):
    bar = TerminalProgress(terminal=True).bar("fetching layers", 3 << 20)
    bar.update(1 << 20)
    bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    assert "1.0 MiB of 3.0 MiB" in err and " MB" not in err, err


def test_pip_installs_are_counted_while_pip_runs(tmp_path):
    from bundler.restore.wheels import _counting_installs
    site = tmp_path / "site-packages"
    (site / "pip-23.0.dist-info").mkdir(parents=True)
    seen: list[int] = []

    def install() -> None:
        for name in ("alpha", "beta", "native"):
            time.sleep(0.3)
            (site / f"{name}-1.0.dist-info").mkdir()

    with _counting_installs(site, seen.append):
        worker = threading.Thread(target=install)
        worker.start()
        worker.join()
    assert sum(seen) == 3 and len(seen) >= 2, seen    # counted while it ran, not only at the end


def test_a_phase_with_nothing_to_count_still_says_how_long_it_lasts():
    from bundler.progress import WAIT, waiting
    now = [0.0]
    lines: list[str] = []
    bar = PlainBar("docker registering 2 images", None, WAIT, lines.append, interval=5, clock=lambda: now[0])
    for _ in range(12):
        now[0] += 1
        bar.update(0)
    bar.close()
    assert lines == ["docker registering 2 images: 5 s so far", "docker registering 2 images: 10 s so far",
                     "docker registering 2 images: done in 12 s"]

    class Plain:
        """The CLI's plain renderer with a short interval, so a wait of a second speaks."""
        def bar(self, description, total, unit="B"):
            return PlainBar(description, total, unit, said.append, interval=0.2)

    said: list[str] = []
    with waiting(Plain(), "resolving the requirements for linux/amd64 with uv", tick=0.05):
        time.sleep(0.6)
    assert len(said) >= 3 and said[0].endswith("so far") and said[-1].startswith(
        "resolving the requirements for linux/amd64 with uv: done in"), said


def test_without_a_terminal_a_slow_resolution_says_it_is_still_working(index, faulty, tmp_path):
    slow = faulty(index.url.removesuffix("/simple"), "slow", delay=1.5, payload_only=False)
    profile = write_profile(tmp_path, "localhost:5000", [], f"{slow.url}/simple", ["alpha==1.0", "native==1.0"])
    result = subprocess.run(bundler_cmd("lock", str(profile), "-o", str(tmp_path / "p.lock")),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bundler: resolving the requirements")]
    assert lines and re.fullmatch(r"bundler: resolving the requirements for linux/amd64 with uv: \d+ s so far",
                                  lines[0]), result.stderr
    assert re.fullmatch(r"bundler: resolving the requirements for linux/amd64 with uv: done in \d+ s", lines[-1])
