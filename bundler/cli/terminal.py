"""How the library's progress reaches a person: tqdm bars on a terminal, one plain line every few
seconds without one (CI logs), nothing under ``-q``. Sizes in binary units, as every size bundler
prints (files.human_size): the bar and the summary say the same MiB."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from bundler.files import human_size
from bundler.progress import NULL, WAIT

PLAIN_INTERVAL = 5.0     # seconds between the plain lines of one long phase


def amount(value: float, unit: str) -> str:
    """``1.5 GiB`` for bytes, ``12 wheels`` for anything counted."""
    return human_size(value) if unit == "B" else f"{value:.0f} {unit}{'s' if value != 1 else ''}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class PlainBar:
    """A phase's progress as a line every ``interval`` seconds while it lasts (none for a short one),
    and a last line when it ends after having said something."""

    def __init__(self, description: str, total: int | None, unit: str, write: Callable[[str], None],
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.unit, self.write = description, total, unit, write
        self.interval, self.clock = interval, clock
        self.n = 0
        self.started = self.last = clock()
        self.spoke = False
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self.n += n
            now = self.clock()
            if now - self.last < self.interval:
                return
            self.last, self.spoke = now, True
            line = self.line(now)
        self.write(line)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        if self.unit == WAIT:
            return f"{self.description}: {_duration(elapsed)} so far"
        text = f"{self.description}: {amount(self.n, self.unit)}"
        if self.total:
            text += f" of {amount(self.total, self.unit)} ({100 * self.n / self.total:.0f}%)"
        text += f", {_duration(elapsed)}"
        if self.unit == "B" and elapsed > 0:
            text += f", {human_size(self.n / elapsed)}/s"
        if self.total and self.n and self.n < self.total:
            text += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        return text

    def close(self) -> None:
        if self.spoke:
            took = _duration(self.clock() - self.started)
            self.write(f"{self.description}: done in {took}" if self.unit == WAIT
                       else f"{self.description}: {amount(self.n, self.unit)} in {took}")

    def __enter__(self) -> PlainBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tqdm_bar(description: str, total: int | None, unit: str):  # noqa: ANN202
    from tqdm import tqdm

    class BinaryBar(tqdm):
        """tqdm with sizes and speeds in binary units (tqdm's own rate is decimal)."""

        @property
        def format_dict(self) -> dict:
            found = super().format_dict
            rate = found.get("rate") or (found["n"] / found["elapsed"] if found.get("elapsed") else 0)
            found.update(sized_n=human_size(found["n"]), sized_total=human_size(found["total"] or 0),
                         sized_rate=f"{human_size(rate)}/s")
            return found

    if unit == WAIT:
        return tqdm(total=None, desc=description, bar_format="{desc}: {elapsed}", leave=False, dynamic_ncols=True,
                    file=sys.stderr)
    if unit != "B":
        return tqdm(total=total, desc=description, unit=f" {unit}", leave=False, dynamic_ncols=True, file=sys.stderr)
    shape = ("{desc}: {percentage:3.0f}%|{bar}| {sized_n} of {sized_total} [{elapsed}<{remaining}, {sized_rate}]"
             if total else "{desc}: {sized_n} [{elapsed}, {sized_rate}]")
    return BinaryBar(total=total, desc=description, bar_format=shape, leave=False, dynamic_ncols=True,
                     file=sys.stderr)


class TerminalProgress:
    """Renders the library's progress (progress.Progress): tqdm bars on a terminal, plain lines every few
    seconds without one; notes go to stderr. ``quiet``: neither (the command's summary still prints)."""

    def __init__(self, quiet: bool = False, terminal: bool | None = None, interval: float = PLAIN_INTERVAL) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.interval = interval

    def bar(self, description: str, total: int | None, unit: str = "B"):  # noqa: ANN201
        if self.quiet:
            return NULL.bar(description, total, unit)
        if self.terminal:
            return _tqdm_bar(description, total, unit)
        return PlainBar(description, total, unit, self.note, self.interval)

    def note(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm
            tqdm.write(f"bundler: {message}", file=sys.stderr)
