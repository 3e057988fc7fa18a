"""What one run of a verb works with: effective mirrors, the cache, the fallback memory, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bundler.cache import Cache
from bundler import mirrors as mirror_policy
from bundler.mirrors import Fallback, Mirrors, RetryPolicy, effective_mirrors
from bundler.profile import Profile
from bundler.progress import NULL, Progress

DEFAULT_JOBS = 4


@dataclass
class Context:
    mirrors: Mirrors
    cache: Cache
    fallback: Fallback
    progress: Progress = NULL
    jobs: int = DEFAULT_JOBS
    docker_config: Path | None = None                 # default: $DOCKER_CONFIG or ~/.docker
    docker: Callable[[], object] | None = None        # engine factory for images with source: docker
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, profile: Profile | None = None, mirrors_file: Path | None = None, cache_dir: Path | None = None,
               policy: RetryPolicy | None = None, progress: Progress = NULL, jobs: int = DEFAULT_JOBS,
               user_mirrors: Path | None = None) -> Context:
        mirrors = effective_mirrors(mirrors_file, profile.mirrors if profile else None, user_mirrors)
        policy = policy or mirror_policy.DEFAULT_RETRY   # read now: tests swap in FAST_RETRY
        return cls(mirrors, Cache(cache_dir), Fallback(policy, note=progress.note), progress, jobs)
