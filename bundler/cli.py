"""The command line: parse arguments, call one verb, render its result; nothing else.

Every ``BundlerError`` becomes one line on stderr and its exit code (1 operational, 2 bad input,
3 integrity); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from bundler import __version__
from bundler.errors import BundlerError
from bundler.profile import builtin_profiles, load_profile

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_INTEGRITY = 0, 1, 2, 3


def _print(text: str = "") -> None:
    print(text, flush=True)


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


def _usage(message: str) -> BundlerError:
    from bundler.errors import InputError
    return InputError(message)


# ---- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no notes, errors only")

    parser = argparse.ArgumentParser(
        prog="bundler", parents=[common],
        description="Carry deep-learning environments across an air gap: build one verified bundle of "
                    "container images and Python wheels on a connected machine, restore it with no network.",
        epilog="Exit codes: 0 success, 1 operational failure (network, docker, disk), 2 bad input "
               "(profile, mirrors file, arguments), 3 integrity failure (a digest does not match).")
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("profiles", parents=[common], help="list the built-in profiles, or show one",
                       description="List the built-in profiles, or print one (bundler profiles show NAME).")
    p.add_argument("action", nargs="?", choices=["show"], help="show: print a profile's YAML")
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile file")
    p.set_defaults(func=cmd_profiles)
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
