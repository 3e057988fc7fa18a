"""Models: Hugging Face and ModelScope repositories, pinned file by file to sha256s, fetched through
the hubs' mirrors into the cache, carried each file once, restored where the hubs' clients look
(or as plain folders). A bundle that carries them is format 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.kinds import Fetched, FetchStats

if TYPE_CHECKING:
    from bundler.bundle import BuildOptions
    from bundler.context import Context
    from bundler.format import Head
    from bundler.lockfile import Lock
    from bundler.modelcache import ModelsRestorer
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions


class Models:
    name = "models"

    def in_profile(self, profile: Profile) -> bool:
        return bool(profile.models)

    def pinned(self, lock: Lock) -> bool:
        return bool(lock.models)

    def pin(self, profile: Profile, ctx: Context) -> dict:
        from bundler.models import ModelFetcher, lock_models
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        return {"models": lock_models(profile.models, fetcher, ctx.jobs, ctx.progress)}

    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched:  # noqa: ARG002 - the Kind interface
        from bundler.models import ModelFetcher, fetch_models
        stats = FetchStats()
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        members, entries = fetch_models(lock.models, fetcher, ctx.jobs, ctx.progress, stats)
        return Fetched(members, {"models": entries}, stats)

    def in_head(self, head: Head) -> bool:
        return bool(head.models)

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> ModelsRestorer:
        from bundler.modelcache import ModelsRestorer
        return ModelsRestorer(head, options, ctx)
