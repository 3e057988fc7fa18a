"""Ctrl-C and SIGTERM: a build, lock or restore stops within about a second, leaves nothing at its
output, keeps what the cache verified, and a rerun resumes what was cut off."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bundler import cli
from conftest import bundler_cmd, write_profile
from testbed import services
from testbed import wheels as tb_wheels

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Seconds a signalled run may take to end. It takes 0.1 to 0.7 s on an idle machine; this is generous
# for a loaded one: the point is "at once", where it used to be "when every download is done".
PROMPT = 3.0


def wait_for(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def stop_and_time(process: subprocess.Popen, signum: int) -> tuple[float, str]:
    started = time.monotonic()
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"still running 60 s after signal {signum}")
    return time.monotonic() - started, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_download_at_once_and_the_rerun_resumes_it(signum, index, faulty, tmp_path):
    slow = faulty(index.url.removesuffix("/simple"), "throttle", rate=256 << 10)
    profile = write_profile(tmp_path, "localhost:5000", [], index.url, ["alpha==1.0", "native==1.0"])
    lock = tmp_path / "p.lock"
    subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock), "-q"), check=True)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"pypi: [{slow.url}/simple]\n")
    cache, out = tmp_path / "cache", tmp_path / "out.tar.zst"
    command = bundler_cmd("build", "--no-restorer", str(profile), "--lock", str(lock), "--mirrors", str(mirrors), "-o", str(out),
                          "--cache", str(cache))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: slow.bytes_sent > 512 << 10, "half a MiB through the slow proxy")
    took, err = stop_and_time(process, signum)
    assert process.returncode == EXIT_CODES[signum], err
    assert took < PROMPT, f"the build took {took:.1f} s to stop"
    assert err.strip().splitlines()[-1] == ("bundler: interrupted" if signum == signal.SIGINT else "bundler: stopped by SIGTERM"), err
    assert not list(tmp_path.glob("out.tar.zst*")), "an interrupted build left something at OUT"
    for name in ("alpha-1.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"):   # small: verified before the signal
        assert (cache / "blobs" / "sha256" / tb_wheels.sha256_file(index.root / name)).is_file(), name

    sent_before = slow.bytes_sent
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    native = [r for p, r in slow.ranges if "/files/native-1.0-cp310" in p]
    assert native and int(native[0].removeprefix("bytes=").rstrip("-")) >= 256 << 10, slow.ranges
    assert slow.bytes_sent - sent_before < (2 << 20) - (256 << 10)   # the rest of native, not all of it again


def test_a_signal_stops_a_build_waiting_on_an_endpoint_that_does_not_answer(index, faulty, tmp_path):
    silent = faulty(index.url.removesuffix("/simple"), "slow", delay=60)
    profile = write_profile(tmp_path, "localhost:5000", [], index.url, ["alpha==1.0"])
    lock = tmp_path / "p.lock"
    subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock), "-q"), check=True)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"pypi: [{silent.url}/simple]\n")
    out = tmp_path / "out.tar.zst"
    process = subprocess.Popen(bundler_cmd("build", "--no-restorer", str(profile), "--lock", str(lock), "--mirrors", str(mirrors),
                                           "-o", str(out), "--cache", str(tmp_path / "cache")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(p.startswith("/files/") for p in silent.requests), "a request for a wheel")
    took, err = stop_and_time(process, signal.SIGINT)
    assert process.returncode == 130 and took < PROMPT, (took, err)
    assert not list(tmp_path.glob("out.tar.zst*"))


def test_a_signal_stops_a_lock_while_uv_resolves(index, faulty, tmp_path):
    silent = faulty(index.url.removesuffix("/simple"), "slow", delay=60, payload_only=False)
    profile = write_profile(tmp_path, "localhost:5000", [], f"{silent.url}/simple", ["alpha==1.0"])
    out = tmp_path / "p.lock"
    process = subprocess.Popen(bundler_cmd("lock", str(profile), "-o", str(out), "--cache", str(tmp_path / "cache")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: silent.requests, "uv asking the index")
    took, err = stop_and_time(process, signal.SIGTERM)
    assert process.returncode == 143 and took < PROMPT, (took, err)
    assert not list(tmp_path.glob("p.lock*")), "an interrupted lock left a file"
    uv = subprocess.run(["pgrep", "-f", str(tmp_path / "cache")], capture_output=True, text=True)
    assert not uv.stdout.strip(), f"uv still runs: {uv.stdout}"


@pytest.mark.parametrize("moment", ["venv", "pip"])
def test_a_signal_stops_a_restore_and_the_rerun_completes(moment, built_bundle, python310, tmp_path):
    dest = tmp_path / "dest"
    command = bundler_cmd("restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--python",
                          str(python310))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if moment == "venv":
        wait_for(lambda: (dest / "venv" / "bin").is_dir(), "the venv being made")
    else:
        wait_for(lambda: any(p.name.startswith("pip") for p in
                             (dest / "venv" / "lib").glob("python3.10/site-packages/*")) and
                 subprocess.run(["pgrep", "-f", f"{dest}/venv/bin/python -m pip install"],
                                capture_output=True).returncode == 0, "pip installing")
    took, err = stop_and_time(process, signal.SIGINT)
    assert process.returncode == 130 and took < PROMPT, (took, err)
    left = subprocess.run(["pgrep", "-af", str(dest)], capture_output=True, text=True).stdout
    assert not left, f"a program still runs: {left}"
    assert not (dest / "venv" / ".bundler-restored").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import alpha, native"], check=True)


def pip_installing_into(folder: Path) -> list[psutil.Process]:
    """The pip processes alive that install into ``folder``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or ())
        if " -m pip install" in line and str(folder) in line:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def slow_pip_bundle(tmp_path_factory, registry, pushed) -> Path:
    """An image and a wheel of 8000 small modules, which takes pip a few seconds to install."""
    folder = tmp_path_factory.mktemp("slowpip")
    tb_wheels.build_wheel(folder / "wheels", "many", "1.0", extra_files=8000)
    index = services.IndexServer(folder / "wheels").start()
    try:
        profile = write_profile(folder, registry.host, [pushed["app"]], index.url, ["many==1.0"], name="slowpip")
        out = folder / "slowpip.tar.zst"
        assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "--cache", str(folder / "cache"),
                         "-q"]) == 0
    finally:
        index.stop()
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_pip_installs_beside_docker_stops_pip_before_the_venv_goes(signum, slow_pip_bundle, dockerd,
                                                                                  python310, tmp_path):
    """Images and wheels commit at once, pip on a thread of its own: a signal stops pip and waits for it
    before the venv this run began is removed, and nothing is left running or half made."""
    from bundler.format.archive import read_head
    head, _ = read_head(slow_pip_bundle)
    image = head["images"][0]["id"]
    dockerd.docker("rmi", "-f", image, check=False)
    dest = tmp_path / "dest"
    process = subprocess.Popen(bundler_cmd("restore", str(slow_pip_bundle), "--dest", str(dest), "--python",
                                           str(python310)),
                               env={**os.environ, "DOCKER_HOST": dockerd.host}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    site = dest / "venv" / "lib" / "python3.10" / "site-packages" / "many"
    # docker has registered the image (the main thread's part is done) while pip still installs
    wait_for(lambda: dockerd.docker("image", "inspect", image, check=False).returncode == 0
             and pip_installing_into(dest) and site.is_dir(), "pip installing after docker registered the image")
    took, err = stop_and_time(process, signum)
    assert process.returncode == EXIT_CODES[signum], err
    assert took < PROMPT, f"the restore took {took:.1f} s to stop"
    left = pip_installing_into(dest)
    assert not left, f"pip still runs after bundler ended: {[p.pid for p in left]}"
    assert not (dest / "venv").exists(), f"the venv this run began is still there: {list((dest / 'venv').rglob('*'))[:5]}"
    assert not list(dest.rglob("*.partial"))


def descendants_once(process: subprocess.Popen, looked_for: str) -> list[psutil.Process]:
    """Every process ``process`` started, directly or not, once one of them runs ``looked_for``; else []."""
    try:
        found = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    lines = []
    for child in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            lines.append(" ".join(child.cmdline()))
    return found if any(looked_for in line for line in lines) else []


@pytest.mark.parametrize("moment", ["uv resolving", "venv", "pip"])
def test_a_bundler_killed_with_sigkill_leaves_no_program_running(moment, index, faulty, slow_pip_bundle, python310,
                                                                 tmp_path):
    """uv, the venv's Python (and the pip its ensurepip starts), pip: every program a build or a restore
    started dies with it, within 2 s, even when nothing could clean up."""
    if moment == "uv resolving":
        silent = faulty(index.url.removesuffix("/simple"), "slow", delay=60, payload_only=False)
        profile = write_profile(tmp_path, "localhost:5000", [], f"{silent.url}/simple", ["alpha==1.0"])
        command = bundler_cmd("build", "--no-restorer", str(profile), "-o", str(tmp_path / "out.tar.zst"), "--cache",
                              str(tmp_path / "cache"))
        looked_for = "pip compile"
    else:
        command = bundler_cmd("restore", str(slow_pip_bundle), "--wheels-only", "--dest", str(tmp_path / "dest"),
                              "--python", str(python310))
        looked_for = "ensurepip" if moment == "venv" else "-m pip install"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: list[psutil.Process] = []
    wait_for(lambda: started.extend(descendants_once(process, looked_for)) or started, f"{looked_for} running")
    if moment == "pip":   # past its last line of output for a while: a pipe bundler's death broke does not stop it
        wait_for(lambda: (tmp_path / "dest" / "venv" / "lib" / "python3.10" / "site-packages" / "many").is_dir(),
                 "pip installing the modules")
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(started, timeout=2)
    left = []
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            left.append(" ".join(child.cmdline())[-120:])
            child.kill()
    assert not left, f"still running 2 s after bundler was killed: {left}"


def test_a_killed_lock_leaves_nothing_in_the_systems_temp_folder(index, faulty, tmp_path):
    """Resolving works in the cache's temp folder, which the next run reclaims, not in /tmp, where a
    killed run's folder would stay for good."""
    from bundler.build.cache import Cache
    silent = faulty(index.url.removesuffix("/simple"), "slow", delay=60, payload_only=False)
    profile = write_profile(tmp_path, "localhost:5000", [], f"{silent.url}/simple", ["alpha==1.0"])
    system_tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    system_tmp.mkdir()
    process = subprocess.Popen(bundler_cmd("lock", str(profile), "--cache", str(cache)),
                               env={**os.environ, "TMPDIR": str(system_tmp)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: silent.requests, "uv asking the index")
    process.kill()
    process.wait()
    # uv dies with bundler (its supervisor's parent-death signal)
    wait_for(lambda: subprocess.run(["pgrep", "-f", f"{silent.url}/simple"],
                                          stdout=subprocess.DEVNULL).returncode == 1, "uv ending", timeout=5)
    assert list(system_tmp.iterdir()) == []
    assert Cache(cache).reclaimed.entries == 1
