"""Models: Hugging Face and ModelScope repositories, pinned file by file to sha256s, fetched through
the hubs' mirrors into the cache, carried each file once, restored where the hubs' clients look
(or as plain folders). A bundle that carries them is format 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.kinds import Fetched, FetchPlan, FetchStats, Item, Planned

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
    parts = "files"

    def in_profile(self, profile: Profile) -> bool:
        return bool(profile.models)

    def pinned(self, lock: Lock) -> bool:
        return bool(lock.models)

    def pin(self, profile: Profile, ctx: Context) -> dict:
        from bundler.models import ModelFetcher, lock_models
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        return {"models": lock_models(profile.models, fetcher, ctx.jobs, ctx.progress)}

    def plan(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions,  # noqa: ARG002 - the Kind interface
             site: Site | None = None) -> FetchPlan:
        from bundler.format import Digest
        from bundler.models import ModelFetcher
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel) if lock.models else None
        pieces: dict[str, Planned] = {}    # a file two repositories share, once (as fetch_models does)
        for model in lock.models:
            source = ctx.fallback.serving(fetcher.endpoints(model.spec))
            for file in model.files:
                cached = ctx.cache.has(Digest.from_hex(file.sha256))
                held = site is not None and site.has_model_file(file.sha256)
                pieces.setdefault(file.sha256, Planned(f"{model.spec.repo}/{file.path}", file.size, cached,
                                                       "cache" if cached else source, file.sha256, held))
        return FetchPlan(self.name, list(pieces.values()))

    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched:  # noqa: ARG002 - the Kind interface
        from bundler.models import ModelFetcher, fetch_models
        stats = FetchStats()
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        members, entries = fetch_models(lock.models, fetcher, ctx.jobs, ctx.progress, stats)
        return Fetched(members, {"models": entries}, stats)

    def in_head(self, head: Head) -> bool:
        return bool(head.models)

    def items(self, head: Head) -> list[Item]:
        return [Item(f"{m.hub}:{m.repo}", m.commit or m.revision, m.size, m.repo_type,
                     {f.sha256: f.size for f in m.files}) for m in head.models]

    def lock_items(self, lock: Lock) -> list[Item]:
        return [Item(f"{m.spec.hub}:{m.spec.repo}", m.revision, sum(f.size for f in m.files), m.spec.repo_type,
                     {f.sha256: f.size for f in m.files}) for m in lock.models]

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
