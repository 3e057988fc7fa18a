"""Payload kinds: what a bundle carries (images, wheels, models), each behind the same few operations.

On the connected side a kind ``pin``\\s what a profile names (the lock's entries: image tags to
manifest digests, requirements to hashes), ``plan``\\s its fetch (each piece, its size, whether the
cache has it: for ``build --dry-run`` and the free-space check before fetching), ``fetch``\\es
exactly that into the cache, and gives the bundle its members and its section of bundle.json. On
the air-gapped side it gives a ``restorer`` that takes its members as the bundle streams and makes
them real in their destination. The bundle,
the lock and restore are written once over this interface: adding a kind is one module in this
package and one entry in KINDS (its name is also its key in bundle.json and in ``--KIND-only``).
A bundle is written in the lowest format that holds what it carries (format.Head.needed_format), so
older releases keep reading bundles that carry nothing newer.

For updates, each kind also says what a site already holds (``inventory``, on the air-gapped side),
keeps out of a delta bundle what the site holds (``delta``, on the connected side), and its restorer
says which of a delta's pieces its destination cannot give (``lacking``), to be taken from an earlier
bundle (``supply``; bases.py). A kind written to this interface takes part in deltas as it is.

Restore imports this package, so a kind imports its connected-side modules (registry pulls, uv,
the resolver) inside the methods that use them: the air-gapped side never loads them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from bundler.parallel import run_parallel
from bundler.progress import Progress

K = TypeVar("K")

if TYPE_CHECKING:
    from bundler.archive import MemberReader
    from bundler.bases import Piece
    from bundler.bundle import BuildOptions
    from bundler.context import Context
    from bundler.format import Head
    from bundler.inventory import Inventory, InventoryOptions, Site
    from bundler.lockfile import Lock
    from bundler.pack import Member
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions, RestoreReport


@dataclass
class FetchStats:
    """What a kind's fetch did: for the build's report, and for the tests that prove resume and dedup."""

    wanted: int = 0               # pieces asked for (a layer two images share counts twice)
    cached: int = 0               # of those, found in the cache
    downloaded: int = 0           # fetched from an endpoint
    bytes_downloaded: int = 0
    bytes_resumed: int = 0        # kept from an interrupted earlier try
    built: list[str] = field(default_factory=list)   # made here: a wheel built from its sdist
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters from several download threads at once."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def fetch_parallel(what: str, total: int | None, keys: Iterable[K],
                   fetch: Callable[[K, threading.Event, Callable[[int], None]], int], jobs: int,
                   stop: threading.Event | None, progress: Progress, stats: FetchStats) -> None:
    """``fetch(key, stop, on_bytes)`` for every key on ``jobs`` threads under one progress bar; it
    reports bytes as they arrive and returns the bytes it kept from an interrupted earlier try."""
    with progress.bar(what, total) as bar:
        def on_bytes(n: int) -> None:
            stats.add(bytes_downloaded=n)
            bar.update(n)

        def one(key: K, stop: threading.Event) -> None:
            resumed = fetch(key, stop, on_bytes)
            if resumed:
                stats.add(bytes_resumed=resumed)
                bar.update(resumed)

        run_parallel(keys, one, jobs, stop)


@dataclass(frozen=True)
class Planned:
    """One piece a fetch would bring (a layer, a wheel): what ``build --dry-run`` shows, and what the
    free-space check before fetching adds up."""

    name: str
    size: int | None              # bytes to download; None when its source does not say
    cached: bool                  # in the cache already: nothing to download
    source: str = ""              # where it comes from: the endpoint that answered, or ``cache``
    digest: str = ""              # a wheel's or a model file's sha256 (hex), where the plan knows it
    held: bool = False            # a delta's site holds it (build --since): fetched, for the SBOM, not carried


@dataclass
class FetchPlan:
    """What a kind's fetch would do, known before it downloads anything."""

    kind: str
    pieces: list[Planned]
    cache_factor: float = 1.0     # cache bytes per byte downloaded, at the worst moment (a layer: the
                                  # download and its zstd frame side by side)

    @property
    def to_fetch(self) -> list[Planned]:
        return [p for p in self.pieces if not p.cached]

    @property
    def fetch_bytes(self) -> int:
        return sum(p.size or 0 for p in self.to_fetch)

    @property
    def cached_bytes(self) -> int:
        return sum(p.size or 0 for p in self.pieces if p.cached)

    @property
    def held_bytes(self) -> int:
        """What the pieces a delta's site holds come to: fetched (or cached), and not carried."""
        return sum(p.size or 0 for p in self.pieces if p.held)

    @property
    def unknown(self) -> int:
        """Pieces to download whose size no source gave."""
        return sum(1 for p in self.to_fetch if p.size is None)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "fetch_bytes": self.fetch_bytes, "cached_bytes": self.cached_bytes,
                "held_bytes": self.held_bytes, "unknown_sizes": self.unknown,
                "pieces": [{"name": p.name, "size": p.size, "cached": p.cached, "source": p.source, "held": p.held}
                           for p in self.pieces]}


