"""Bounded parallel work where the first failure stops the rest."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

K = TypeVar("K")


class Stopped(Exception):
    """Raised inside a worker that noticed another one failed; never reaches the caller."""


def run_parallel(keys: Iterable[K], work: Callable[[K, threading.Event], None], jobs: int) -> None:
    """``work(key, stop)`` for every key on at most ``jobs`` threads; re-raises the first real failure.

    When one fails, ``stop`` is set so long downloads in the others end early (they raise Stopped).
    """
    keys = list(keys)
    if not keys:
        return
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(keys))), thread_name_prefix="bundler") as pool:
        futures = [pool.submit(work, key, stop) for key in keys]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failures = [f.exception() for f in done if f.exception() and not isinstance(f.exception(), Stopped)]
        if failures:
            stop.set()
            for future in pending:
                future.cancel()
            wait(pending)
            raise failures[0]


A = TypeVar("A")
B = TypeVar("B")


def both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Run two independent pieces of work at once; the first failure (of either) is raised."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bundler-both") as pool:
        one, two = pool.submit(first), pool.submit(second)
        done, _ = wait([one, two], return_when=FIRST_EXCEPTION)
        for future in (one, two):
            if future in done and future.exception() is not None:
                raise future.exception()
        return one.result(), two.result()
