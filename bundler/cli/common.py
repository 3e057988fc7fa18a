"""What every command shares: exit codes, argument types, the parser's one-line errors, and how
progress and notes reach the terminal."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bundler.cli.terminal import TerminalProgress
from bundler.context import DEFAULT_RETRY, Context, RetryPolicy
from bundler.errors import BundlerError, InputError
from bundler.format.kinds import KIND_NAMES, KindName
from bundler.oci.reference import Platform

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_INTEGRITY = 0, 1, 2, 3
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 512 << 10   # allocations from here up get pages of their own, returned when freed


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts.

    Every download, writer and zstd thread would otherwise get an arena of its own (up to eight
    per core), and the buffers they pass around leave each one fragmented: on a 4 GB image that
    put peak RSS anywhere from 276 to 331 MiB, and 225 to 252 MiB with two arenas, at the same
    speed (scripts/bench.py). Elsewhere than glibc this does nothing.

    The mmap threshold is fixed too: glibc raises it (up to 32 MiB) each time a large block is
    freed, after which the streams' 1 MiB pieces and zstd's buffers came from the arenas and left
    them fragmented a little more with every layer: a build of six 512 MiB layers peaked at 349 MiB
    and rising, of ten 2 GiB layers at 551 MiB; with the threshold fixed at 512 KiB, 244 MiB, flat
    (scripts/bench.py --only scale).
    """
    import ctypes
    import ctypes.util
    m_arena_max, m_mmap_threshold = -8, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, MALLOC_ARENAS)
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), handled as Ctrl-C is: every part stops and cleans up at once; the exit
    status says which signal it was (128 + its number, as shells do)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise Terminated in the main thread like Ctrl-C raises
    KeyboardInterrupt, instead of killing the process where it stands (leaving OUT.partial and programs
    bundler started behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, terminate) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted_status(exc: BaseException) -> tuple[str, int]:
    """The line and exit status for a run stopped by a signal (130 for Ctrl-C, 143 for SIGTERM)."""
    if isinstance(exc, Terminated):
        return f"stopped by {signal.Signals(exc.signum).name}", 128 + exc.signum
    return "interrupted", 128 + signal.SIGINT


def say(text: str = "") -> None:
    print(text, flush=True)


def progress_for(args: argparse.Namespace) -> TerminalProgress:
    return TerminalProgress(quiet=getattr(args, "quiet", False))


def policy_for(args: argparse.Namespace) -> RetryPolicy:
    """The retry policy and time limits: the default, or the one main() was given (tests pass a fast one)."""
    return getattr(args, "policy", None) or DEFAULT_RETRY


def run_context(args: argparse.Namespace) -> Context:
    """The air-gapped side's context: progress, the policy (for --registry), the cancel flag."""
    return Context(progress_for(args), policy_for(args))


def usage_error(message: str) -> BundlerError:
    """A command line that asks for what cannot be: bad input, exit 2."""
    return InputError(message)


def kinds_for(args: argparse.Namespace) -> tuple[KindName, ...]:
    """The payload kinds a command works on: all, or the one its --KIND-only flag names."""
    only = [name for name in KIND_NAMES if getattr(args, f"{name}_only", False)]
    return tuple(only) or KIND_NAMES


# ---- commands ------------------------------------------------------------------------------

def bundle_path(text: str) -> Path:
    if text in ("", "-"):
        raise argparse.ArgumentTypeError(f"{text!r}: a bundle is a file path (standard input is not accepted)")
    return Path(text)


def profile_arg(text: str) -> str:
    if text in ("", "-"):
        raise argparse.ArgumentTypeError(f"{text!r}: a profile is a file path or a built-in name")
    return text


def platform_arg(text: str) -> str:
    try:
        return str(Platform.parse(text))
    except BundlerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def existing_file(text: str) -> Path:
    path = Path(text)
    try:
        found = path.is_file()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror}") from None
    if not found:
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _number(text: str, parse: type, noun: str, least: float, inclusive: bool) -> float:
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if value < least or (value == least and not inclusive):
        raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'more than'} {least:g}")
    return value


def positive(text: str) -> int:
    """A whole number, 1 or more (--jobs, --level)."""
    return _number(text, int, "a whole number", 1, inclusive=True)


def seconds(text: str) -> float:
    """A time limit: more than 0 seconds."""
    return _number(text, float, "a number of seconds", 0, inclusive=False)


def add_only_flags(p: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """``--KIND-only`` for each payload kind (kinds_for reads them back), one at most."""
    only = p.add_mutually_exclusive_group()
    for name in KIND_NAMES:
        only.add_argument(f"--{name}-only", action="store_true", help=helps[name])


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"bundler: error: {self.prog.removeprefix('bundler ')}: {message} (see --help)\n")


Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Subcommand:
    """What cli.build_parser gives a group's ``add_NAME``: where the command's parser goes, the options
    every command takes, and the command's name and line of help."""

    sub: argparse._SubParsersAction
    common: argparse.ArgumentParser
    name: str
    help: str

    def parser(self, func: Handler, description: str) -> argparse.ArgumentParser:
        """The command's parser, which runs ``func``."""
        made = self.sub.add_parser(self.name, parents=[self.common], help=self.help, description=description)
        made.set_defaults(func=func)
        return made


def labelled(label: str, text: str) -> list[str]:
    """A label and a text that may span lines (a check script), its later lines aligned under the first."""
    first, *rest = text.strip("\n").splitlines() or [""]
    return [label + first] + [" " * len(label) + line for line in rest]
