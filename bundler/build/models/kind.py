"""Models on the connected side: Hugging Face and ModelScope repositories, pinned file by file to
sha256s, fetched through the hubs' mirrors into the cache, carried each file once (restore/models.py
lays them out where the hubs' clients look). A bundle that carries them is format 2."""

from __future__ import annotations

from dataclasses import replace

from bundler.build.context import BuildContext
from bundler.build.delta import drop_members
from bundler.build.lockfile import Lock
from bundler.build.models.fetch import ModelFetcher, fetch_models, lock_models
from bundler.build.options import BuildOptions, Fetched, FetchPlan, FetchStats, Item, Planned
from bundler.build.profile import Profile
from bundler.digest import Digest
from bundler.format.head import Head
from bundler.format.inventory import Site
from bundler.format.models import ModelFile
from bundler.format.paths import MODELS_DIR


class Models:
    name = "models"
    parts = "files"

    def in_profile(self, profile: Profile) -> bool:
        return bool(profile.models)

    def pinned(self, lock: Lock) -> bool:
        return bool(lock.models)

    def pin(self, profile: Profile, ctx: BuildContext) -> dict:
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        return {"models": lock_models(profile.models, fetcher, ctx.jobs, progress=ctx.progress)}

    def plan(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,  # noqa: ARG002 - the Kind interface
             site: Site | None = None) -> FetchPlan:
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel) if lock.models else None
        pieces: dict[str, Planned] = {}    # a file two repositories share, once (as fetch_models does)
        for model in lock.models:
            source = ctx.fallback.serving(fetcher.endpoints(model.spec))
            for file in model.files:
                cached = ctx.cache.has(Digest.from_hex(file.sha256))
                held = site is not None and site.has_model_file(file.sha256)
                pieces.setdefault(file.sha256, Planned(name=f"{model.spec.repo}/{file.path}", size=file.size,
                                                       cached=cached,
                                                       source="cache" if cached else source, digest=file.sha256,
                                                       held=held))
        return FetchPlan(self.name, list(pieces.values()))

    def fetch(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,  # noqa: ARG002 - the Kind interface
              site: Site | None = None) -> Fetched:  # noqa: ARG002 - the Kind interface
        stats = FetchStats()
        fetcher = ModelFetcher(ctx.mirrors, ctx.fallback, ctx.cache, ctx.cancel)
        members, entries = fetch_models(lock.models, fetcher, ctx.jobs, progress=ctx.progress, stats=stats)
        return Fetched(members=members, models=entries, stats=stats)

    def delta(self, fetched: Fetched, site: Site, ctx: BuildContext) -> Fetched:  # noqa: ARG002 - the Kind interface
        held = {m.path: m.sha256 for m in fetched.members
                if m.path.startswith(f"{MODELS_DIR}/") and site.has_model_file(m.sha256)}
        reduced, held_files = drop_members(fetched, held)
        return replace(reduced, needs=replace(reduced.needs, models=held_files))

    def in_head(self, head: Head) -> bool:
        return bool(head.models)

    def items(self, head: Head) -> list[Item]:
        return [Item(key=m.name, version=m.commit or m.revision, size=m.size, detail=m.repo_type,
                     sha256=_listing_sha256(m.files), parts={f.sha256: f.size for f in m.files}) for m in head.models]

    def lock_items(self, lock: Lock) -> list[Item]:
        return [Item(key=str(m.spec), version=m.revision, size=sum(f.size for f in m.files),
                     detail=m.spec.repo_type, sha256=_listing_sha256(m.files),
                     parts={f.sha256: f.size for f in m.files}) for m in lock.models]


def _listing_sha256(files: tuple[ModelFile, ...]) -> str:
    """One sha256 for a repository's files, their paths and contents: what changes when any of them
    does, whatever its revision is called (ModelScope names no commit)."""
    return Digest.of("".join(f"{f.path}\0{f.sha256}\n" for f in sorted(files, key=lambda f: f.path)).encode()).hex
