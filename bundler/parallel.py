"""Bounded parallel work that stops early: the first failure, or Ctrl-C, ends the rest within a moment.

Workers are daemon threads that check a shared ``stop`` event between pieces of work (every chunk
of a download): when one fails, or the caller is interrupted, ``stop`` is set, the others raise
Stopped at their next chunk, and the caller raises without waiting for work nobody wants any more.
A worker blocked in a system call that never returns is left behind after GRACE seconds; being a
daemon thread, it cannot keep the process alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

K = TypeVar("K")

GRACE = 2.0      # seconds stopped workers get to notice, before the caller goes on without them
TICK = 0.1       # how often a waiting caller looks up (Ctrl-C reaches it between looks)


class Stopped(Exception):
    """Raised inside work that noticed it should stop: another piece failed, or the run was cancelled."""


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
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
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
                stop.set()
                return

    threads = [threading.Thread(target=worker, name=f"bundler-{n}", daemon=True)
               for n in range(max(1, min(jobs, len(pending))))]
    for thread in threads:
        thread.start()
    _wait(threads, stop)
    if failures:
        raise failures[0]
    if stop.is_set():
        raise Stopped()


def _wait(threads: list[threading.Thread], stop: threading.Event) -> None:
    """Until every thread ended; once ``stop`` is set, at most GRACE seconds more. Ctrl-C (or any
    exception raised in the waiting thread) sets ``stop`` and passes on after the same grace."""
    try:
        for thread in threads:
            while thread.is_alive() and not stop.is_set():
                thread.join(TICK)
    except BaseException:
        stop.set()
        _grace(threads)
        raise
    _grace(threads)


def _grace(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + GRACE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
