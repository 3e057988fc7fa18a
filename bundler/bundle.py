"""The bundle: what bundle.json says, and the build, inspect and verify verbs.

A bundle is one zstd-compressed pax tar (see archive.py): bundle.json first, then the images as
one OCI layout under ``images/``, ``requirements.lock`` and the wheels under ``wheels/``. The same
lock and inputs give a byte-identical bundle: members are sorted, timestamps come from the lock,
owners are fixed, and bundle.json holds no wall-clock time.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bundler import __version__
from bundler.archive import (DEFAULT_LEVEL, Member, check_member_path, existing_outputs, free_space, iter_members, locate, read_head, write_bundle)
from bundler.context import Context
from bundler.errors import DiskError, InputError, IntegrityError
from bundler.images import FetchStats, FetchedImage, Registries, fetch_images, layout_members
from bundler.lockfile import Lock, check_lock_fits, dump_lock, lock, read_lock
from bundler.parallel import both
from bundler.profile import Profile
from bundler.resolve import build_wheel, default_index_url
from bundler.wheels import Wheel, WheelFetcher, WheelStats, add_hashes, fetch_wheels, sources_for

FORMAT = 1
REQUIREMENTS = "requirements.lock"
WHEELS_DIR = "wheels"
# Expected bundle size per byte of uncompressed layer: zstd -3 leaves 25-45% of real layers.
LAYER_RATIO_ESTIMATE = 0.5


@dataclass
class BuildOptions:
    output: Path
    lock_file: Path | None = None
    level: int | None = DEFAULT_LEVEL
    split: int | None = None
    images: bool = True
    wheels: bool = True
    force: bool = False


@dataclass
class BuildResult:
    paths: list[Path]
    head: dict
    size: int
    images: FetchStats = field(default_factory=FetchStats)
    wheels: WheelStats = field(default_factory=WheelStats)
    fetch_seconds: float = 0.0   # locking and fetching into the cache
    pack_seconds: float = 0.0    # writing the bundle from the cache


def _check_output(options: BuildOptions) -> None:
    folder = options.output.parent
    if not folder.is_dir():
        raise InputError(f"{options.output}: folder {folder} does not exist")
    taken = existing_outputs(options.output)
    if taken and not options.force:
        raise InputError(f"{taken[0]}: already exists (use --force to replace it)")


def build(profile: Profile, ctx: Context, options: BuildOptions) -> BuildResult:
    """Fetch everything the profile (or its lock) names, then stream it into one bundle."""
    if options.level is None:
        options.level = DEFAULT_LEVEL
    if not 1 <= options.level <= 22:
        raise InputError(f"--level {options.level}: zstd levels run from 1 to 22")
    _check_output(options)
    started = time.monotonic()
    if options.lock_file is not None:
        pinned = read_lock(options.lock_file)
        check_lock_fits(pinned, profile, options.lock_file)
        pinned = _complete(pinned, profile, ctx, options)
    else:
        pinned = lock(profile, ctx, images=options.images, wheels=options.wheels)
    result = BuildResult([], {}, 0)

    # Images and wheels come from different places: fetch them at the same time.
    def images_part() -> list[FetchedImage]:
        if not (options.images and pinned.images):
            return []
        registries = Registries(ctx.mirrors, ctx.fallback, ctx.docker_config)
        return fetch_images(list(pinned.images), registries, ctx.cache, ctx.jobs, ctx.progress, ctx.docker,
                            result.images, options.level)

    def wheels_part() -> tuple[list[Wheel], str | None]:
        if not (options.wheels and pinned.requirements is not None):
            return [], None
        return _fetch_wheels(profile, pinned, ctx, result.wheels)

    images, (wheels, requirements) = both(images_part, wheels_part)
    result.fetch_seconds = time.monotonic() - started

    members, manifests = layout_members(images, ctx.cache, options.level) if images else ([], [])
    for wheel in wheels:
        digest = f"sha256:{wheel.sha256}"
        members.append(Member(f"{WHEELS_DIR}/{wheel.filename}", wheel.size, wheel.sha256,
                              file=ctx.cache.path(digest), verified=digest in ctx.cache.fresh))
    if requirements is not None:
        data = requirements.encode()
        members.append(Member(REQUIREMENTS, len(data), hashlib.sha256(data).hexdigest(), data=data))
    members.sort(key=lambda m: m.path)

    head = make_head(profile, pinned, images, manifests, wheels, members, options)
    _check_space(options.output.parent, images, wheels, members)
    total = sum(m.size for m in members)
    started = time.monotonic()
    with ctx.progress.bar("packing", total) as bar:
        paths = write_bundle(options.output, _json(head), members, pinned.created, options.level, options.split,
                             bar.update)
    if options.force:  # volumes of an older, longer bundle would read as extra volumes of this one
        for stale in existing_outputs(options.output):
            if stale not in paths and not stale.name.endswith(".sha256"):
                stale.unlink()
        if options.split is None:
            options.output.with_name(options.output.name + ".sha256").unlink(missing_ok=True)
    result.pack_seconds = time.monotonic() - started
    result.paths, result.head = paths, head
    result.size = sum(p.stat().st_size for p in paths)
    return result


def _complete(pinned: Lock, profile: Profile, ctx: Context, options: BuildOptions) -> Lock:
    """A lock made with --images-only or --wheels-only pins half a profile: pin the other half now."""
    images = options.images and bool(profile.images) and not pinned.images
    wheels = options.wheels and profile.python is not None and pinned.requirements is None
    if not (images or wheels):
        return pinned
    extra = lock(profile, ctx, images=images, wheels=wheels)
    missing = " and ".join(what for what, flag in (("images", images), ("requirements", wheels)) if flag)
    ctx.progress.note(f"{options.lock_file} pins no {missing}; resolved them now")
    return replace(pinned, images=extra.images if images else pinned.images,
                   requirements=extra.requirements if wheels else pinned.requirements)


def _fetch_wheels(profile: Profile, pinned: Lock, ctx: Context, stats: WheelStats) -> tuple[list[Wheel], str]:
    target = pinned.target
    spec = profile.python
    pypi = ctx.mirrors.for_pypi()
    sources = sources_for(pypi, default_index_url, spec.extra_index_urls if spec else (),
                          spec.find_links if spec else ())
    index = pypi[0] if pypi else None

    def builder(sdist: Path, filename: str, pin, wheel_target) -> Path:  # noqa: ANN001
        return build_wheel(sdist, filename, pin, wheel_target, index, ctx.cache)

    fetcher = WheelFetcher(target, sources, ctx.fallback, ctx.cache, builder)
    wheels = fetch_wheels(pinned.pins(), fetcher, ctx.jobs, ctx.progress, stats)
    built = {w.name: [w.sha256] for w in wheels if w.built}
    for name in built:
        ctx.progress.note(f"{name}: built a wheel from its sdist (pure Python)")
    return wheels, add_hashes(pinned.requirements, built)


def _check_space(folder: Path, images: list[FetchedImage], wheels: list[Wheel], members: list[Member]) -> None:
    layers = sum(layer.size for image in images for layer in image.layers)
    other = sum(m.size for m in members) - layers
    needed = int(layers * LAYER_RATIO_ESTIMATE) + other
    free = free_space(folder)
    if free < needed:
        raise DiskError(f"{folder}: the bundle needs about {human_size(needed)}, only {human_size(free)} is free")


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _json(data: dict) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def make_head(profile: Profile, pinned: Lock, images: list[FetchedImage], manifests: list[dict],
              wheels: list[Wheel], members: list[Member], options: BuildOptions) -> dict:
    layer_sizes = {}
    for image in images:
        for layer in image.layers:
            layer_sizes[layer.diff_id] = layer.size
    return {
        "format": FORMAT,
        "tool": f"bundler {__version__}",
        "created": pinned.created,
        "profile": {"name": profile.name, "description": profile.description, "check": profile.check,
                    "source": profile.source_text},
        "target": {"platform": pinned.platform, "python": pinned.python},
        "lock": dump_lock(pinned),
        "split": options.split,
        "images": [{
            "ref": image.locked.ref, "name": image.locked.name, "digest": image.locked.digest,
            "index_digest": image.locked.index_digest, "platform": image.locked.platform,
            "source": image.locked.source, "id": image.config, "tags": list(image.repo_tags),
            "layers": len(image.layers), "size": sum(layer.size for layer in image.layers),
            "layer_digests": [layer.diff_id for layer in image.layers],
            "layer_sizes": [layer.size for layer in image.layers],
            "manifest": manifest["digest"], "manifest_size": manifest["size"],
            "annotations": manifest.get("annotations", {}),
        } for image, manifest in zip(images, manifests)],
        "wheels": [{"name": w.name, "version": w.version, "filename": w.filename, "sha256": w.sha256,
                    "size": w.size, "built": w.built} for w in wheels],
        "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in members],
        "totals": {"images": sum(layer_sizes.values()), "wheels": sum(w.size for w in wheels),
                   "members": sum(m.size for m in members), "layers_unique": len(layer_sizes)},
    }


# ---- inspect and verify ----------------------------------------------------------------------

def inspect(path: Path) -> dict:
    """What a bundle holds, from its head alone (kilobytes, whatever the bundle's size)."""
    head, _ = read_head(path)
    check_head(head, path)
    volumes = locate(path)
    head = dict(head)
    head["volumes"] = [str(p) for p in volumes.paths]
    head["bundle_size"] = sum(p.stat().st_size for p in volumes.paths)
    return head


def check_head(head: dict, path: Path) -> None:
    version = head.get("format")
    if not isinstance(version, int) or version > FORMAT:
        raise InputError(f"{path}: bundle format {version!r} is newer than this bundler reads ({FORMAT}); "
                         "upgrade bundler")
    for key in ("members", "target", "profile"):
        if key not in head:
            raise IntegrityError(f"{path}: bundle.json has no {key!r}")
    for entry in head["members"]:
        if not isinstance(entry, dict) or not {"path", "size", "sha256"} <= set(entry):
            raise IntegrityError(f"{path}: bundle.json lists a member without path, size and sha256")
        check_member_path(entry["path"])


@dataclass
class VerifyResult:
    members: int
    bytes: int


def verify(path: Path, progress=None) -> VerifyResult:  # noqa: ANN001
    """Re-hash every member against bundle.json; raise IntegrityError at the first that differs."""
    head, _ = read_head(path)
    check_head(head, path)
    total = sum(int(m["size"]) for m in head["members"])
    count = size = 0
    from bundler.progress import NULL
    with (progress or NULL).bar("verifying", total) as bar:
        for member in iter_members(path, head):
            while chunk := member.read(1 << 20):
                size += len(chunk)
                bar.update(len(chunk))
            member.finish()
            count += 1
    return VerifyResult(count, size)

