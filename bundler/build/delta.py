"""``build --since``: a delta bundle carries only what its bases say the site lacks.

Every kind fetches as for a full bundle, then drops the members the site holds, by digest (build/kinds.py:
``Kind.delta``); the head still lists everything, and names what the site must hold (format/delta.py).
An image layer that was rebuilt (a new diff_id) is carried as a patch against the layer at the
same place of the site's image of the same repository, when the build's cache has that layer's
bytes and the patch is smaller than half the layer (chunking.py). Neither layer is chunked here when
the cache holds its chunk index (made while it was fetched, checked against its diff_id before it is
read): the base is not read at all, and the rebuilt layer only for the bytes the base lacks.
Restore checks the layer it rebuilds before anything uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import zstandard

from bundler.build.cache import Cache
from bundler.build.chunking import (
    AVERAGE_CHUNK,
    INDEX_KEY,
    WORTH_IT,
    BaseFile,
    BaseIndex,
    Chunked,
    NotWorthIt,
    base_from_index,
    check_index,
    index_file,
    make_patch,
    make_patch_from_index,
    read_index,
)
from bundler.build.context import BuildContext
from bundler.build.options import Fetched
from bundler.build.pack import Member
from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.files import removed_on_failure, sha256_file
from bundler.format.delta import FASTCDC, Patch, patch_path
from bundler.format.images import ImageEntry
from bundler.format.inventory import Site, SiteImage
from bundler.format.paths import blob_path, layout_path
from bundler.oci.reference import repository_of

PATCH_KEY = f"fastcdc1-{AVERAGE_CHUNK}"   # names how cached patches were made: other parameters make other patches


def drop_members(fetched: Fetched, held: dict[str, str]) -> tuple[Fetched, tuple[str, ...]]:
    """``fetched`` without the members the site holds (``held`` maps a member's path to the digest the
    site holds it as), and those digests, each once: what the delta section lists for the kind."""
    members = [m for m in fetched.members if m.path not in held]
    paths = {m.path for m in fetched.members}
    return replace(fetched, members=members), tuple(dict.fromkeys(d for path, d in held.items() if path in paths))


def images_delta(fetched: Fetched, site: Site, ctx: BuildContext) -> Fetched:
    entries = fetched.images
    by_path = {m.path: m for m in fetched.members}
    held: dict[str, str] = {}
    patches: dict[str, Patch] = {}
    extra: dict[str, Member] = {}        # a layer's path -> the patch carried instead
    for image in entries:
        for index, (diff_id, blob) in enumerate(zip(image.layer_digests, image.blobs)):
            path = layout_path(blob_path(blob.digest))
            if path in held or diff_id in patches or path not in by_path:
                continue
            if site.has_layer(diff_id, blob.digest):
                held[path] = blob.digest
                continue
            if image.exact:      # a registry's gzip cannot be remade byte for byte: carried whole
                continue
            made = _patch_for(image, index, by_path[path], site_images=site.inventory.images, ctx=ctx)
            if made is not None:
                patches[diff_id], extra[path] = made
    reduced, layers = drop_members(fetched, held)
    if patches:
        saved = sum(p.size for p in patches.values()) - sum(m.size for m in extra.values())
        ctx.progress.note(f"{len(patches)} rebuilt layers carried as patches against the site's layers "
                          f"({saved >> 20} MiB fewer raw bytes)")
    members = [m for m in reduced.members if m.path not in extra] + list(extra.values())
    return replace(reduced, members=sorted(members, key=lambda m: m.path),
                   needs=replace(reduced.needs, layers=layers, patches=tuple(patches.values())))


def base_layer(name: str, diff_ids: Sequence[str], index: int, site_images: Sequence[SiteImage]) -> list[str]:
    """The layers at ``index`` of the site's images of the same repository as the image ``name`` (of
    layers ``diff_ids``: an earlier version of it), those sharing the most layers below it first.
    Another image's layer at that place is another program's files: trying it would cost a pass
    over both for nothing."""
    ours = repository_of(name)
    ranked = []
    for found in site_images:
        if len(found.layers) <= index or repository_of(found.name) != ours:
            continue
        candidate = found.diff_ids[index]
        shared = next((n for n, (a, b) in enumerate(zip(found.diff_ids, diff_ids)) if a != b),
                      min(len(found.layers), len(diff_ids)))
        if candidate != diff_ids[index]:
            ranked.append((-min(shared, index), candidate))
    return list(dict.fromkeys(c for _, c in sorted(ranked)))


def patch_bases(images: Sequence[tuple[str, Sequence[str]]], site: Site, cache: Cache) -> dict[str, BaseFile]:
    """For each layer of ``images`` (name, diff_ids) that the site lacks, the base a patch of it would
    be made against first (``_patch_for``), when the cache holds that base and its chunk index: the
    fetch then makes the patch while the layer arrives (chunking.ChunkWriter)."""
    found: dict[str, BaseFile] = {}
    for name, diff_ids in images:
        for index, diff_id in enumerate(diff_ids):
            if diff_id in found or site.has_layer(diff_id, diff_id):
                continue
            for base in base_layer(name, diff_ids, index, site.inventory.images):
                source = _cached_layer(cache, base)
                if source is not None:
                    if cache.chunks_path(INDEX_KEY, base).is_file():
                        found[diff_id] = BaseFile(cache.chunks_path(INDEX_KEY, base), base, source[1])
                    break
    return found


def _patch_for(image: ImageEntry, index: int, member: Member, *, site_images: Sequence[SiteImage],
               ctx: BuildContext) -> tuple[Patch, Member] | None:
    cache = ctx.cache
    bases = base_layer(image.name, image.layer_digests, index, site_images)
    for base in bases:
        source = _cached_layer(cache, base)
        if source is None:
            continue
        diff_id = image.layer_digests[index]
        key = f"{diff_id}-{base}-{PATCH_KEY}"
        meta = cache.meta("patch", key)
        if meta is None or (meta.get("digest") and not cache.has(meta["digest"])):
            meta = _make(cache, source, base, member, diff_id, ctx)
            cache.set_meta("patch", key, meta)
        if not meta.get("digest"):
            continue
        base_size = meta["base_size"]
        patch = Patch(Digest(diff_id), member.size, Digest(base), base_size=base_size, method=FASTCDC)
        digest = Digest(meta["digest"])
        return patch, Member(patch_path(diff_id), meta["size"], digest.hex, file=cache.path(digest),
                             verified=digest in cache.fresh)
    if bases and not any(_cached_layer(cache, b) for b in bases):
        ctx.progress.note(f"{image.tags[0] if image.tags else image.name}: layer {index + 1} was rebuilt, and this "
                          "build's cache does not hold the site's layer at its place (build with the cache that "
                          "built the earlier bundle to carry only its changes): carried whole")
    return None


def keep_patch(cache: Cache, patch_file: Path, *, layer: str, base: str, base_size: int, made: Chunked) -> None:
    """Keep a patch made while the rebuilt ``layer`` arrived (its bytes matched its diff_id), where
    ``_patch_for`` finds it, or that it was not worth carrying."""
    if made.patch_sha256 is None:   # the base's index did not hold: made after the fetch, as for an older cache
        patch_file.unlink(missing_ok=True)
        return
    meta: dict = {"digest": None}
    if made.literal <= made.size * WORTH_IT:
        digest = Digest.from_hex(made.patch_sha256)
        cache.commit(patch_file, digest)
        meta = {"digest": digest, "size": made.patch_size, "base_size": base_size}
    else:
        patch_file.unlink(missing_ok=True)
    cache.set_meta("patch", f"{layer}-{base}-{PATCH_KEY}", meta)


def patch_carried(cache: Cache, layer: str, base: str) -> bool:
    """Whether the cache holds a patch of ``layer`` against ``base`` worth carrying (``keep_patch``)."""
    meta = cache.meta("patch", f"{layer}-{base}-{PATCH_KEY}")
    return bool(meta and meta.get("digest")) and cache.has(meta["digest"])


def _cached_layer(cache: Cache, diff_id: str) -> tuple[Path, int] | None:
    """A frame (or whole copy) of the layer in the build's cache, and the layer's size."""
    if cache.has(diff_id):
        return cache.path(diff_id), cache.size(diff_id)
    keys = cache.frame_keys(diff_id)
    return (cache.frame_path(keys[0], diff_id), int(cache.frame(keys[0], diff_id)["size"])) if keys else None


def _make(cache: Cache, source: tuple[Path, int], base: str, member: Member, diff_id: str, ctx: BuildContext) -> dict:
    """The patch of the rebuilt layer against the base, from the base's chunk index and the rebuilt
    layer's (each made while it was fetched, or now from the cache) and the rebuilt layer's own bytes
    where the base lacks them. A copy is made only where the chunk's 128-bit hash matched; restore
    checks the rebuilt layer against its diff_id before anything uses it. A patch that would carry
    more than WORTH_IT of the layer is given up as soon as it does."""
    patch_file = cache.temp("patch")
    with removed_on_failure(patch_file, f"writing a patch in the cache {cache.root}"):
        index = _base_index(cache, source, base, ctx)
        chunks = cache.chunks_path(INDEX_KEY, diff_id)
        known = check_index(chunks, diff_id, member.size) == AVERAGE_CHUNK
        try:
            with member.open() as layer, open(patch_file, "wb") as out:
                # a frame this process made was checked against the diff_id as it was made
                hashed = _Hashing(layer, check=not member.verified or not known)
                limit = int(member.size * WORTH_IT)
                if known:
                    make_patch_from_index(index, read_index(cache.used(chunks)), hashed, out, stop=ctx.cancel,
                                          limit=limit)
                else:
                    make_patch(index, hashed, out, stop=ctx.cancel, limit=limit)
        except NotWorthIt:
            patch_file.unlink()
            return {"digest": None}
        except ValueError:   # the layer's bytes and its index disagree in length
            raise _damaged(diff_id, cache.root) from None
        if not hashed.matches(diff_id, member.size):
            raise _damaged(diff_id, cache.root)
        digest = Digest.from_hex(sha256_file(patch_file))
        size = patch_file.stat().st_size
        cache.commit(patch_file, digest)
    return {"digest": digest, "size": size, "base_size": source[1]}


def _damaged(diff_id: str, root: Path) -> IntegrityError:
    return IntegrityError(f"layer {diff_id} in the cache {root} is damaged; remove the cache folder and build again")


class _Hashing:
    """A layer's bytes as a stream for the chunker, hashed on the way (unless ``check`` is off)."""

    def __init__(self, source: object, check: bool = True) -> None:
        self.source, self.hasher, self.size = source, hashlib.sha256() if check else None, 0

    def readinto(self, buffer: memoryview) -> int:
        n = self.source.readinto(buffer)
        if n:
            self._seen(memoryview(buffer)[:n])
        return n

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        self._seen(data)
        return data

    def _seen(self, data: object) -> None:
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)

    def matches(self, diff_id: str, size: int) -> bool:
        return self.size == size and (self.hasher is None or "sha256:" + self.hasher.hexdigest() == diff_id)


