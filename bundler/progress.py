"""How the library reports progress without printing: a callback object the CLI renders.

The library calls ``progress.bar(...)`` for long byte-counted work and ``progress.note(...)`` for
a line worth telling the user (an image skipped, a mirror that failed over). The CLI draws tqdm
bars on a TTY; the default ``NULL`` reporter is silent.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

WAIT = "wait"   # a bar's unit when nothing can be counted, only the time the phase has lasted


class Bar(Protocol):
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    def bar(self, description: str, total: int | None, unit: str = "B") -> Bar: ...

    def note(self, message: str) -> None: ...


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullProgress:
    def bar(self, description: str, total: int | None, unit: str = "B") -> _NullBar:  # noqa: ARG002
        return _NullBar()

    def note(self, message: str) -> None:
        pass


NULL = NullProgress()


TICK = 1.0      # seconds between a waiting bar's updates


@contextlib.contextmanager
def ticking(every: float, call: Callable[[], None], name: str = "ticking") -> Iterator[None]:
    """``call()`` every ``every`` seconds on a thread of its own while the block runs: how a phase that
    another program works through (pip, uv, docker) still says something every few seconds."""
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            call()

    ticker = threading.Thread(target=tick, name=name, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join(every * 4)


@contextlib.contextmanager
def waiting(progress: Progress, description: str, tick: float = TICK) -> Iterator[None]:
    """A phase that counts nothing bundler can see (uv resolving, docker registering the images it
    received, containerd importing): a bar of unit ``WAIT``, told every ``tick`` seconds that time
    passes, so that the user sees which phase runs and for how long, on a terminal or in a log."""
    with progress.bar(description, None, unit=WAIT) as bar, ticking(tick, lambda: bar.update(0), "waiting"):
        yield
