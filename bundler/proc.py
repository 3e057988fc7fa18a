"""Running other programs (uv, pip, venv, shiv, ctr, ssh-keygen, a profile's check, credential helpers):
the one place bundler starts them, so that each has a time limit, can be cancelled, fails as one line
naming what it was doing, and dies with bundler.

Every program runs in a session of its own (the terminal's Ctrl-C reaches bundler, which stops it,
and not the program half way), under a small supervisor (``SUPERVISOR``) run by this same Python.
The supervisor asks Linux for a signal when bundler dies (the parent-death signal, prctl), checks
that bundler still lives, starts the program and waits for it, and when the signal comes kills the
program's whole session: even a bundler killed with SIGKILL leaves no uv, pip (nor the pip that
``venv`` and uv start themselves), shiv or ctr running.

Why a supervisor, and not a ``preexec_fn`` that sets the signal in the child: with one, CPython runs
the at-fork handlers in the child before exec, and a library's handler waiting on a lock another
thread held at the fork (huggingface_hub closing its HTTP pool) hangs the child and this call for good.
Why not ``setpriv --pdeathsig``: RHEL 8's has no such option. Why a process that stays, and not a
wrapper that sets the signal and execs the program: the signal is not inherited across fork, so the
programs that program starts (``venv``'s ensurepip, uv's build backends) would run on.

The parent-death signal fires when the *thread* that started the program ends, not the process: the
thread that calls ``run`` waits there for the program's end, and the one that calls ``start`` must
outlive the program (ctr's import is started and ended by the restore's main thread). Elsewhere than
Linux programs run directly.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from bundler.errors import OperationalError
from bundler.parallel import Stopped

POLL = 0.2     # seconds between looks at the cancel flag while a program runs
KILL_WAIT = 5  # seconds a killed program gets to be reaped

# Run as ``python -I -S -c SUPERVISOR BUNDLER_PID PATH ARGV...``: keeps to what CPython 3.9 runs, imports
# only what the standard library has. SIGTERM is its parent-death signal, and SIGTERM, SIGINT or SIGHUP
# from anyone else ends the program too; the program itself gets SIGKILL should the supervisor die
# another way. Its exit status is the program's (killed by a signal, it kills itself with the same).
SUPERVISOR = r"""
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
def end(*_):
    os.killpg(0, signal.SIGKILL)
    os._exit(137)
for name in ("SIGTERM", "SIGINT", "SIGHUP"):
    signal.signal(getattr(signal, name), end)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    end()
me = os.getpid()
child = os.fork()
if child == 0:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != me:
        os._exit(137)
    for name in ("SIGPIPE", "SIGXFSZ", "SIGTERM", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(sys.argv[2], sys.argv[3:])
    except OSError as exc:
        os.write(2, ("cannot run %s: %s\n" % (sys.argv[2], exc.strerror)).encode())
    os._exit(127)
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
if code < 0:
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(me, -code)
    code = 128 - code
sys.exit(code)
"""


class TimedOut(OperationalError):
    """A program ran past its time limit and was stopped."""


def supervised() -> bool:
    """Whether programs run under the supervisor here: on Linux, when this Python can be run again."""
    return sys.platform.startswith("linux") and bool(sys.executable)


def start(args: Sequence[str] | str, what: str, *, env: dict | None = None, cwd: os.PathLike | str | None = None,
          shell: bool = False, stdin: int | IO | None = subprocess.DEVNULL, stdout: int | IO | None = subprocess.PIPE,
          stderr: int | IO | None = subprocess.PIPE, text: bool = False) -> subprocess.Popen:
    """Start a program, supervised, in a session of its own; OperationalError naming ``what`` when it
    cannot be started. The caller waits for it or ends it with ``stop``, from a thread that outlives it."""
    program = args if isinstance(args, str) else args[0]
    try:
        if supervised():
            argv = ["/bin/sh", "-c", args] if shell else list(args)
            args, shell = [sys.executable, "-I", "-S", "-c", SUPERVISOR, str(os.getpid()),
                           _located(argv[0], env, cwd), *argv], False
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd,
                                shell=shell, start_new_session=True)
    except OSError as exc:
        raise OperationalError(f"{what}: cannot run {program}: {exc.strerror or exc}") from None


def run(args: Sequence[str] | str, what: str, timeout: float, *, input: str | None = None,
        env: dict | None = None, cwd: os.PathLike | str | None = None, shell: bool = False,
        cancel: threading.Event | None = None, stdout: IO | None = None) -> subprocess.CompletedProcess:
    """Run a program to its end and return what it did (text output captured; with ``stdout``, a binary
    file, its output goes there instead).

    It may fail in only two ways beyond its own exit status, both as OperationalError naming
    ``what``: it could not be started, or it ran past ``timeout`` seconds (it is then killed, with
    everything it started). When ``cancel`` is set while it runs, it is killed and Stopped is raised;
    an exception in the calling thread (Ctrl-C) kills it too. Either way it has ended when this returns.
    """
    program = args if isinstance(args, str) else args[0]
    process = start(args, what, env=env, cwd=cwd, shell=shell, text=stdout is None,
                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    stdout=stdout if stdout is not None else subprocess.PIPE)
    if stdout is not None:   # stderr stays a byte pipe: read as text below
        input = input.encode() if input is not None else None
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
        stop(process)
        raise
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def stop(process: subprocess.Popen) -> None:
    """Kill a program that ``start`` started, and whatever it started (its session), and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.communicate(timeout=KILL_WAIT)
    except (subprocess.TimeoutExpired, ValueError, OSError):   # pipes a signal left half read
        process.wait(KILL_WAIT)


def _located(program: str, env: dict | None, cwd: os.PathLike | str | None) -> str:
    """The file exec would run for ``program`` (searched on the PATH of ``env``), or the OSError it would
    raise: the supervisor runs it only once bundler knows it can."""
    if os.sep in program:
        candidates = [os.path.join(cwd, program) if cwd is not None else program]
    else:
        candidates = [os.path.join(folder or ".", program) for folder in os.get_exec_path(env)]
    denied = None
    for path in candidates:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return os.path.abspath(path)
            denied = path
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


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
