"""What a build will fetch, known before it downloads anything: each kind's pieces (layers, wheels),
their sizes (from the manifests and the index pages), what the cache has already, and where the
rest comes from. ``build --dry-run`` shows it; ``build`` checks the free space it calls for first,
so that a full disk is found before hours of downloading, not after."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from bundler.build.context import BuildContext
from bundler.build.kinds import Kind
from bundler.build.lockfile import Lock
from bundler.build.options import BuildOptions, FetchPlan
from bundler.build.profile import Profile
from bundler.errors import DiskError
from bundler.files import free_space, human_size
from bundler.format.inventory import Site
from bundler.parallel import run_parallel
from bundler.progress import waiting


@dataclass(kw_only=True)
class BuildPlan:
    pinned: Lock
    kinds: list[Kind]                # those the lock pins, in KINDS' order
    fetches: list[FetchPlan]         # one per kind, in the same order
    delta: bool = False              # planned against a site (build --since)
    fetch_bytes: int = field(init=False)    # to download
    unknown: int = field(init=False)        # pieces to download whose size no source gave
    # The bundle's expected size: every piece as it comes (a layer's zstd frame is about the size of its
    # gzip download; wheels are zip files already), pieces of unknown size not counted; for a delta,
    # not the pieces its site holds (a rebuilt layer counted whole: its patch is known only once made).
    bundle_bytes: int = field(init=False)
    held_bytes: int = field(init=False)     # a delta's: what the site holds, left out of the bundle
    cache_bytes: int = field(init=False)    # what fetching adds to the cache at its fullest

    def __post_init__(self) -> None:
        self.fetch_bytes = sum(f.fetch_bytes for f in self.fetches)
        self.unknown = sum(f.unknown for f in self.fetches)
        self.held_bytes = sum(f.held_bytes for f in self.fetches)
        self.bundle_bytes = self.fetch_bytes + sum(f.cached_bytes for f in self.fetches) - self.held_bytes
        self.cache_bytes = int(sum(f.cache_factor * f.fetch_bytes for f in self.fetches))

    def as_dict(self) -> dict:
        return {"fetch_bytes": self.fetch_bytes, "bundle_bytes": self.bundle_bytes, "cache_bytes": self.cache_bytes,
                "held_bytes": self.held_bytes, "delta": self.delta, "unknown_sizes": self.unknown,
                "kinds": [f.as_dict() for f in self.fetches]}


def plan_fetch(profile: Profile, pinned: Lock, ctx: BuildContext, *, kinds: Collection[Kind],
               options: BuildOptions, site: Site | None = None) -> BuildPlan:
    """Every kind's plan at the same time (registries and indexes are different places); ``site``, a
    delta's, marks the pieces it holds."""
    found: dict[str, FetchPlan] = {}

    def one(kind: Kind, _stop: object) -> None:   # the kinds watch ctx.cancel themselves
        with waiting(ctx.progress, f"looking up the {kind.name} to fetch"):   # manifests, configs, index pages
            found[kind.name] = kind.plan(profile, pinned, ctx, options=options, site=site)

    run_parallel(kinds, one, max(1, len(kinds)), ctx.cancel)
    return BuildPlan(pinned=pinned, kinds=list(kinds), fetches=[found[kind.name] for kind in kinds],
                     delta=site is not None)


def _device(folder: Path) -> int | None:
    try:
        return os.stat(folder).st_dev
    except OSError:
        return None


def check_free_space(plan: BuildPlan, output_folder: Path, cache_root: Path) -> None:
    """DiskError naming the folder and the sizes when the cache's or the output's filesystem cannot hold
    what the plan calls for (both together when they are one filesystem)."""
    unknown = f" and {plan.unknown} files of unknown size" if plan.unknown else ""
    cache_need, out_need = plan.cache_bytes, plan.bundle_bytes
    if _device(output_folder) is not None and _device(output_folder) == _device(cache_root):
        free = free_space(output_folder)
        if free < cache_need + out_need:
            raise DiskError(f"{output_folder}: the build needs about {human_size(cache_need + out_need)} "
                            f"({human_size(cache_need)} to fetch into the cache {cache_root}, "
                            f"{human_size(out_need)} for the bundle{unknown}), only {human_size(free)} is free")
        return
    free = free_space(cache_root)
    if free < cache_need:
        raise DiskError(f"{cache_root}: fetching needs about {human_size(cache_need)} in the cache{unknown}, only "
                        f"{human_size(free)} is free")
    free = free_space(output_folder)
    if free < out_need:
        raise DiskError(f"{output_folder}: the bundle needs about {human_size(out_need)}{unknown}, only "
                        f"{human_size(free)} is free")
