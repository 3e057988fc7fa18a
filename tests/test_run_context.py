"""What a run carries (policy, cancel flag) reaches every part, and every program bundler starts
has a time limit and fails as one line naming what it was for."""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import pytest

from bundler import proc
from bundler.context import Context
from bundler.errors import OperationalError
from bundler.parallel import Stopped, run_parallel
from bundler.restore.images.kind import loader_for
from bundler.restore.options import RestoreOptions
from testbed.policy import FAST_RETRY


def test_a_program_past_its_time_limit_is_stopped_and_named():
    started = time.monotonic()
    with pytest.raises(OperationalError, match=r"^creating the venv /x: sleep gave no answer within 0.3 s; it was stopped$"):
        proc.run(["sleep", "30"], "creating the venv /x", 0.3)
    assert time.monotonic() - started < 5


def test_a_program_that_cannot_start_is_named():
    with pytest.raises(OperationalError, match="pip install into /v: cannot run /no/such/python"):
        proc.run(["/no/such/python", "-m", "pip"], "pip install into /v", 10)


def test_a_failed_program_is_quoted_by_its_last_lines():
    result = proc.run(["sh", "-c", "echo one; echo two >&2; echo three >&2; exit 4"], "the check", 10)
    with pytest.raises(OperationalError, match=r"^the check failed \(exit status 4\): two three$"):
        proc.check(result, "the check")


def test_a_cancelled_run_kills_its_program_at_once():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        proc.run(["sh", "-c", "sleep 30; echo never"], "resolving", 60, cancel=cancel)
    assert time.monotonic() - started < 3


def test_restore_to_a_registry_uses_the_runs_policy(registry):
    ctx = Context(policy=FAST_RETRY)
    pusher = loader_for(RestoreOptions(registry=registry.host), ctx)
    assert pusher.client.policy is FAST_RETRY and pusher.client.fallback.policy is FAST_RETRY


def test_the_first_failure_stops_the_other_work_and_is_raised():
    def work(key: int, stop: threading.Event) -> None:
        if key == 3:
            raise RuntimeError("three")
        while not stop.is_set():
            time.sleep(0.01)
        raise Stopped()

    stop = threading.Event()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="three"):
        run_parallel(range(8), work, 4, stop)
    assert stop.is_set() and time.monotonic() - started < 2
    stop.clear()
    threading.Timer(0.2, stop.set).start()   # cancelled from outside: Ctrl-C, or another part that failed
    with pytest.raises(Stopped):
        run_parallel(range(8), lambda key, stop: work(0, stop), 4, stop)



def test_the_failure_that_stopped_a_run_is_raised_even_where_the_work_saw_only_the_stop():
    """A build runs its kinds beside the restorer, and each kind runs its pieces, all on one stop event.
    When a piece fails, a kind's other thread (its layer writer) may notice the stop and end the kind
    with Stopped before the pieces' run raises: the build must still fail with the piece's error, not
    a bare Stopped that reads as Ctrl-C ("interrupted", exit 130)."""
    def piece(_key: int, _stop: threading.Event) -> None:
        raise OperationalError("every endpoint failed for layer 0")

    def pieces(stop: threading.Event) -> None:
        with contextlib.suppress(OperationalError):    # raised by the kind later, in the build
            run_parallel(range(1), piece, 1, stop)

    def kind(_key: str, stop: threading.Event, *, fail: bool = True) -> None:
        if fail:
            threading.Thread(target=pieces, args=(stop,), daemon=True).start()
        stop.wait(10)
        raise Stopped()              # what the writer raises on seeing the stop

    with pytest.raises(OperationalError, match="every endpoint failed"):
        run_parallel(["images"], kind, 1, threading.Event())
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()     # cancelled from outside: still a plain Stopped
    with pytest.raises(Stopped):
        run_parallel(["images"], functools.partial(kind, fail=False), 1, stop)
