"""The command line: parse arguments, call one verb, render its result; nothing else.

Commands come in groups, one module each (``COMMANDS`` says which); a run imports only the group of
the command it runs. Every ``BundlerError`` becomes one line on stderr and its exit code
(1 operational, 2 bad input, 3 integrity); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bundler import __version__
from bundler.cli.common import (
    EXIT_FAILURE,
    EXIT_INPUT,
    Parser,
    Subcommand,
    interrupted_status,
    limit_malloc_arenas,
    signals_interrupt,
)
from bundler.context import RetryPolicy
from bundler.errors import BundlerError
from bundler.parallel import Stopped

_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.ELOOP}


@dataclass(frozen=True)
class Command:
    name: str
    group: str           # the module of bundler/cli/ that defines it (``add_NAME``) and runs it
    help: str            # its line in ``bundler --help``
    air_gapped: bool     # offered by the one-file restorer too
    air_group: str = ""  # the group that defines it in the restorer, where that is another (its air-gapped half)

    def group_for(self, air_gapped: bool) -> str:
        return self.air_group if air_gapped and self.air_group else self.group


COMMANDS = (
    Command("profiles", "build", "list the built-in profiles, or show one", air_gapped=False),
    Command("lock", "build", "pin images to digests, requirements to hashes, models to files", air_gapped=False),
    Command("build", "build", "fetch a profile's images, wheels and models into one bundle", air_gapped=False),
    Command("restorer", "build", "make the one-file restorer on its own", air_gapped=False),
    Command("inspect", "inspect", "show what a bundle holds (reads only its head)", air_gapped=True),
    Command("verify", "inspect", "re-hash every member of a bundle", air_gapped=True),
    Command("restore", "restore", "load a bundle's images, install its wheels, place its models, offline",
            air_gapped=True),
    Command("push", "site", "put a bundle into the site's registry, for a whole cluster", air_gapped=True),
    Command("serve", "site", "serve bundles to a whole cluster from a registry of their own, with an index",
            air_gapped=True),
    Command("sbom", "trust", "write out the SBOM of everything a bundle holds (reads only its start)",
            air_gapped=True),
    Command("mirrors", "mirrors", "list, check and configure the mirrors; configure a node for the site",
            air_gapped=True, air_group="node"),
    Command("cache", "cache", "show or trim the shared cache", air_gapped=False),
    Command("diff", "diff", "what changes between two bundles or locks", air_gapped=False),
    Command("completion", "completion", "print the shell completion script", air_gapped=False),
    Command("inventory", "inventory", "write what this site already holds, for build --since", air_gapped=True),
)


def _named(argv: Sequence[str]) -> str | None:
    """The command an argument list names: its first word that is not an option (the options before it
    take no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None, air_gapped: bool = False) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command is listed, and the group of the one ``argv`` names is
    imported and defines its options; with no command named (``--help``) none is imported, and with
    ``argv`` None (shell completion) every group is. This keeps start-up fast (``bundler inspect``
    never loads the connected side, which the one-file restorer does not carry); with
    ``air_gapped``, only the restorer's commands are offered."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress and no notes: the final summary and errors only")

    parser = Parser(
        prog="bundler", parents=[common],
        description="Carry deep-learning environments across an air gap: build one verified bundle of "
                    "container images and Python wheels on a connected machine, restore it with no network.",
        epilog="Exit codes: 0 success, 1 operational failure (network, docker, disk), 2 bad input "
               "(profile, mirrors file, arguments), 3 integrity failure (a digest does not match).")
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    offered = [command for command in COMMANDS if command.air_gapped or not air_gapped]
    named = _named(argv) if argv is not None else None
    wanted = {c.group_for(air_gapped) for c in offered if argv is None or c.name == named}
    groups = {group: importlib.import_module(f"bundler.cli.{group}") for group in sorted(wanted)}
    for command in offered:
        if command.group_for(air_gapped) in groups:
            add = getattr(groups[command.group_for(air_gapped)], f"add_{command.name}")
            add(Subcommand(sub, common, command.name, help=command.help))
        else:   # listed, not defined: its group is not loaded for this run
            sub.add_parser(command.name, help=command.help)
    return parser


def main(argv: Sequence[str] | None = None, policy: RetryPolicy | None = None, air_gapped: bool = False) -> int:
    """The command line. ``policy`` replaces the default retry policy and time limits (tests pass a
    fast one); ``air_gapped`` offers only what the one-file restorer runs."""
    limit_malloc_arenas()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "_ARGCOMPLETE" in os.environ and not air_gapped:   # the shell asks for completions: every command's options
        from bundler.cli.completion import complete
        complete(build_parser(None))
    parser = build_parser(argv, air_gapped)
    args = parser.parse_args(argv)
    args.policy = policy
    debug = getattr(args, "debug", False)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        with signals_interrupt():
            return func(args)
    except BundlerError as exc:
        if debug:
            traceback.print_exc()
        print(f"bundler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Stopped) as exc:
        if debug:
            traceback.print_exc()
        line, status = interrupted_status(exc)
        print(f"bundler: {line}", file=sys.stderr)
        return status
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as exc:
        # A path the system will not take (too long, not a folder...) named on the command line or
        # in a profile: bad input when the path itself is the problem, else the disk's failure.
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bundler: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT if exc.errno in _PATH_ERRNOS else EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes a message
        if debug:
            traceback.print_exc()
        print(f"bundler: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
