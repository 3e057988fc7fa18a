"""What a user sees while a build works through slow mirrors: without a terminal, a line on stderr every
few seconds through every phase (pinning, planning, fetching, making the restorer, packing), and the
restorer made while the layers are fetched, not before them."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from bundler import cli
from bundler.cli.terminal import TerminalProgress
from bundler.progress import WAIT
from conftest import bundler_cmd, write_profile
from testbed import services
from testbed.policy import FAST_RETRY

QUIET_LIMIT = 6.5      # seconds without a line on stderr: the renderer's 5 s, a tick, and a busy machine


@dataclass
class Timeline:
    """A run's stderr lines, each with the second it arrived (from the start), and when the run ended."""

    code: int
    lines: list[tuple[float, str]]
    ended: float
    stdout: str

    def gaps(self) -> list[tuple[float, str]]:
        """Each silence on stderr, with the line that ended it (``(exit)`` for the last)."""
        moments = [(0.0, "(start)"), *self.lines, (self.ended, "(exit)")]
        return [(later[0] - earlier[0], later[1]) for earlier, later in zip(moments, moments[1:])]

    def first(self, text: str) -> float | None:
        return next((at for at, line in self.lines if text in line), None)

    def text(self) -> str:
        return "\n".join(f"{at:6.1f}  {line!r}" for at, line in self.lines)


def timed(args: list[str], timeout: float = 300) -> Timeline:
    """Run ``args`` with stderr on a pipe (not a terminal), stamping each stderr line as it arrives."""
    started = time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    stdout: list[bytes] = []

    def read_stderr() -> None:
        for line in process.stderr:   # binary: a line ends at "\n" only
            lines.append((time.monotonic() - started, line.decode().rstrip("\n")))

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    ended = time.monotonic() - started
    for reader in readers:
        reader.join(10)
    return Timeline(process.returncode, lines, ended, b"".join(stdout).decode())


@pytest.fixture(scope="module")
def slow_build(tmp_path_factory, registry, pushed, restorer_index) -> Timeline:
    """A cold build (an empty cache: the restorer is made) through mirrors that answer slowly: the
    registry's mirror waits before every manifest and blob and sends the layers at a slow link's pace,
    and the index's waits before every wheel file."""
    folder = tmp_path_factory.mktemp("slow-build")
    waiting_registry = services.FaultyProxy(registry.url, "slow", delay=1.0)
    slow_link = services.FaultyProxy(waiting_registry.url, "throttle", rate=160 << 10)
    slow_index = services.FaultyProxy(restorer_index.url.removesuffix("/simple"), "slow", delay=0.5)
    try:
        profile = write_profile(folder, registry.host, [pushed["app"], pushed["app2"]], f"{slow_index.url}/simple",
                                ["alpha==1.0", "native==1.0"], name="slow")
        profile.write_text(profile.read_text().replace(f"{registry.host}: [official]",
                                                       f"{registry.host}: [{slow_link.url}]"))
        return timed(bundler_cmd("build", str(profile), "-o", str(folder / "slow.tar.zst"),
                                 "--cache", str(folder / "cache")))
    finally:
        for proxy in (slow_link, waiting_registry, slow_index):
            proxy.stop()


def test_without_a_terminal_a_slow_build_says_something_every_few_seconds(slow_build):
    assert slow_build.code == 0, slow_build.text()
    longest = max(slow_build.gaps())
    assert longest[0] <= QUIET_LIMIT, f"{longest[0]:.1f} s of silence before {longest[1]!r}:\n{slow_build.text()}"


