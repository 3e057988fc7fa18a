"""Container images: pinned to manifest digests, fetched layer by layer into the cache, carried as
one OCI image layout, restored into the docker engine, a registry or containerd."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.kinds import Fetched, FetchStats

if TYPE_CHECKING:
    from bundler.bundle import BuildOptions
    from bundler.context import Context
    from bundler.format import Head
    from bundler.loaders import ImagesRestorer
    from bundler.lockfile import Lock
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions


class Images:
    name = "images"

    def in_profile(self, profile: Profile) -> bool:
        return bool(profile.images)

    def pinned(self, lock: Lock) -> bool:
        return bool(lock.images)

    def pin(self, profile: Profile, ctx: Context) -> dict:
        from bundler.images import Registries, lock_images
        registries = Registries(ctx.mirrors, ctx.fallback)
        return {"images": tuple(lock_images(profile.images, profile.target.platforms, registries))}

    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched:
        from bundler.images import Registries, contents_of, fetch_images, layout
        from bundler.layers import LayerFrames
        frames, stats = LayerFrames(ctx.cache, options.level), FetchStats()
        exact = {str(spec.image) for spec in profile.images
                 if (spec.exact if spec.exact is not None else options.exact_images) and spec.source == "registry"}
        images = fetch_images(list(lock.images), Registries(ctx.mirrors, ctx.fallback), frames, ctx.jobs,
                              ctx.progress, stats=stats, stop=ctx.cancel, exact=exact)
        unpacked = [i for i in images if not i.exact and i.locked.source == "registry"]
        if unpacked:
            count = len({i.locked.name for i in unpacked})
            ctx.progress.note(f"{count} images carried unpacked (the smallest bundle): a registry restored from it "
                              "serves new manifest digests; --exact-images (or exact: true in the profile) keeps the "
                              "upstream ones, for manifests pinned by digest")
        members, entries, indexes = layout(images, frames)
        created = max((i.created for i in images if i.created is not None), default=None)
        contents = tuple(contents_of(image, frames, ctx.cancel) for image in images)
        notes = [f"{image.locked.ref}: {note}" for image, found in zip(images, contents) for note in found.notes]
        return Fetched(members, {"images": entries, "indexes": indexes}, stats, created, notes, contents)

    def in_head(self, head: Head) -> bool:
        return bool(head.images)

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> ImagesRestorer:
        from bundler.loaders import ImagesRestorer, loader_for
        from bundler.restore import platform_for
        if options.registry:   # a registry takes every platform, and the index that names them
            return ImagesRestorer(head, loader_for(options, ctx), head.images, head.indexes)
        return ImagesRestorer(head, loader_for(options, ctx), head.images_for(platform_for(head, options.platform)))
