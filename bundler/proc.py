"""Running other programs (uv, pip, venv, ctr, a profile's check, credential helpers): one helper,
so that each has a time limit, can be cancelled, and fails as one line naming what it was doing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from bundler.errors import OperationalError
from bundler.parallel import Stopped

POLL = 0.2     # seconds between looks at the cancel flag while a program runs
KILL_WAIT = 5  # seconds a killed program gets to be reaped


class TimedOut(OperationalError):
    """A program ran past its time limit and was stopped."""


def run(args: Sequence[str] | str, what: str, timeout: float, *, input: str | None = None,
        env: dict | None = None, cwd: os.PathLike | str | None = None, shell: bool = False,
        cancel: threading.Event | None = None) -> subprocess.CompletedProcess:
    """Run a program to its end and return what it did (text output captured).

    It may fail in only two ways beyond its own exit status, both as OperationalError naming
    ``what``: it could not be started, or it ran past ``timeout`` seconds (it is then killed, with
    everything it started). When ``cancel`` is set while it runs, it is killed and Stopped is raised;
    an exception in the calling thread (Ctrl-C) kills it too.
    """
    program = args if isinstance(args, str) else args[0]
    # No preexec_fn (to set a parent-death signal, say): with one, CPython runs the at-fork handlers in
    # the child before exec, and a library's handler waiting on a lock another thread held at the fork
    # (huggingface_hub closing its HTTP pool) hangs the child and this call for good.
    try:
        process = subprocess.Popen(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                   shell=shell, start_new_session=True)
    except OSError as exc:
        raise OperationalError(f"{what}: cannot run {program}: {exc.strerror or exc}") from None
    deadline, pending_input = time.monotonic() + timeout, input
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                out, err = process.communicate(pending_input, timeout=max(0.01, min(left, POLL) if cancel else left))
                break
            except subprocess.TimeoutExpired:
                pending_input = None   # communicate goes on sending what it began to send
                if cancel is not None and cancel.is_set():
                    raise Stopped() from None
                if time.monotonic() >= deadline:
                    raise TimedOut(f"{what}: {_name(program)} gave no answer within {timeout:g} s; it was "
                                   "stopped") from None
    except BaseException:
        # Ctrl-C or SIGTERM in this thread too: the program runs in a session of its own (so that the
        # terminal's signal does not reach it half way), so nobody else would stop it.
        _kill(process)
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def _kill(process: subprocess.Popen) -> None:
    """The program and whatever it started (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.communicate(timeout=KILL_WAIT)
    except (subprocess.TimeoutExpired, ValueError, OSError):   # pipes a signal left half read
        process.wait(KILL_WAIT)


def _name(program: str) -> str:
    return os.path.basename(program.split()[0]) if program else "the program"


def last_lines(text: str, limit: int = 500) -> str:
    """The end of a program's output as one line: what an error message quotes."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " ".join(lines[-3:])
    return joined[-limit:] if joined else "no output"


def check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    """``result``, or OperationalError quoting the end of its output when it failed."""
    if result.returncode:
        output = result.stderr if result.stderr and result.stderr.strip() else result.stdout or ""
        raise OperationalError(f"{what} failed (exit status {result.returncode}): {last_lines(output)}")
    return result