def test_the_restorer_is_made_while_the_layers_are_fetched(slow_build):
    assert slow_build.code == 0, slow_build.text()
    made = next(((at, line) for at, line in slow_build.lines if line.startswith("bundler: restorer for CPython")),
                None)
    layers_fetched = slow_build.first("images carried unpacked")   # said once the layers are in the cache
    assert made is not None and layers_fetched is not None, slow_build.text()
    took = re.search(r": made in ([0-9.]+) s$", made[1])
    assert took, made
    restorer_began = made[0] - float(took.group(1))
    assert restorer_began < layers_fetched < made[0], slow_build.text()
    assert slow_build.first("bundler: making the restorer: ") is not None, slow_build.text()   # it says so meanwhile


def test_a_failed_fetch_stops_the_restorer_being_made(registry, pushed, restorer_index, faulty, tmp_path, capsys):
    """The layers arrive damaged while the restorer's wheels trickle in: the build fails at once, with the
    layer's error, instead of finishing the restorer first; nothing is left at OUT."""
    damaged = faulty(registry.url, "flip", min_size=4096)   # manifests and configs pass, the layers do not
    slow_index = faulty(restorer_index.url.removesuffix("/simple"), "slow", delay=2.0)
    profile = write_profile(tmp_path, registry.host, [pushed["app"]], f"{slow_index.url}/simple", [])
    profile.write_text(profile.read_text().replace(f"{registry.host}: [official]", f"{registry.host}: [{damaged.url}]"))
    out = tmp_path / "out" / "x.tar.zst"
    out.parent.mkdir()
    started = time.monotonic()
    code = cli.main(["build", str(profile), "-o", str(out), "--cache", str(tmp_path / "cache")])   # patient timeouts
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 3 and "bundler: error: " in err and "layer" in err.splitlines()[-1], err
    assert took < 15, f"{took:.1f} s: the build waited for the restorer"   # the restorer alone takes 25 s or more
    assert list(out.parent.iterdir()) == []


def test_a_restorer_that_cannot_be_made_stops_the_fetch(testbed_profile, registry, faulty, tmp_path, capsys):
    """The index lacks the restorer's wheels while the layers come over a slow link: the build fails as soon
    as the restorer does, naming it, without waiting for the layers."""
    slow_link = faulty(registry.url, "throttle", rate=32 << 10)   # a megabyte of layers: half a minute
    profile = tmp_path / "p.yaml"
    profile.write_text(testbed_profile.read_text().replace(f"{registry.host}: [official]",
                                                           f"{registry.host}: [{slow_link.url}]"))
    out = tmp_path / "out" / "x.tar.zst"
    out.parent.mkdir()
    started = time.monotonic()
    code = cli.main(["build", str(profile), "-o", str(out), "--cache", str(tmp_path / "cache")], policy=FAST_RETRY)
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and "bundler: error: making the restorer (--no-restorer builds without it): fetching " in err, err
    assert took < 15, f"{took:.1f} s: the build waited for the layers"
    assert list(out.parent.iterdir()) == []


def test_a_stalled_phase_still_speaks_and_one_after_a_silence_speaks_at_once(capsys):
    """A download that receives nothing is told nothing: the renderer ticks it itself. A phase that follows
    short, silent ones speaks as soon as nothing was said for the interval, not an interval after it began."""
    progress = TerminalProgress(terminal=False, interval=0.5, tick=0.05)
    with progress.bar("fetching layers", 1 << 20):   # no bytes arrive
        time.sleep(1.2)
    stalled = capsys.readouterr().err.splitlines()
    assert len(stalled) >= 2 and stalled[0].startswith("bundler: fetching layers: 0 B of 1.0 MiB (0%)"), stalled
    assert stalled[-1].startswith("bundler: fetching layers: 0 B in "), stalled

    progress.note("a line")
    for _ in range(3):   # short phases, each silent
        with progress.bar("pinning 2 images", None, unit=WAIT):
            time.sleep(0.25)
    with progress.bar("looking up the images to fetch", None, unit=WAIT):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "bundler: a line"
    assert any(line.startswith(("bundler: pinning 2 images: 0 s so far", "bundler: looking up the images to fetch: "
                                "0 s so far")) for line in lines[1:]), lines
