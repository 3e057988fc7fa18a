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
    from bundler.inventory import Inventory, InventoryOptions, Site
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

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:  # noqa: ARG002 - the Kind interface
        """The model files of earlier restores' Hugging Face and ModelScope caches (DEST/huggingface,
        DEST/modelscope), by sha256."""
        from bundler import __version__
        from bundler.files import sha256_file
        from bundler.inventory import Inventory, restored_folders
        from bundler.modelcache import site_model_files
        hf, modelscope = restored_folders(options.dests, "huggingface"), restored_folders(options.dests, "modelscope")
        files = sorted({sha256_file(path) for path in site_model_files(hf, modelscope, [])})
        return Inventory(f"bundler {__version__}", tuple(f"models {f}" for f in hf + modelscope), models=tuple(files))

    def delta(self, fetched: Fetched, site: Site, ctx: Context) -> Fetched:  # noqa: ARG002 - the Kind interface
        from bundler.delta import drop_members
        from bundler.format import MODELS_DIR
        held = {m.path: m.sha256 for m in fetched.members
                if m.path.startswith(f"{MODELS_DIR}/") and site.has_model_file(m.sha256)}
        return drop_members(fetched, held, "models")
