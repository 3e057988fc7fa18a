"""Many downloads at once under one progress bar, for the kinds' fetches (layers, wheels, model files)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from bundler.build.options import FetchStats
from bundler.parallel import run_parallel
from bundler.progress import Progress

K = TypeVar("K")


def fetch_parallel(what: str, total: int | None, keys: Iterable[K], *,
                   fetch: Callable[[K, threading.Event, Callable[[int], None]], int], jobs: int,
                   stop: threading.Event | None, progress: Progress, stats: FetchStats) -> None:
    """``fetch(key, stop, on_bytes)`` for every key on ``jobs`` threads under one progress bar; it
    reports bytes as they arrive and returns the bytes it kept from an interrupted earlier try."""
    with progress.bar(what, total) as bar:
        def on_bytes(n: int) -> None:
            stats.add(bytes_downloaded=n)
            bar.update(n)

        def one(key: K, stop: threading.Event) -> None:
            resumed = fetch(key, stop, on_bytes)
            if resumed:
                stats.add(bytes_resumed=resumed)
                bar.update(resumed)

        run_parallel(keys, one, jobs, stop)
