"""Bounded parallel work that stops early: the first failure, or Ctrl-C, ends the rest within a moment.

Workers are daemon threads that check a shared ``stop`` event between pieces of work (every chunk
of a download): when one fails, or the caller is interrupted, ``stop`` is set, the others raise
Stopped at their next chunk, and the caller raises without waiting for work nobody wants any more.
A worker blocked in a system call that never returns is left behind after GRACE seconds; being a
daemon thread, it cannot keep the process alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TypeVar

K = TypeVar("K")

GRACE = 2.0      # seconds stopped workers get to notice, before the caller goes on without them
INTERRUPT_GRACE = 0.5   # the same when the caller was interrupted (Ctrl-C, SIGTERM): the user is waiting
TICK = 0.1       # how often a waiting caller looks up (Ctrl-C reaches it between looks)


class Stopped(Exception):
    """Raised inside work that noticed it should stop: another piece failed, or the run was cancelled."""


# The first failure that set each shared stop event. Runs nest (a build fetches the kinds beside the
# restorer, each kind fetches its pieces) and share one event: an outer run that stops waiting before
# the inner one has raised must still raise the failure, not a bare Stopped that reads as Ctrl-C.
_FAILED: weakref.WeakKeyDictionary[threading.Event, BaseException] = weakref.WeakKeyDictionary()
_FAILED_LOCK = threading.Lock()


def _fail(stop: threading.Event, exc: BaseException) -> None:
    with _FAILED_LOCK:
        if not stop.is_set():
            _FAILED.setdefault(stop, exc)
    stop.set()


def run_parallel(keys: Iterable[K], work: Callable[[K, threading.Event], None], jobs: int,
                 stop: threading.Event | None = None) -> None:
    """``work(key, stop)`` for every key on at most ``jobs`` threads; raises the first real failure.

    ``stop`` (a fresh event by default) is shared with the caller: set from outside, the work ends
    early and Stopped is raised here; set here when a piece fails.
    """
    pending = list(keys)
    if not pending:
        return
    stop = stop if stop is not None else threading.Event()
    with _FAILED_LOCK:
        if not stop.is_set():    # an event cleared for another run forgets what once set it
            _FAILED.pop(stop, None)
    failures: list[BaseException] = []
    lock = threading.Lock()
    count = max(1, min(jobs, len(pending)))
    running = [count]
    ended = threading.Event()    # every worker has returned

    def worker() -> None:
        try:
            while not stop.is_set():
                with lock:
                    if not pending:
                        return
                    key = pending.pop(0)
                try:
                    work(key, stop)
                except Stopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - raised by the caller
                    with lock:
                        failures.append(exc)
                    _fail(stop, exc)
                    return
        finally:
            with lock:
                running[0] -= 1
                if not running[0]:
                    ended.set()

    for n in range(count):
        threading.Thread(target=worker, name=f"bundler-{n}", daemon=True).start()
    _wait(ended, stop)
    if failures:
        raise failures[0]
    if stop.is_set():
        with _FAILED_LOCK:
            failed = _FAILED.get(stop)
        if failed is not None:   # a run nested in one of ours failed, and has not raised yet
            raise failed
        raise Stopped()


def _wait(ended: threading.Event, stop: threading.Event) -> None:
    """Until every worker ended; once ``stop`` is set, at most GRACE seconds more. Ctrl-C (or any
    exception raised in the waiting thread) sets ``stop`` and passes on after INTERRUPT_GRACE.

    An event, not Thread.join: a join that Ctrl-C interrupts marks the thread ended while it still
    runs (CPython 3.11), and the grace would then not wait for it.
    """
    try:
        while not ended.wait(TICK) and not stop.is_set():
            pass
    except BaseException:
        stop.set()
        ended.wait(INTERRUPT_GRACE)
        raise
    ended.wait(GRACE)


def despite_interrupts(step: Callable[[], object]) -> None:
    """``step`` to its end even if Ctrl-C or SIGTERM lands again while it runs: cleaning up after a first
    interrupt (waiting for a thread to stop its program, removing what a run began) must not be cut off
    half way by a second. ``step`` must be safe to begin again; it is bounded, because the programs it
    waits for have been told to stop."""
    while True:
        try:
            step()
            return
        except KeyboardInterrupt:
            continue
