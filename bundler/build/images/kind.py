"""Container images on the connected side: pinned to manifest digests, fetched layer by layer into
the cache, carried as one OCI image layout (restore/images/ puts them into docker, a registry or
containerd)."""

from __future__ import annotations

from bundler.build.context import BuildContext
from bundler.build.delta import images_delta
from bundler.build.images.layers import LayerFrames
from bundler.build.images.layout import layout
from bundler.build.images.pull import Registries, contents_of, fetch_images, lock_images, plan_images
from bundler.build.lockfile import Lock
from bundler.build.options import BuildOptions, Fetched, FetchPlan, FetchStats, Item
from bundler.build.profile import Profile
from bundler.format.head import Head
from bundler.format.inventory import Site
from bundler.format.paths import blob_path, layout_path
from bundler.progress import waiting


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

    def pin(self, profile: Profile, ctx: BuildContext) -> dict:
        registries = Registries(ctx.mirrors, ctx.fallback)
        count = len(profile.images)
        with waiting(ctx.progress, f"pinning {count} image{'s' if count > 1 else ''}"):
            return {"images": tuple(lock_images(profile.images, profile.target.platforms, registries))}

    def plan(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,
             site: Site | None = None) -> FetchPlan:
        pieces = plan_images(list(lock.images), Registries(ctx.mirrors, ctx.fallback),
                             LayerFrames(ctx.cache, options.level), exact=_exact(profile, options), site=site)
        return FetchPlan(self.name, pieces, cache_factor=2.0)

    def fetch(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,
              site: Site | None = None) -> Fetched:
        frames, stats = LayerFrames(ctx.cache, options.level), FetchStats()
        exact = _exact(profile, options)
        images = fetch_images(list(lock.images), Registries(ctx.mirrors, ctx.fallback), frames, jobs=ctx.jobs,
                              progress=ctx.progress, stats=stats, stop=ctx.cancel, exact=exact, site=site)
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
        return Fetched(members=members, images=entries, indexes=indexes, stats=stats, created=created, notes=notes,
                       contents=contents)

    def delta(self, fetched: Fetched, site: Site, ctx: BuildContext) -> Fetched:
        return images_delta(fetched, site, ctx)

    def in_head(self, head: Head) -> bool:
        return bool(head.images)

    def items(self, head: Head) -> list[Item]:
        sizes = head.member_sizes()
        return [Item(key=_image_key(image.name), version=image.digest, size=image.size, detail=image.platform,
                     platforms=(image.platform,),
                     parts={d: sizes.get(layout_path(blob_path(d)), 0) for d in image.layer_digests})
                for image in head.images]

    def lock_items(self, lock: Lock) -> list[Item]:
        return [Item(key=_image_key(image.name), version=image.digest, size=None,
                     detail=image.platform, platforms=(image.platform,)) for image in lock.images]
