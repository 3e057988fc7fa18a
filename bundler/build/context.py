"""The connected side's run context: the effective mirrors, the shared cache, the run's memory of
which endpoints keep failing, and the index pages it read, beside what every run has (context.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from bundler.build.cache import Cache
from bundler.build.mirrors import CatalogFallback, Mirrors, effective_mirrors
from bundler.build.profile import Profile
from bundler.context import DEFAULT_RETRY, Context, RetryPolicy
from bundler.files import human_size
from bundler.net.endpoints import Fallback
from bundler.progress import NULL, Progress

DEFAULT_JOBS = 4     # parallel downloads


@dataclass(kw_only=True)
class BuildContext(Context):
    jobs: int = DEFAULT_JOBS
    mirrors: Mirrors = field(default_factory=Mirrors)
    cache_dir: Path | None = None          # default: the user cache dir
    fallback: Fallback | None = None       # default: a fresh one with ``policy``
    pages: dict = field(default_factory=dict)    # index pages this run read: a plan's reading serves its fetch

    def __post_init__(self) -> None:
        if self.fallback is None:
            self.fallback = CatalogFallback(self.policy, note=self.progress.note)

    @functools.cached_property
    def cache(self) -> Cache:
        """The shared content-addressed cache, created on first use."""
        cache = Cache(self.cache_dir)
        if cache.reclaimed.entries:
            self.progress.note(f"removed {human_size(cache.reclaimed.bytes)} of temp files that killed runs left in "
                               f"{cache.root / 'tmp'}")
        return cache

    @classmethod
    def create(cls, profile: Profile | None = None, *, mirrors_file: Path | None = None,
               cache_dir: Path | None = None, policy: RetryPolicy = DEFAULT_RETRY, progress: Progress = NULL,
               jobs: int = DEFAULT_JOBS, user_mirrors: Path | None = None) -> BuildContext:
        mirrors = effective_mirrors(mirrors_file, profile.mirrors if profile else None, user_mirrors)
        return cls(progress=progress, policy=policy, jobs=jobs, mirrors=mirrors, cache_dir=cache_dir)
