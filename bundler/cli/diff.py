"""``bundler diff A B``: what an update bundle brings, for people or as JSON."""

from __future__ import annotations

import argparse
import json

from bundler.build.diff import diff, read_side
from bundler.build.options import Item
from bundler.cli.common import EXIT_OK, Subcommand, bundle_path, say
from bundler.files import human_size


def _size(size: int | None) -> str:
    return human_size(size) if size is not None else "?"


def _sizes(old: int | None, new: int | None) -> str:
    if old is None and new is None:
        return ""
    return f"  ({_size(old)} -> {_size(new)})" if old != new else f"  ({_size(new)})"


def _files(old: Item, new: Item) -> str:
    """What changed besides the version: the file, else its bytes."""
    if old.detail and new.detail and old.detail != new.detail:
        return f"  {old.detail} -> {new.detail}"
    if old.sha256 and new.sha256 and old.sha256 != new.sha256:
        return f"  sha256:{old.sha256[:12]}.. -> sha256:{new.sha256[:12]}.."
    return ""


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = read_side(args.a), read_side(args.b)
    parts = diff(a, b)
    if args.json:
        say(json.dumps({"a": {"path": str(a.path), "is": a.what, "profile": a.profile, "delta_against": a.against},
                        "b": {"path": str(b.path), "is": b.what, "profile": b.profile, "delta_against": b.against},
                        "kinds": {p.kind: p.as_dict() for p in parts}}, indent=2))
        return EXIT_OK
    for label, side in (("A", a), ("B", b)):
        counts = ", ".join(f"{len(items)} {kind}" for kind, items in side.items.items())
        delta = f"; a delta against {', '.join(side.against)}" if side.against else ""
        say(f"{label}  {side.path}: {side.what} of {side.profile}" + (f" ({counts}{delta})" if counts or delta else ""))
    several = len(set(a.platforms) | set(b.platforms)) > 1

    def name(item: Item) -> str:
        return f"{item.key} [{', '.join(item.platforms)}]" if several and item.platforms else item.key

    for part in parts:
        say(f"{part.kind:<9} {len(part.changed)} changed, {len(part.added)} added, {len(part.removed)} removed, "
            f"{part.unchanged} unchanged")
        for old, new in part.changed:
            what = f"{old.version} -> {new.version}" if old.version != new.version else old.version
            say(f"  changed  {name(new)}  {what}{_files(old, new)}{_sizes(old.size, new.size)}")
        for word, items in (("added", part.added), ("removed", part.removed)):
            for item in items:
                say(f"  {word:<9}{name(item)}  {item.version}" + (f"  ({_size(item.size)})" if item.size is not None
                                                                 else ""))
        if part.parts_name and (part.parts_added or part.parts_removed or part.parts_kept):
            say(f"{part.parts_name:<9} {len(part.parts_added)} added ({human_size(sum(part.parts_added.values()))}), "
                f"{len(part.parts_removed)} removed ({human_size(sum(part.parts_removed.values()))}), "
                f"{len(part.parts_kept)} unchanged ({human_size(sum(part.parts_kept.values()))})")
    new = [p.new_bytes for p in parts]
    if a.what == b.what == "bundle" and None not in new:
        say(f"B carries {human_size(sum(new))} that A does not")
    return EXIT_OK


def add_diff(command: Subcommand) -> None:
    p = command.parser(cmd_diff,
                       "Compare two bundles (their heads only: kilobytes, however large) or lock files, "
                       "or one of each: the images, layers and wheels added, removed or changed, with "
                       "sizes, and the bytes B carries that A does not (what an update bundle "
                       "brings). A lock knows no sizes.")
    p.add_argument("a", type=bundle_path, metavar="A", help="the older bundle (or any of its volumes) or lock")
    p.add_argument("b", type=bundle_path, metavar="B", help="the newer bundle or lock")
    p.add_argument("--json", action="store_true", help="machine-readable output")