@dataclass
class Fetched:
    """What a kind's fetch gives the bundle."""

    members: list[Member]
    sections: dict[str, tuple]           # its sections of bundle.json: {"images": (ImageEntry, ...), ...}
    stats: FetchStats = field(default_factory=FetchStats)
    created: int | None = None        # the newest date the content itself carries (an image's config)
    notes: list[str] = field(default_factory=list)
    needs: dict[str, tuple] = field(default_factory=dict)   # a delta: its part of bundle.json's delta section
    contents: tuple[object, ...] = ()    # what each entry holds inside, for the SBOM (layerscan.ImageContents)


@dataclass(frozen=True)
class Item:
    """One thing a bundle or a lock carries, as ``bundler diff`` compares two of them."""

    key: str                      # what stays across versions: an image's name, a wheel's project
    version: str                  # what changes: a manifest digest, a version
    size: int | None = None       # its bytes in the bundle; None from a lock, which does not say
    detail: str = ""              # shown beside it: a wheel's file name
    parts: dict[str, int] = field(default_factory=dict)   # pieces items may share (an image's layers), by digest


class Restorer(Protocol):
    """One kind's destination during a restore; the verb calls these in this order."""

    def plan(self, report: RestoreReport) -> None: ...      # look at the destination: what it has already
    def done(self) -> bool: ...                             # nothing of this kind left to restore
    def start(self) -> None: ...                            # work that needs nothing from the bundle
    def wants(self, path: str) -> bool: ...                 # this member is this kind's
    def member(self, path: str, member: MemberReader) -> None: ...   # as it streams, checked as it is read
    def commit(self, report: RestoreReport) -> None: ...    # every member matched: make it real
    def abort(self) -> None: ...                            # a failure: leave nothing half made
    def finish(self, report: RestoreReport) -> None: ...    # after every commit (or when nothing was to do)
    # a delta: after plan, what of the site's part its destination cannot give (``scratch``: a folder
    # for what it reads out of the destination before the load); then those pieces, from a --base bundle
    def lacking(self, scratch: Path) -> list[Piece]: ...
    def supply(self, piece: Piece, path: Path) -> None: ...


class Kind(Protocol):
    name: str

    def in_profile(self, profile: Profile) -> bool: ...
    def pinned(self, lock: Lock) -> bool: ...
    def pin(self, profile: Profile, ctx: Context) -> dict: ...   # the Lock's fields for this kind
    def plan(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions,   # before fetching;
             site: Site | None) -> FetchPlan: ...                      # a delta's site marks what it holds
    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched: ...
    def in_head(self, head: Head) -> bool: ...
    def items(self, head: Head) -> list[Item]: ...           # what a bundle carries, for bundler diff
    def lock_items(self, lock: Lock) -> list[Item]: ...      # what a lock pins (no sizes)
    parts: str                                               # what items' parts are called ("layers"), or ""
    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> Restorer: ...
    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory: ...   # what a site holds
    def delta(self, fetched: Fetched, site: Site, ctx: Context) -> Fetched: ...   # without what the site holds


def _kinds() -> tuple[Kind, ...]:
    from bundler.kinds.images import Images
    from bundler.kinds.models import Models
    from bundler.kinds.wheels import Wheels
    return (Images(), Wheels(), Models())


KINDS: tuple[Kind, ...] = _kinds()
NAMES = tuple(kind.name for kind in KINDS)


def select(names: Collection[str] | None = None) -> list[Kind]:
    """The kinds named (all when None), in KINDS' order."""
    return [kind for kind in KINDS if names is None or kind.name in names]