def _open_layer(path: Path) -> object:
    """A cached layer's raw bytes: its zstd frame decompressed, or the whole copy."""
    handle = open(path, "rb")  # noqa: SIM115 - closed with the stream returned
    first = handle.read(4)
    handle.seek(0)
    return zstandard.ZstdDecompressor().stream_reader(handle, closefd=True) if first == b"\x28\xb5\x2f\xfd" else handle


def _base_index(cache: Cache, source: tuple[Path, int], diff_id: str, ctx: BuildContext) -> BaseIndex:
    """Where each chunk of the base layer is: from its chunk index in the cache; an index that is missing
    or fails its checks (damaged, cut short, made from another layer) is made again from the layer."""
    path, size = source
    chunks = cache.chunks_path(INDEX_KEY, diff_id)
    found = check_index(chunks, diff_id, size)
    if found == AVERAGE_CHUNK:
        return base_from_index(cache.used(chunks), size)
    temp = cache.temp(f"chunks-{diff_id}")
    with removed_on_failure(temp, f"writing the chunk index of {diff_id} in the cache {cache.root}"), \
            _open_layer(path) as layer:
        hashed = _Hashing(layer)
        index_file(hashed, temp, diff_id, ctx.cancel)
        if not hashed.matches(diff_id, size):
            raise _damaged(diff_id, cache.root)
        cache.commit_chunks(temp, INDEX_KEY, diff_id)
    return base_from_index(chunks, size)

