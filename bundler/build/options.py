"""The types the connected side's modules share: what a build is asked to do and what it did, and
what each payload kind's fetch plans, brings and counts (build/kinds.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bundler.build.images.layerscan import ImageContents
from bundler.build.pack import DEFAULT_LEVEL, Member
from bundler.build.signing import SigningKey
from bundler.digest import Digest
from bundler.format.delta import Patch
from bundler.format.head import Head, WheelEntry
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.kinds import KIND_NAMES, KindName
from bundler.format.models import ModelEntry


@dataclass(kw_only=True)
class BuildOptions:
    output: Path
    lock_file: Path | None = None
    level: int = DEFAULT_LEVEL
    split: int | None = None
    kinds: tuple[KindName, ...] = KIND_NAMES      # what to bundle: --images-only, --wheels-only, --models-only
    force: bool = False
    restorer: bool = True                # write OUT.pyz, the one-file restorer (--no-restorer: not)
    exact_images: bool = False           # carry images as their registry serves them (a profile's exact: wins)
    since: tuple[Path, ...] = ()         # a delta: earlier bundles or site inventories (since.py)
    sign: SigningKey | None = None       # signs bundle.json: the signature follows it, and OUT.sig beside


@dataclass(kw_only=True)
class BuildResult:
    paths: list[Path]
    head: Head
    size: int
    fetch_seconds: float = 0.0   # locking and fetching into the cache
    pack_seconds: float = 0.0    # writing the bundle from the cache
    restorer: Path | None = None  # OUT.pyz
    restorer_signature: Path | None = None   # OUT.pyz.sig, with --sign
    stats: dict[KindName, FetchStats] = field(default_factory=dict)   # each kind's fetch


@dataclass(kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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

    kind: KindName
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


@dataclass(kw_only=True)
class Fetched:
    """What a kind's fetch gives the bundle."""

    members: list[Member]
    # its sections of bundle.json
    images: tuple[ImageEntry, ...] = ()
    indexes: tuple[IndexEntry, ...] = ()
    wheels: tuple[WheelEntry, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    stats: FetchStats = field(default_factory=FetchStats)
    created: int | None = None        # the newest date the content itself carries (an image's config)
    notes: list[str] = field(default_factory=list)
    needs: DeltaNeeds = field(default_factory=lambda: DeltaNeeds())   # a delta: its part of the delta section
    contents: tuple[ImageContents, ...] = ()   # what each image holds inside, for the SBOM


def combined(parts: Sequence[Fetched]) -> Fetched:
    """Several kinds' fetches as one, in their order: what the bundle's head and members are made of."""
    dates = [p.created for p in parts if p.created is not None]
    return Fetched(members=[m for p in parts for m in p.members], images=tuple(e for p in parts for e in p.images),
                   indexes=tuple(e for p in parts for e in p.indexes), wheels=tuple(e for p in parts for e in p.wheels),
                   models=tuple(e for p in parts for e in p.models), created=max(dates) if dates else None,
                   notes=[n for p in parts for n in p.notes], needs=sum((p.needs for p in parts), DeltaNeeds()),
                   contents=tuple(c for p in parts for c in p.contents))


@dataclass(frozen=True, kw_only=True)
class Item:
    """One thing a bundle or a lock carries, as ``bundler diff`` compares two of them: the same
    ``key`` for the same platform on both sides is the same thing, changed or not."""

    key: str                      # what stays across versions: an image's name, a wheel's project, a model's
                                  # repository and revision (hf:ORG/NAME@main)
    version: str                  # what changes: a manifest digest, a version, a model's commit
    size: int | None = None       # its bytes in the bundle; None from a lock, which does not say
    detail: str = ""              # shown beside it: a wheel's file name
    platforms: tuple[str, ...] = ()   # the platforms it serves (a pure-Python wheel: several); (): any
    sha256: str = ""              # hex, where the side knows the bytes: a wheel file's, a model's listing (each
                                  # file's path and sha256): new bytes under the same version are a change too
    parts: dict[str, int] = field(default_factory=dict)   # pieces items may share (an image's layers), by digest


@dataclass(frozen=True, kw_only=True)
class DeltaNeeds:
    """A delta's part of bundle.json's delta section, from one kind: what the site must hold already."""

    layers: tuple[Digest, ...] = ()      # layer blobs
    wheels: tuple[str, ...] = ()         # sha256 (hex)
    models: tuple[str, ...] = ()         # sha256 (hex) of model files
    patches: tuple[Patch, ...] = ()      # rebuilt layers carried as patches

    def __add__(self, other: DeltaNeeds) -> DeltaNeeds:
        return DeltaNeeds(layers=self.layers + other.layers, wheels=self.wheels + other.wheels,
                          models=self.models + other.models, patches=self.patches + other.patches)
