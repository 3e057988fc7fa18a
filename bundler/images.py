"""Images: pinned through the registry client (or taken from a local docker engine), fetched into
the cache, and written as one OCI image layout with docker's manifest.json.

The layout holds every layer uncompressed, keyed by its diff_id, so a layer shared by several
images (or pushed once gzip- and once zstd-compressed) is stored once, and the bundle's zstd sees
raw bytes instead of gzip noise. Each layer is gunzipped while it downloads and, in the same pass,
compressed into the zstd frame the bundle will carry (layers.LayerFrames); the cache keeps that
frame. Both the compressed digest and the config's diff_id are checked before it enters the cache.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import tarfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler.cache import Cache
from bundler.errors import BundlerError, DockerError, ImageReferenceError, IntegrityError
from bundler.files import CHUNK, removed_on_failure
from bundler.format import (
    DOCKER_MANIFEST_FILE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_INDEX_FILE,
    OCI_LAYER,
    OCI_LAYOUT,
    OCI_MANIFEST,
    Digest,
    blob_path,
    layout_path,
)
from bundler.format_images import Attachment, ImageEntry, IndexEntry, LayerBlob
from bundler.kinds import FetchStats, Planned, fetch_parallel
from bundler.layers import FRAME, HASH, WHOLE, LayerFrames, LayerSink
from bundler.layerscan import ImageContents, image_contents
from bundler.loaders import docker_client, short_error
from bundler.mirrors import Fallback, Mirrors
from bundler.pack import Member
from bundler.profile import ImageSpec
from bundler.progress import NULL, Progress
from bundler.reference import ImageRef, Platform
from bundler.registry import Descriptor, Manifest, RegistryClient, iter_body, parse_manifest


@dataclass(frozen=True)
class LockedImage:
    """An image pinned for a build: what the lock file records."""

    ref: str                        # as the profile wrote it
    name: str                       # normalised: docker.io/library/ubuntu:22.04
    digest: str                     # the platform's manifest digest; for source docker, the image ID
    platform: str
    source: str = "registry"
    index_digest: str | None = None

    @property
    def image(self) -> ImageRef:
        return ImageRef.parse(self.name)

    @property
    def key(self) -> tuple[str, str]:
        """An image is one per platform."""
        return self.name, self.platform


@dataclass(frozen=True)
class Layer:
    diff_id: str
    size: int                       # uncompressed
    blob: Descriptor | None = None  # an exact image's layer as its registry serves it (compressed)


@dataclass(frozen=True)
class FetchedImage:
    locked: LockedImage
    config: str                     # digest of the config blob in the cache
    layers: tuple[Layer, ...]
    created: int | None = None      # when the image was made, as its config says
    manifest: Manifest | None = None    # for an image carried exact: its manifest as the registry serves it

    @property
    def exact(self) -> bool:
        return self.manifest is not None

    @property
    def repo_tags(self) -> tuple[str, ...]:
        image = self.locked.image
        return (image.familiar,) if image.tag else ()


# ---- pinning ---------------------------------------------------------------------------------

class Registries:
    """One RegistryClient per upstream host, sharing the run's fallback memory."""

    def __init__(self, mirrors: Mirrors, fallback: Fallback, docker_config: Path | None = None) -> None:
        self._mirrors, self._fallback, self._config = mirrors, fallback, docker_config
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def client(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = RegistryClient(host, self._mirrors.for_registry(host), self._fallback,
                                                     self._config)
            return self._clients[host]


def lock_images(specs: Iterable[ImageSpec], platforms: Sequence[Platform], registries: Registries,
                docker: Callable[[], object] | None = None) -> list[LockedImage]:
    """Pin every image: a tag becomes the manifest digest for each of ``platforms`` (an index is
    resolved once per platform); a local image (source: docker) its ID, once, for the first."""
    locked = []
    for spec in specs:
        if spec.source == "docker":
            image_id = _docker_image(docker, spec.ref).id
            locked.append(LockedImage(spec.ref, str(spec.image), image_id, str(platforms[0]), "docker"))
            continue
        for platform in platforms:
            manifest = registries.client(spec.image.registry).resolve(spec.image, platform)
            locked.append(LockedImage(spec.ref, str(spec.image), manifest.digest, str(platform), "registry",
                                      manifest.index_digest))
    return locked


# ---- planning --------------------------------------------------------------------------------

def plan_images(locked: list[LockedImage], registries: Registries, frames: LayerFrames,
                exact: Collection[str] = ()) -> list[Planned]:
    """Every layer blob the pinned images need (once, however many images share it), its compressed
    size and whether the cache has what the bundle takes of it (its frame; for an image in ``exact``
    the blob itself); reads (and caches) only manifests and configs."""
    pieces: list[Planned] = []
    seen: set[str] = set()
    for item in locked:
        if item.source == "docker":
            pieces.append(Planned(f"{item.ref} (saved from the local docker engine)", None, False, "docker"))
            continue
        client = registries.client(item.image.registry)
        manifest = _manifest(client, item, frames.cache)
        _, diff_ids, _ = _config(client, item, manifest, frames.cache)
        source = client.fallback.serving(client.endpoints, client.label)
        for blob, diff_id in zip(manifest.layers, diff_ids):
            if blob.digest not in seen:
                seen.add(blob.digest)
                cached = frames.has_blob(blob.digest, diff_id) is not None if item.name in exact else \
                    frames.has(diff_id)
                pieces.append(Planned(f"layer {blob.digest[:19]}.. of {item.ref}", blob.size, cached,
                                      "cache" if cached else source))
    return pieces


# ---- fetching --------------------------------------------------------------------------------

def fetch_images(locked: list[LockedImage], registries: Registries, frames: LayerFrames, jobs: int,
                 progress: Progress = NULL, docker: Callable[[], object] | None = None,
                 stats: FetchStats | None = None, stop: threading.Event | None = None,
                 exact: Collection[str] = ()) -> list[FetchedImage]:
    """Bring every pinned image's config and layers into the cache; layers in parallel.

    A layer becomes the zstd frame the bundle carries (``frames``), compressed while it arrives when
    the compressor is free; for the images named in ``exact`` it is kept instead as the registry
    serves it, compressed, under its own digest. Either way its raw bytes are checked against the
    config's diff_id. A layer downloads once, whatever needs it.
    """
    stats = stats if stats is not None else FetchStats()
    cache = frames.cache
    plans: list[tuple[LockedImage, Manifest, str, list[str], int | None]] = []
    fetched: dict[str, FetchedImage] = {}
    for item in locked:
        if item.source == "docker":
            fetched[item.key] = save_from_docker(_docker_image(docker, item.ref), item, frames)
            continue
        client = registries.client(item.image.registry)
        manifest = _manifest(client, item, cache)
        config_digest, diff_ids, config = _config(client, item, manifest, cache)
        plans.append((item, manifest, config_digest, diff_ids, config_created(config)))
    _fetch_upstream_indexes(locked, registries, cache, exact)

    todo: dict[str, _Download] = {}          # blob digest -> what its one download must give
    framed_by: set[str] = set()                # diff_ids some download already frames
    for item, manifest, _, diff_ids, _ in plans:
        keep = item.name in exact
        for blob, diff_id in zip(manifest.layers, diff_ids):
            stats.wanted += 1
            shared = not keep and diff_id in framed_by   # another image's download frames it
            frame = not keep and not shared and not frames.has(diff_id)
            need_blob = keep and frames.has_blob(blob.digest, diff_id) is None
            if not (frame or need_blob):
                stats.cached += 0 if shared else 1
                continue
            download = todo.get(blob.digest)
            if download is None:
                download = todo[blob.digest] = _Download(registries.client(item.image.registry), item, blob, diff_id)
                stats.downloaded += 1
            download.frame |= frame
            download.keep |= need_blob
            if frame:
                framed_by.add(diff_id)

    def one(digest: str, stop: threading.Event, on_bytes: Callable[[int], None]) -> int:
        return fetch_layer(todo[digest], frames, stop, on_bytes)

    # The largest first: it takes the compressor while the others download beside it.
    fetch_parallel("fetching layers", sum(d.blob.size for d in todo.values()),
                   sorted(todo, key=lambda d: -todo[d].blob.size), one, jobs, stop, progress, stats)

    for item, manifest, config_digest, diff_ids, created in plans:
        if item.name in exact:
            layers = tuple(Layer(d, frames.has_blob(b.digest, d), b) for d, b in zip(diff_ids, manifest.layers))
            fetched[item.key] = FetchedImage(item, config_digest, layers, created, manifest)
        else:
            fetched[item.key] = FetchedImage(item, config_digest, tuple(Layer(d, frames.size(d)) for d in diff_ids),
                                             created)
    return [fetched[item.key] for item in locked]


def _fetch_upstream_indexes(locked: list[LockedImage], registries: Registries, cache: Cache,
                            exact: Collection[str]) -> None:
    """For an image carried exact for every platform its registry's index lists: that index, and the
    other manifests it lists (attestations: platform unknown/unknown) with their blobs, so that the
    site's registry can serve the index's own digest (see layout)."""
    carried: dict[tuple[str, str], set[str]] = {}
    for item in locked:
        if item.name in exact and item.index_digest:
            carried.setdefault((item.name, item.index_digest), set()).add(item.digest)
    for (name, index_digest), manifests in carried.items():
        item = next(i for i in locked if i.name == name)
        client = registries.client(item.image.registry)
        if not cache.has(index_digest):
            _, raw, _ = client.manifest(item.image, index_digest, f"fetching the index of {item.ref}")
            cache.put_bytes(raw)
        platforms, others = _index_entries(cache.read_bytes(index_digest))
        if not platforms <= manifests:
            continue   # some platform stays behind: the site gets an index made here (see layout)
        for other in others:
            if not cache.has(other):
                _, raw, _ = client.manifest(item.image, other, f"fetching an attestation of {item.ref}")
                cache.put_bytes(raw)
            data = json.loads(cache.read_bytes(other))
            for blob in [Descriptor.from_json(data.get("config"), f"{item.ref} attestation"),
                         *(Descriptor.from_json(b, f"{item.ref} attestation") for b in data.get("layers") or [])]:
                if not cache.has(blob.digest):
                    cache.put_bytes(client.blob_bytes(item.image, blob, f"fetching an attestation blob of {item.ref}"))


def _index_entries(raw: bytes) -> tuple[set[str], list[str]]:
    """An index's platform manifests, and its other manifests (platform unknown/unknown), by digest."""
    platforms, others = set(), []
    for entry in json.loads(raw).get("manifests") or []:
        if (entry.get("platform") or {}).get("os") == "unknown":
            others.append(entry.get("digest"))
        else:
            platforms.add(entry.get("digest"))
    return platforms, others


@dataclass
class _Download:
    """One layer blob to download, and what its one download must leave in the cache."""

    client: RegistryClient
    item: LockedImage
    blob: Descriptor
    diff_id: str
    frame: bool = False       # the zstd frame of its raw bytes (an image carried unpacked)
    keep: bool = False        # the compressed blob itself (an image carried exact)


def fetch_layer(download: _Download, frames: LayerFrames, stop: threading.Event,
                on_bytes: Callable[[int], None]) -> int:
    """One layer into the cache through the endpoints; returns the bytes resumed from an earlier try."""
    client, item, blob, diff_id = download.client, download.item, download.blob, download.diff_id
    with frames.layer(diff_id):
        # Under the layer's lock, so that a build sharing the cache never finds it half done: a whole
        # copy is only a step on the way to the frame (and is dropped once the frame is made).
        frame = download.frame and not _framed(frames, diff_id, stop)
        keep = download.keep and frames.has_blob(blob.digest, diff_id) is None
        if not (frame or keep):
            return 0
        with frames.slot(wait=False) if frame else contextlib.nullcontext(False) as streaming:
            raw = FRAME if streaming else WHOLE if frame else HASH
            sink = LayerSink(frames, blob, diff_id, stop, raw, keep_blob=keep)
            try:
                resumed = sink.replay()

                def attempt(endpoint: object) -> int:
                    offset = sink.offset
                    if offset >= blob.size:
                        return sink.finish()
                    response = client.open_blob(endpoint, item.image.repository, blob.digest, offset)
                    with response:
                        if offset and response.status_code != 206:
                            sink.restart()  # the endpoint ignored Range: start over with its bytes
                        sink.download(iter_body(response, client.policy), on_bytes)
                    return sink.finish()

                client.fallback.run(f"fetching layer {blob.digest[:19]}.. of {item.ref}", client.endpoints,
                                    attempt, client.label)
            finally:
                sink.close()
        if frame and not streaming:
            frames.from_whole(diff_id, stop)
        return resumed


def _framed(frames: LayerFrames, diff_id: str, stop: threading.Event) -> bool:
    """The layer's frame is in the cache, or made now from what the cache holds (no download)."""
    if frames.has(diff_id):
        return True
    if frames.cache.has(diff_id):
        frames.from_whole(diff_id, stop)
        return True
    return frames.from_other(diff_id, stop)


def _manifest(client: RegistryClient, item: LockedImage, cache: Cache) -> Manifest:
    if cache.has(item.digest):
        raw = cache.read_bytes(item.digest)
        media_type = json.loads(raw).get("mediaType") or OCI_MANIFEST
    else:
        _, raw, media_type = client.manifest(item.image, item.digest, f"fetching the manifest of {item.ref}")
        cache.put_bytes(raw)
    return parse_manifest(item.digest, raw, media_type, item.index_digest, item.ref)


def _config(client: RegistryClient, item: LockedImage, manifest: Manifest, cache: Cache) -> tuple[str, list[str], dict]:
    config = manifest.config
    if not cache.has(config.digest):
        cache.put_bytes(client.blob_bytes(item.image, config, f"fetching the config of {item.ref}"))
    data = json.loads(cache.read_bytes(config.digest))
    diff_ids = (data.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
        raise IntegrityError(f"{item.ref}: the config names {len(diff_ids)} layers, the manifest "
                             f"{len(manifest.layers)}")
    try:
        diff_ids = [Digest(d) for d in diff_ids]
    except ValueError as exc:
        raise IntegrityError(f"{item.ref}: the config's rootfs.diff_ids: {exc}") from None
    want = Platform.parse(item.platform)
    if not want.matches(data.get("os", ""), data.get("architecture", ""), data.get("variant")):
        found = "/".join(p for p in (data.get("os"), data.get("architecture"), data.get("variant")) if p)
        raise ImageReferenceError(f"{item.ref}: the image is for {found}, the profile targets {item.platform}")
    return config.digest, diff_ids, data


# ---- images from a local docker engine ---------------------------------------------------------

def _docker_image(docker: Callable[[], object] | None, ref: str) -> object:
    import docker as docker_sdk
    client = (docker or docker_client)()
    try:
        return client.images.get(ref)
    except docker_sdk.errors.ImageNotFound:
        raise ImageReferenceError(f"{ref}: no such image in the local docker engine (source: docker)") from None
    except docker_sdk.errors.APIError as exc:
        raise DockerError(f"{ref}: the docker engine failed: {short_error(exc)}") from None


class _IterReader:
    """A file-like view of an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buffer = chunks, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def save_from_docker(image: object, item: LockedImage, frames: LayerFrames) -> FetchedImage:
    """Stream ``docker save`` of a local image into the cache, each file under its own sha256."""
    cache = frames.cache
    if image.id != item.digest:
        raise IntegrityError(f"{item.ref}: the local image is now {image.id}, the lock pins {item.digest}")
    stored: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=_IterReader(iter(image.save(chunk_size=CHUNK))), mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                hasher = hashlib.sha256()
                with removed_on_failure(cache.temp("save"), f"saving {item.ref} from docker into the cache") as tmp:
                    with open(tmp, "wb") as out:
                        while chunk := source.read(CHUNK):
                            hasher.update(chunk)
                            out.write(chunk)
                    stored[member.name] = cache.commit(tmp, Digest.from_hex(hasher.hexdigest())).name
    except BundlerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the SDK's stream errors
        raise DockerError(f"{item.ref}: docker save failed: {short_error(exc)}") from None
    try:
        (entry,) = json.loads(cache.read_bytes(Digest.from_hex(stored[DOCKER_MANIFEST_FILE])))
        config = Digest.from_hex(stored[entry["Config"]])
        layers = [Digest.from_hex(stored[path]) for path in entry["Layers"]]
    except (KeyError, ValueError) as exc:
        raise DockerError(f"{item.ref}: docker save wrote an archive this version cannot read ({exc})") from None
    if config != item.digest:
        raise IntegrityError(f"{item.ref}: docker saved config {config}, expected {item.digest}")
    data = json.loads(cache.read_bytes(config))
    if data["rootfs"]["diff_ids"] != layers:
        raise IntegrityError(f"{item.ref}: the saved layers do not hash to the diff_ids of its config")
    for diff_id in dict.fromkeys(layers):
        with frames.layer(diff_id):
            if not frames.has(diff_id):
                frames.from_whole(diff_id)
            else:   # a build sharing the cache made it first: the copy saved now is not needed
                cache.path(diff_id).unlink(missing_ok=True)
    return FetchedImage(item, config, tuple(Layer(d, frames.size(d)) for d in layers), config_created(data))


def contents_of(image: FetchedImage, frames: LayerFrames, stop: threading.Event | None = None) -> ImageContents:
    """What the image holds once its layers are stacked, from what each layer's scan found."""
    return image_contents([frames.findings(layer.diff_id, stop) for layer in image.layers])


def config_created(config: dict) -> int | None:
    """When the image was made, as its config says (seconds since the epoch), if it says."""
    text = config.get("created")
    if not isinstance(text, str):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text)
    if not match:
        return None
    moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())


# ---- the layout -------------------------------------------------------------------------------

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
        indexes.append(IndexEntry(name, first.tags, digest, len(index), media_type, upstream is not None,
                                  tuple(entries[n].manifest for n in numbers), tuple(attachments)))

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
    platforms, others = _index_entries(raw)
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
                                      tuple(LayerBlob(Digest(b.digest), b.size, b.media_type) for b in blobs)))
    return raw, attachments


def write_layout(members: list[Member], dest: Path) -> None:
    """Write layout members into a directory (for tests and for ``docker load`` by hand)."""
    for member in members:
        target = dest / member.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
