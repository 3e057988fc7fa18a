"""What one run of a verb works with: how it reports progress, its retry policy and time limits, the
flag that cancels it; and, on the connected side, the effective mirrors, the cache and the run's
memory of which endpoints keep failing. The CLI makes one per command; tests make their own, with
their own policy (tests/testbed/policy.py)."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.mirrors import DEFAULT_RETRY, Fallback, Mirrors, RetryPolicy
from bundler.progress import NULL, Progress

if TYPE_CHECKING:
    from bundler.cache import Cache
    from bundler.profile import Profile

DEFAULT_JOBS = 4     # parallel downloads


@dataclass
class Context:
    progress: Progress = NULL
    policy: RetryPolicy = DEFAULT_RETRY
    cancel: threading.Event = field(default_factory=threading.Event)   # set: every worker stops at once
    jobs: int = DEFAULT_JOBS
    mirrors: Mirrors = field(default_factory=Mirrors)
    cache_dir: Path | None = None          # default: the user cache dir
    fallback: Fallback | None = None       # default: a fresh one with ``policy``
    pages: dict = field(default_factory=dict)    # index pages this run read: a plan's reading serves its fetch

    def __post_init__(self) -> None:
        if self.fallback is None:
            self.fallback = Fallback(self.policy, note=self.progress.note)

    @functools.cached_property
    def cache(self) -> Cache:
        """The shared content-addressed cache, created on first use (restore never uses it)."""
        from bundler.cache import Cache
        from bundler.files import human_size
        cache = Cache(self.cache_dir)
        if cache.reclaimed.entries:
            self.progress.note(f"removed {human_size(cache.reclaimed.bytes)} of temp files that killed runs left in "
                               f"{cache.root / 'tmp'}")
        return cache

    @classmethod
    def create(cls, profile: Profile | None = None, mirrors_file: Path | None = None,
               cache_dir: Path | None = None, policy: RetryPolicy = DEFAULT_RETRY, progress: Progress = NULL,
               jobs: int = DEFAULT_JOBS, user_mirrors: Path | None = None) -> Context:
        from bundler.mirrors import effective_mirrors
        mirrors = effective_mirrors(mirrors_file, profile.mirrors if profile else None, user_mirrors)
        return cls(progress, policy, jobs=jobs, mirrors=mirrors, cache_dir=cache_dir)
