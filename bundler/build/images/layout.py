"""The image layout a bundle carries: one OCI image layout for every image (docker's manifest.json
beside index.json) as bundle members, each image's entry in bundle.json, and an index for an image
carried for several platforms (the registry's own, whole, when the image is carried exact).

A layer two images share is one member. An unpacked image gets a manifest written here, over its
uncompressed layers; an exact one keeps its registry's manifest, config and compressed layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from bundler.build.cache import Cache
from bundler.build.images.layers import LayerFrames
from bundler.build.images.pull import FetchedImage, index_entries
from bundler.build.pack import Member
from bundler.digest import Digest
from bundler.files import CHUNK
from bundler.format.images import Attachment, ImageEntry, IndexEntry, LayerBlob
from bundler.format.media import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from bundler.format.paths import DOCKER_MANIFEST_FILE, OCI_INDEX_FILE, OCI_LAYOUT, blob_path, layout_path
from bundler.oci.reference import Platform
from bundler.oci.registry import Descriptor


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def layout(images: list[FetchedImage], frames: LayerFrames
           ) -> tuple[list[Member], tuple[ImageEntry, ...], tuple[IndexEntry, ...]]:
    """The OCI image layout (with docker's manifest.json beside index.json) as bundle members, each
    image's entry in bundle.json (in the order of ``images``), and an index for each image carried
    for several platforms."""
    cache = frames.cache
    blobs: dict[str, Member] = {}

    def add_file(digest: str, size: int) -> None:
        path = layout_path(blob_path(digest))
        frame = cache.frame(frames.key, digest)
        if frame is not None:
            member = Member(path, size, Digest(digest).hex, frame=cache.used(cache.frame_path(frames.key, digest)),
                            frame_sha256=frame["frame_sha256"], verified=f"{frames.key}/{digest}" in cache.fresh)
        else:
            member = Member(path, size, Digest(digest).hex, file=cache.used(cache.path(digest)),
                            verified=digest in cache.fresh)
        blobs.setdefault(digest, member)

    def add_data(data: bytes) -> Digest:
        digest = Digest.of(data)
        blobs.setdefault(digest, Member(layout_path(blob_path(digest)), len(data), digest.hex, data=data))
        return digest

    def add_blob(blob: Descriptor) -> None:
        """A layer exactly as its registry serves it: already compressed."""
        blobs.setdefault(blob.digest, Member(layout_path(blob_path(blob.digest)), blob.size, blob.digest.hex,
                                             file=cache.path(blob.digest), verified=blob.digest in cache.fresh,
                                             compressed=True))

    entries, descriptors, docker_entries = [], [], {}
    for image in images:
        add_file(image.config, cache.size(image.config))
        if image.exact:
            for layer in image.layers:
                add_blob(layer.blob)
            manifest, media_type = image.manifest.raw, image.manifest.media_type
            carried = tuple(LayerBlob(Digest(layer.blob.digest), layer.blob.size, layer.blob.media_type)
                            for layer in image.layers)
        else:
            for layer in image.layers:
                add_file(layer.diff_id, layer.size)
            manifest, media_type = _json_bytes({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": image.config, "size": cache.size(image.config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.size}
                           for layer in image.layers],
            }), OCI_MANIFEST
            carried = None
        platform = Platform.parse(image.locked.platform)
        descriptor = {"mediaType": media_type, "digest": add_data(manifest), "size": len(manifest),
                      "platform": {"os": platform.os, "architecture": platform.architecture,
                                   **({"variant": platform.variant} if platform.variant else {})}}
        ref = image.locked.image
        names = {"io.containerd.image.name": f"{ref.name}:{ref.tag}",
                 "org.opencontainers.image.ref.name": ref.tag} if ref.tag else {}
        descriptors.append(descriptor)
        entry = docker_entries.setdefault(image.config, {
            "Config": blob_path(image.config), "RepoTags": [],
            "Layers": [blob_path(layer.blob.digest if image.exact else layer.diff_id) for layer in image.layers]})
        entry["RepoTags"].extend(t for t in image.repo_tags if t not in entry["RepoTags"])
        locked = image.locked
        entries.append(ImageEntry(
            ref=locked.ref, name=locked.name, digest=Digest(locked.digest),
            index_digest=Digest(locked.index_digest) if locked.index_digest else None, platform=locked.platform,
            source=locked.source, id=Digest(image.config), tags=image.repo_tags,
            size=sum(layer.size for layer in image.layers),
            layer_digests=tuple(Digest(layer.diff_id) for layer in image.layers),
            layer_sizes=tuple(layer.size for layer in image.layers), manifest=descriptor["digest"],
            manifest_size=descriptor["size"], annotations=names, exact=image.exact, layer_blobs=carried,
            manifest_media_type=media_type))

    # An image carried for several platforms is listed in index.json once, as an index of them.
    top, indexes = [], []
    groups: dict[str, list[int]] = {}
    for number, image in enumerate(images):
        groups.setdefault(image.locked.name, []).append(number)
    for name, numbers in groups.items():
        upstream = _upstream_index([images[n] for n in numbers], cache)
        if len(numbers) == 1 and upstream is None:
            top.append({**descriptors[numbers[0]], **_annotated(entries[numbers[0]])})
            continue
        if upstream is not None:
            index, attachments = upstream
            media_type = json.loads(index).get("mediaType") or OCI_INDEX
            for attachment in attachments:
                add_data(cache.read_bytes(attachment.digest))
                for blob in attachment.blobs:
                    add_file(blob.digest, blob.size)
        else:
            index = _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                 "manifests": [descriptors[n] for n in numbers]})
            attachments, media_type = (), OCI_INDEX
        digest = add_data(index)
        first = entries[numbers[0]]
        top.append({"mediaType": media_type, "digest": digest, "size": len(index), **_annotated(first)})
        indexes.append(IndexEntry(name, first.tags, digest, size=len(index), media_type=media_type,
                                  upstream=upstream is not None,
                                  manifests=tuple(entries[n].manifest for n in numbers),
                                  attachments=tuple(attachments)))

    small = {
        OCI_LAYOUT: _json_bytes({"imageLayoutVersion": "1.0.0"}),
        OCI_INDEX_FILE: _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": top}),
        DOCKER_MANIFEST_FILE: _json_bytes(list(docker_entries.values())),
    }
    members = list(blobs.values())
    for file_name, data in small.items():
        members.append(Member(layout_path(file_name), len(data), Digest.of(data).hex, data=data))
    return sorted(members, key=lambda m: m.path), tuple(entries), tuple(indexes)


def _annotated(entry: ImageEntry) -> dict:
    return {"annotations": dict(entry.annotations)} if entry.annotations else {}


def _upstream_index(images: list[FetchedImage], cache: Cache) -> tuple[bytes, list[Attachment]] | None:
    """The registry's own index of an image carried exact, byte for byte, with the other manifests it
    lists (attestations), when the bundle holds everything that index lists; else None."""
    first = images[0].locked
    if not (all(i.exact for i in images) and first.index_digest and cache.has(first.index_digest)):
        return None
    raw = cache.read_bytes(first.index_digest)
    platforms, others = index_entries(raw)
    if platforms != {i.locked.digest for i in images} or not all(cache.has(o) for o in others):
        return None
    attachments = []
    for other in others:
        body = cache.read_bytes(other)
        data = json.loads(body)
        blobs = [Descriptor.from_json(data.get("config"), "attestation"),
                 *(Descriptor.from_json(b, "attestation") for b in data.get("layers") or [])]
        if not all(cache.has(b.digest) for b in blobs):
            return None
        attachments.append(Attachment(Digest(other), len(body), data.get("mediaType") or OCI_MANIFEST,
                                      blobs=tuple(LayerBlob(Digest(b.digest), b.size, b.media_type) for b in blobs)))
    return raw, attachments


def write_layout(members: list[Member], dest: Path) -> None:
    """Write layout members into a directory (for tests and for ``docker load`` by hand)."""
    for member in members:
        target = dest / member.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
