"""``bundler cache info | prune``: where the shared cache's disk went, and trimming it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundler.build.cache import default_cache_dir
from bundler.build.cacheinfo import prune, usage
from bundler.cli.common import EXIT_OK, Parser, Subcommand, progress_for, say
from bundler.files import human_size


def cmd_cache(args: argparse.Namespace) -> int:
    root = args.cache or default_cache_dir()
    if args.action == "info":
        return _info(args, root)
    return _prune(args, root)


def _info(args: argparse.Namespace, root: Path) -> int:
    if not root.is_dir():
        say(json.dumps({"cache": str(root), "bytes": 0, "areas": []}) if args.json else f"{root}: no cache yet")
        return EXIT_OK
    found = usage(root)
    if args.json:
        say(json.dumps(found.as_dict(), indent=2))
        return EXIT_OK
    say(f"cache     {root}")
    for area in found.areas:
        say(f"{area.name:<9} {human_size(area.bytes):>10}  {area.entries:>6} files  {area.what}")
    if found.abandoned.entries:
        say(f"          of tmp, {human_size(found.abandoned.bytes)} were left by killed runs (the next build "
            "removes them)")
    say(f"total     {human_size(found.bytes):>10}  ({human_size(found.free)} free on its filesystem; "
        "bundler cache prune trims it)")
    return EXIT_OK


def _prune(args: argparse.Namespace, root: Path) -> int:
    if not root.is_dir():
        say(f"{root}: no cache yet")
        return EXIT_OK
    result = prune(root, args.older_than, args.all)
    progress = progress_for(args)
    for area in result.removed:
        progress.note(f"removed {area.entries} files of {area.name}/ ({human_size(area.bytes)})")
    say(f"freed {human_size(result.bytes)} in {root}; {human_size(result.kept)} kept")
    return EXIT_OK


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: days cannot be negative")
    return value


def add_cache(command: Subcommand) -> None:
    common = command.common
    where = Parser(add_help=False)
    where.add_argument("--cache", type=Path, metavar="DIR",
                       help="the cache (default: the user cache dir, as for build)")
    p = command.parser(cmd_cache,
                       "Show what the cache shared by builds holds (info), or trim it (prune).")
    verbs = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    v = verbs.add_parser("info", parents=[common, where], help="what each part of the cache holds",
                         description="The size of each part of the cache: verified blobs, the layers' zstd frames and "
                                     "chunk indexes, "
                                     "downloads cut off half way, temp files (and how much of them killed runs "
                                     "left), uv's cache. Changes nothing.")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v = verbs.add_parser("prune", parents=[common, where], help="remove what no build needs",
                         description="Remove temp files, downloads cut off half way and uv's cache; with "
                                     "--older-than also blobs, frames and chunk indexes no build used for that many "
                                     "days; with --all, everything. Refused while another bundler process uses the "
                                     "cache.")
    v.add_argument("--older-than", type=days, metavar="DAYS",
                   help="also remove blobs, frames and chunk indexes no build has used for DAYS days")
    v.add_argument("--all", action="store_true", help="empty the cache")
