"""How the library's progress reaches a person: tqdm bars on a terminal, one plain line every few
seconds without one (CI logs), nothing under ``-q``. Sizes in binary units, as every size bundler
prints (files.human_size): the bar and the summary say the same MiB.

A bar is told of its work only when there is some (bytes arrived, a wheel installed): a download
stalled on a slow mirror tells nothing. So the renderer ticks every open bar itself, once a second:
a terminal's bar redraws its elapsed time, and without a terminal an open phase says where it is
every PLAIN_INTERVAL seconds, and at once when nothing at all was said for that long (a phase that
follows short, silent ones)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from bundler.files import human_size
from bundler.progress import NULL, WAIT

PLAIN_INTERVAL = 5.0     # seconds between the plain lines of one long phase, and the longest silence
TICK = 1.0               # seconds between the renderer's looks at its open bars


def amount(value: float, unit: str) -> str:
    """``1.5 GiB`` for bytes, ``12 wheels`` for anything counted."""
    return human_size(value) if unit == "B" else f"{value:.0f} {unit}{'s' if value != 1 else ''}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class PlainBar:
    """A phase's progress as a line every ``interval`` seconds while it lasts (none for a short one),
    and a last line when it ends after having said something. With ``said_last`` (when the last line
    of any phase or note was written), it also speaks as soon as nothing was said for ``interval``."""

    def __init__(self, description: str, total: int | None, unit: str, write: Callable[[str], None],
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic, *,
                 said_last: Callable[[], float] | None = None) -> None:
        self.description, self.total, self.unit, self.write = description, total, unit, write
        self.interval, self.clock, self.said_last = interval, clock, said_last
        self.n = 0
        self.started = self.last = clock()
        self.spoke = self.ended = False
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self.n += n
            if self.ended:   # a tick that comes late says nothing after the last line
                return
            now = self.clock()
            quiet = self.said_last is not None and now - self.said_last() >= self.interval
            if now - self.last < self.interval and not quiet:
                return
            self.last, self.spoke = now, True
            self.write(self.line(now))   # within the lock: a tick at the same moment sees it said

    def tick(self) -> None:
        """Time passed: a line if one is due."""
        self.update(0)

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
        with self._lock:
            if self.ended:
                return
            self.ended = True
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


class _Ticked:
    """An open bar of the renderer's: passed through, and ticked (``tick``) until it is closed."""

    def __init__(self, bar, progress: TerminalProgress,  # noqa: ANN001 - a PlainBar or a tqdm bar
                 tick: Callable[[], None]) -> None:
        self.bar, self.progress, self.tick = bar, progress, tick

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.progress.closed(self)
        self.bar.close()

    def __getattr__(self, name: str):  # noqa: ANN204 - the bar's own (tqdm's refresh, n, ...)
        return getattr(self.bar, name)

    def __enter__(self) -> _Ticked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TerminalProgress:
    """Renders the library's progress (progress.Progress): tqdm bars on a terminal, plain lines every few
    seconds without one; notes go to stderr. ``quiet``: neither (the command's summary still prints).

    While any bar is open, a thread of its own ticks them every ``tick`` seconds (see the module's
    docstring); it ends when the last one closes."""

    def __init__(self, quiet: bool = False, terminal: bool | None = None, interval: float = PLAIN_INTERVAL, *,
                 tick: float = TICK) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.interval, self.tick_every = interval, tick
        self.said = time.monotonic()      # when the last line was written: a bar after a silence speaks at once
        self._open: list[_Ticked] = []
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None

    def bar(self, description: str, total: int | None, unit: str = "B"):  # noqa: ANN201
        if self.quiet:
            return NULL.bar(description, total, unit)
        if self.terminal:   # tqdm redraws only when told of work: its elapsed time would stand still
            made = _tqdm_bar(description, total, unit)
            opened = _Ticked(made, self, made.refresh)
        else:
            made = PlainBar(description, total, unit, self.note, self.interval, said_last=lambda: self.said)
            opened = _Ticked(made, self, made.tick)
        with self._lock:
            self._open.insert(0, opened)   # the newest first: after a silence, the phase that just began speaks
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._ticking, name="progress", daemon=True)
                self._ticker.start()
        return opened

    def closed(self, bar: _Ticked) -> None:
        with self._lock:
            if bar in self._open:
                self._open.remove(bar)

    def _ticking(self) -> None:
        while True:
            time.sleep(self.tick_every)
            with self._lock:
                bars = list(self._open)
                if not bars:
                    self._ticker = None
                    return
            for bar in bars:
                bar.tick()

    def note(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm
            tqdm.write(f"bundler: {message}", file=sys.stderr)
            self.said = time.monotonic()
