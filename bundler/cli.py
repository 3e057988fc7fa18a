"""The command line: parse arguments, call one verb, render its result; nothing else.

Every ``BundlerError`` becomes one line on stderr and its exit code (1 operational, 2 bad input,
3 integrity); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bundler import __version__
from bundler.errors import BundlerError, InputError
from bundler.profile import builtin_profiles, load_profile

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_INTEGRITY = 0, 1, 2, 3


def _print(text: str = "") -> None:
    print(text, flush=True)


class TerminalProgress:
    """Draws the library's progress with tqdm on a TTY; notes go to stderr unless quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bars = not quiet and sys.stderr.isatty()

    def bar(self, description: str, total: int | None, unit: str = "B"):  # noqa: ANN201
        from bundler.progress import NULL
        if not self.bars:
            return NULL.bar(description, total, unit)
        from tqdm import tqdm
        return tqdm(total=total, desc=description, unit=unit, unit_scale=True, unit_divisor=1024, leave=False,
                    dynamic_ncols=True, file=sys.stderr)

    def note(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm
            tqdm.write(f"bundler: {message}", file=sys.stderr)


def _progress(args: argparse.Namespace) -> TerminalProgress:
    return TerminalProgress(quiet=getattr(args, "quiet", False))


def _context(args: argparse.Namespace, profile):  # noqa: ANN001, ANN202
    from bundler.context import Context
    return Context.create(profile, mirrors_file=getattr(args, "mirrors", None), cache_dir=getattr(args, "cache", None),
                          progress=_progress(args), jobs=getattr(args, "jobs", 4))


# ---- commands ------------------------------------------------------------------------------

def cmd_profiles(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise _usage("profiles show: name a profile (bundler profiles lists them)")
        profile = load_profile(args.name)
        _print(f"# {profile.path}")
        _print(profile.source_text.rstrip("\n"))
        return EXIT_OK
    if args.action is not None:
        raise _usage(f"profiles: unknown action {args.action!r} (use: bundler profiles [show NAME])")
    profiles = builtin_profiles()
    width = max((len(p.name) for p in profiles), default=0)
    for profile in profiles:
        _print(f"{profile.name:<{width}}  {profile.description}")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    from bundler.lockfile import dump_lock, lock, write_lock
    profile = load_profile(args.profile)
    result = lock(profile, _context(args, profile), images=not args.wheels_only, wheels=not args.images_only)
    if args.output is None:
        sys.stdout.write(dump_lock(result))
    else:
        write_lock(result, args.output)
        _progress(args).note(f"locked {len(result.images)} images and {len(result.pins())} requirements "
                             f"into {args.output}")
    return EXIT_OK


def _usage(message: str) -> BundlerError:
    return InputError(message)


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _add_fetch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mirrors", type=_existing_file, metavar="FILE",
                   help="a mirrors file that overrides the profile's and the user's (see README: Mirrors)")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="the content-addressed cache shared by builds (default: the user cache dir)")
    p.add_argument("--jobs", type=_positive, default=4, metavar="N", help="parallel downloads (default 4)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--images-only", action="store_true", help="only the images")
    only.add_argument("--wheels-only", action="store_true", help="only the wheels")


# ---- parser --------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"bundler: error: {self.prog.removeprefix('bundler ')}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no notes, errors only")

    parser = _Parser(
        prog="bundler", parents=[common],
        description="Carry deep-learning environments across an air gap: build one verified bundle of "
                    "container images and Python wheels on a connected machine, restore it with no network.",
        epilog="Exit codes: 0 success, 1 operational failure (network, docker, disk), 2 bad input "
               "(profile, mirrors file, arguments), 3 integrity failure (a digest does not match).")
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("profiles", parents=[common], help="list the built-in profiles, or show one",
                       description="List the built-in profiles, or print one (bundler profiles show NAME).")
    p.add_argument("action", nargs="?", choices=["show"], help="show: print a profile's YAML")
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile file")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("lock", parents=[common], help="pin images to digests and requirements to hashes",
                       description="Resolve the profile's image tags to manifest digests for its platform and its "
                                   "requirements to exact versions with sha256 hashes, for its target (not this "
                                   "machine), without downloading payloads. `bundler build --lock FILE` then "
                                   "fetches exactly that.")
    p.add_argument("profile", metavar="PROFILE", help="a profile file, or the name of a built-in profile")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the lock here (default: stdout)")
    _add_fetch_options(p)
    p.set_defaults(func=cmd_lock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        return func(args)
    except BundlerError as exc:
        if debug:
            traceback.print_exc()
        print(f"bundler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bundler: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes a message
        if debug:
            traceback.print_exc()
        print(f"bundler: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
