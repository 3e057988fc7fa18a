"""How the library reports progress without printing: a callback object the CLI renders.

The library calls ``progress.bar(...)`` for long byte-counted work and ``progress.note(...)`` for
a line worth telling the user (an image skipped, a mirror that failed over). The CLI draws tqdm
bars on a TTY; the default ``NULL`` reporter is silent.
"""

from __future__ import annotations

from typing import Protocol


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
