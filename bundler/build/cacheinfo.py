"""What the shared cache holds, and trimming it: ``bundler cache info`` and ``bundler cache prune``.

Users of a shared build machine ask where their disk went. The cache's areas (cache.py): verified
blobs, the layers' zstd frames (one set per compression level), the layers' chunk indexes (for
update bundles), downloads cut off half way
(``partial/``, resumed by the next build), temp files of running builds (``tmp/``; a dead
process's are reclaimed by the next one), and uv's own cache. Pruning takes the cache's lock
exclusively, so no build loses a file it is using.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bundler.build.cache import SESSION_LOCK, USERS_LOCK, Cache, abandoned, tree_size
from bundler.files import free_space

DAY = 86400


@dataclass(frozen=True, kw_only=True)
class Area:
    name: str            # its folder in the cache
    what: str            # for people
    entries: int
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Usage:
    root: Path
    areas: tuple[Area, ...]
    abandoned: Area      # of tmp: what dead processes left (the next build removes it)
    free: int            # on the cache's filesystem

    @property
    def bytes(self) -> int:
        return sum(area.bytes for area in self.areas)

    def as_dict(self) -> dict:
        return {"cache": str(self.root), "bytes": self.bytes, "free": self.free,
                "areas": [asdict(a) for a in self.areas], "abandoned": asdict(self.abandoned)}


def _files(folder: Path) -> list[Path]:
    return [Path(base, name) for base, _, names in os.walk(folder) for name in names] if folder.is_dir() else []


def _area(root: Path, name: str, what: str) -> Area:
    files = _files(root / name)
    size = 0
    for path in files:
        with contextlib.suppress(OSError):
            size += path.lstat().st_size
    return Area(name=name, what=what, entries=len(files), bytes=size)


AREAS = (("blobs", "verified layers, wheels, configs and manifests"),
         ("frames", "layers compressed for bundles, one set per zstd level"),
         ("chunks", "where each layer's chunks are, for update bundles (build --since)"),
         ("partial", "downloads cut off half way (the next build resumes them)"),
         ("tmp", "temp files of running builds"),
         ("uv", "uv's own cache (resolving)"),
         ("meta", "what is known of the blobs (file names, sizes)"))


def usage(root: Path) -> Usage:
    """What each area holds, without changing anything."""
    areas = tuple(_area(root, name, what) for name, what in AREAS)
    found = count = 0
    if (root / "tmp").is_dir():
        for entry, held in abandoned(root):
            found, count = found + tree_size(entry), count + 1
            if held is not None:
                held.close()
    return Usage(root=root, areas=areas, abandoned=Area(name="tmp", what="left by killed runs", entries=count,
                                                        bytes=found), free=free_space(root))


@dataclass(frozen=True)
class Pruned:
    removed: tuple[Area, ...]     # what went, per area
    kept: int                     # bytes left in the cache

    @property
    def bytes(self) -> int:
        return sum(area.bytes for area in self.removed)


def prune(root: Path, older_than_days: float | None = None, everything: bool = False) -> Pruned:
    """Remove temp files, cut-off downloads and uv's cache; with ``older_than_days`` also blobs and
    frames no build used for that long (a build dates everything it takes from the cache: see
    ``Cache.used``); with ``everything``, all of it. DiskError when another bundler process uses the cache."""
    cache = Cache(root, exclusive=True)    # reclaims what dead processes left in tmp/
    removed = [Area(name="tmp", what="left by killed runs", entries=cache.reclaimed.entries,
                    bytes=cache.reclaimed.bytes)]
    for name in ("partial", "uv"):
        removed.append(_remove_all(root / name, name))
    if everything:
        removed += [_remove_all(root / name, name) for name in ("blobs", "frames", "chunks", "meta")]
    elif older_than_days is not None:
        before = time.time() - older_than_days * DAY
        removed += [_remove_older(root / name, name, before) for name in ("blobs", "frames", "chunks")]
    _remove_unheld_locks(root)
    for sub in ("blobs/sha256", "partial", "meta"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kept = usage(root).bytes
    return Pruned(tuple(area for area in removed if area.entries), kept)


def _remove_all(folder: Path, name: str) -> Area:
    files = _files(folder)
    size = sum(path.lstat().st_size for path in files)
    shutil.rmtree(folder, ignore_errors=True)
    return Area(name=name, what="", entries=len(files), bytes=size)


def _remove_older(folder: Path, name: str, before: float) -> Area:
    count = size = 0
    for path in _files(folder):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            if stat.st_mtime < before:
                path.unlink()
                count, size = count + 1, size + stat.st_size
    return Area(name=name, what="", entries=count, bytes=size)


def _remove_unheld_locks(root: Path) -> None:
    """Per-blob lock files pile up, one per layer and wheel ever fetched; with the cache held
    exclusively none is in use (session locks of live processes cannot exist: none uses the cache)."""
    for path in (root / "locks").iterdir():
        if path.name != USERS_LOCK and not path.name.startswith(SESSION_LOCK):
            path.unlink(missing_ok=True)
