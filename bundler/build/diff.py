"""``bundler diff A B``: what changes from one bundle (or lock) to another, kind by kind.

Each side is a bundle, of which only the head is read (kilobytes, however large), or a lock file.
Every payload kind lists its items (kinds.Kind.items / lock_items: images by name and platform,
wheels by project and platform, models by repository and revision) and the parts items may share
(an image's layers); the diff says which items were added, removed or changed (another version,
file or content), and how many bytes of parts B carries that A does not: what an update bundle
brings. A lock knows no sizes, so a side that is a lock gives versions and digests only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bundler.build.kinds import KINDS
from bundler.build.lockfile import read_lock
from bundler.build.options import Item
from bundler.format.archive import load_head

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, kw_only=True)
class Side:
    """One side of a diff: what each kind carries there."""

    path: Path
    what: str                          # "bundle" or "lock"
    profile: str
    items: dict[str, list[Item]]       # by kind
    platforms: tuple[str, ...] = ()    # the target's
    against: tuple[str, ...] = ()      # a delta bundle's bases: what it lists, the site holds; it carries the rest


@dataclass(kw_only=True)
class KindDiff:
    kind: str
    parts_name: str
    added: list[Item] = field(default_factory=list)
    removed: list[Item] = field(default_factory=list)
    changed: list[tuple[Item, Item]] = field(default_factory=list)
    unchanged: int = 0
    parts_added: dict[str, int] = field(default_factory=dict)
    parts_removed: dict[str, int] = field(default_factory=dict)
    parts_kept: dict[str, int] = field(default_factory=dict)

    @property
    def new_bytes(self) -> int | None:
        """What B carries of this kind that A does not (the new parts, else the new and changed items)."""
        if self.parts_name:
            return sum(self.parts_added.values())
        new = self.added + [item for _, item in self.changed]
        sizes = {item.sha256 or (item.key, item.version, item.detail): item.size for item in new}   # a file once
        return None if any(size is None for size in sizes.values()) else sum(sizes.values())

    def as_dict(self) -> dict:
        def item(entry: Item) -> dict:
            return {"key": entry.key, "platforms": list(entry.platforms), "version": entry.version,
                    "size": entry.size, "detail": entry.detail, "sha256": entry.sha256 or None}
        data = {"added": [item(i) for i in self.added], "removed": [item(i) for i in self.removed],
                "changed": [{"from": item(a), "to": item(b)} for a, b in self.changed], "unchanged": self.unchanged,
                "new_bytes": self.new_bytes}
        if self.parts_name:
            data[self.parts_name] = {"added": self.parts_added, "removed": self.parts_removed,
                                     "unchanged": len(self.parts_kept)}
        return data


def read_side(path: Path) -> Side:
    """A bundle (its head only) or a lock file."""
    if _is_bundle(path):
        head = load_head(path)
        return Side(path=path, what="bundle", profile=head.profile.name,
                    items={kind.name: kind.items(head) for kind in KINDS if kind.in_head(head)},
                    platforms=head.target.platforms,
                    against=tuple(base.name for base in head.delta.bases) if head.delta is not None else ())
    lock = read_lock(path)
    return Side(path=path, what="lock", profile=lock.profile,
                items={kind.name: kind.lock_items(lock) for kind in KINDS}, platforms=lock.platforms)


def _is_bundle(path: Path) -> bool:
    if not path.is_file():        # a split bundle named by its base: only its volumes exist
        return any(path.parent.glob(f"{path.name}.[0-9][0-9][0-9]"))
    with open(path, "rb") as handle:
        return handle.read(4) == ZSTD_MAGIC


def _changed(old: Item, new: Item) -> bool:
    return (old.version != new.version or bool(old.detail and new.detail and old.detail != new.detail)
            or bool(old.sha256 and new.sha256 and old.sha256 != new.sha256))


def _by_platform(items: list[Item]) -> dict[tuple[str, str], Item]:
    """Each item under its key for each platform it serves: what the other side's items are matched with."""
    return {(item.key, platform): item for item in items for platform in item.platforms or ("",)}


def _on(item: Item | None, platforms: list[str]) -> Item | None:
    return None if item is None else replace(item, platforms=tuple(p for p in platforms if p))


def _matches(a: list[Item], b: list[Item]) -> dict[str, list[tuple[Item | None, Item | None]]]:
    """A's and B's items matched by key, platform by platform, for each outcome (added, removed,
    changed, unchanged). A match that holds on several platforms (a pure-Python wheel) comes out once,
    with those platforms."""
    old, new = _by_platform(a), _by_platform(b)
    found: dict[str, dict[tuple[int, int], tuple[Item | None, Item | None, list[str]]]] = {
        outcome: {} for outcome in ("added", "removed", "changed", "unchanged")}
    for key, platform in sorted(old.keys() | new.keys()):
        before, after = old.get((key, platform)), new.get((key, platform))
        outcome = ("added" if before is None else "removed" if after is None
                   else "changed" if _changed(before, after) else "unchanged")
        found[outcome].setdefault((id(before), id(after)), (before, after, []))[2].append(platform)
    return {outcome: [(_on(before, platforms), _on(after, platforms)) for before, after, platforms in pairs.values()]
            for outcome, pairs in found.items()}


def diff(a: Side, b: Side) -> list[KindDiff]:
    """Every kind either side carries, in KINDS' order."""
    found = []
    for kind in KINDS:
        if kind.name not in a.items and kind.name not in b.items:
            continue
        old, new = a.items.get(kind.name, []), b.items.get(kind.name, [])
        matches = _matches(old, new)
        part = KindDiff(kind=kind.name, parts_name=getattr(kind, "parts", ""))
        part.added = [after for _, after in matches["added"]]
        part.removed = [before for before, _ in matches["removed"]]
        part.changed = matches["changed"]
        part.unchanged = len(matches["unchanged"])
        old_parts = {d: s for i in old for d, s in i.parts.items()}
        new_parts = {d: s for i in new for d, s in i.parts.items()}
        part.parts_added = {d: new_parts[d] for d in sorted(new_parts.keys() - old_parts.keys())}
        part.parts_removed = {d: old_parts[d] for d in sorted(old_parts.keys() - new_parts.keys())}
        part.parts_kept = {d: new_parts[d] for d in sorted(new_parts.keys() & old_parts.keys())}
        found.append(part)
    return found
