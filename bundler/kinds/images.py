"""Container images: pinned to manifest digests, fetched layer by layer into the cache, carried as
one OCI image layout, restored into the docker engine, a registry or containerd."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.kinds import Fetched, FetchPlan, FetchStats, Item

if TYPE_CHECKING:
    from bundler.bundle import BuildOptions
    from bundler.context import Context
    from bundler.format import Head
    from bundler.inventory import Inventory, InventoryOptions, Site
    from bundler.loaders import ImagesRestorer
    from bundler.lockfile import Lock
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions


def _exact(profile: Profile, options: BuildOptions) -> set[str]:
    """The images carried exact: as the registry serves them (the profile's exact:, or --exact-images)."""
    return {str(spec.image) for spec in profile.images
            if (spec.exact if spec.exact is not None else options.exact_images) and spec.source == "registry"}


def _image_key(name: str) -> str:
    """An image's name without the digest it was pinned to: what stays across versions."""
    return name.split("@")[0]


class Images:
    name = "images"
    parts = "layers"

    def in_profile(self, profile: Profile) -> bool:
        return bool(profile.images)

    def pinned(self, lock: Lock) -> bool:
        return bool(lock.images)

    def pin(self, profile: Profile, ctx: Context) -> dict:
        from bundler.images import Registries, lock_images
        registries = Registries(ctx.mirrors, ctx.fallback)
        return {"images": tuple(lock_images(profile.images, profile.target.platforms, registries))}

    def plan(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions,
             site: Site | None = None) -> FetchPlan:
        from bundler.images import Registries, plan_images
        from bundler.layers import LayerFrames
        pieces = plan_images(list(lock.images), Registries(ctx.mirrors, ctx.fallback),
                             LayerFrames(ctx.cache, options.level), _exact(profile, options), site)
        return FetchPlan(self.name, pieces, cache_factor=2.0)

    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched:
        from bundler.image_layout import layout
        from bundler.images import Registries, contents_of, fetch_images
        from bundler.layers import LayerFrames
        frames, stats = LayerFrames(ctx.cache, options.level), FetchStats()
        exact = _exact(profile, options)
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
        return Fetched(members, {"images": entries, "indexes": indexes}, stats, created, notes, contents=contents)

    def in_head(self, head: Head) -> bool:
        return bool(head.images)

    def items(self, head: Head) -> list[Item]:
        from bundler.format import blob_path, layout_path
        sizes = head.member_sizes()
        return [Item(_image_key(image.name), image.digest, image.size, image.platform,
                     {d: sizes.get(layout_path(blob_path(d)), 0) for d in image.layer_digests})
                for image in head.images]

    def lock_items(self, lock: Lock) -> list[Item]:
        return [Item(_image_key(image.name), image.digest, None, image.platform) for image in lock.images]

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> ImagesRestorer:
        from bundler.loaders import ImagesRestorer, loader_for
        from bundler.restore import platform_for
        if options.registry:   # a registry takes every platform, and the index that names them
            return ImagesRestorer(head, loader_for(options, ctx), head.images, head.indexes)
        return ImagesRestorer(head, loader_for(options, ctx), head.images_for(platform_for(head, options.platform)))

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:
        from bundler.site_images import images_inventory
        return images_inventory(options, ctx)

    def delta(self, fetched: Fetched, site: Site, ctx: Context) -> Fetched:
        from bundler.delta import images_delta
        return images_delta(fetched, site, ctx)
