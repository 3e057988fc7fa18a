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

from bundler.build.cache import Cache
from bundler.build.chunking import BaseFile
from bundler.build.delta import patch_bases, patch_carried
from bundler.build.downloads import fetch_parallel
from bundler.build.images.layers import FRAME, HASH, WHOLE, LayerFrames, LayerSink
from bundler.build.images.layerscan import ImageContents, image_contents
from bundler.build.mirrors import Mirrors
from bundler.build.options import FetchStats, Planned
from bundler.build.profile import ImageSpec
from bundler.digest import Digest
from bundler.errors import BundlerError, DockerError, ImageReferenceError, IntegrityError
from bundler.files import CHUNK, removed_on_failure
from bundler.format.inventory import Site
from bundler.format.media import OCI_MANIFEST
from bundler.format.paths import DOCKER_MANIFEST_FILE
from bundler.net.endpoints import Fallback
from bundler.net.http import iter_body
from bundler.oci.engine import docker_client, short_error
from bundler.oci.reference import ImageRef, Platform
from bundler.oci.registry import Descriptor, Manifest, RegistryClient, parse_manifest
from bundler.progress import NULL, Progress


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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
            locked.append(LockedImage(ref=spec.ref, name=str(spec.image), digest=image_id, platform=str(platforms[0]),
                                      source="docker"))
            continue
        for platform in platforms:
            manifest = registries.client(spec.image.registry).resolve(spec.image, platform)
            locked.append(LockedImage(ref=spec.ref, name=str(spec.image), digest=manifest.digest,
                                      platform=str(platform), source="registry",
                                      index_digest=manifest.index_digest))
    return locked


# ---- planning --------------------------------------------------------------------------------

def plan_images(locked: list[LockedImage], registries: Registries, frames: LayerFrames, *,
                exact: Collection[str] = (), site: Site | None = None) -> list[Planned]:
    """Every layer blob the pinned images need (once, however many images share it), its compressed
    size, whether the cache has what the bundle takes of it (its frame; for an image in ``exact``
    the blob itself) and whether a delta's ``site`` holds the layer as the bundle would carry it;
    reads (and caches) only manifests and configs."""
    pieces: list[Planned] = []
    seen: set[str] = set()
    for item in locked:
        if item.source == "docker":
            pieces.append(Planned(name=f"{item.ref} (saved from the local docker engine)", size=None, cached=False,
                                  source="docker"))
            continue
        client = registries.client(item.image.registry)
        manifest = _manifest(client, item, frames.cache)
        _, diff_ids, _ = _config(client, item, manifest, cache=frames.cache)
        source = client.fallback.serving(client.endpoints, client.label)
        for blob, diff_id in zip(manifest.layers, diff_ids):
            if blob.digest not in seen:
                seen.add(blob.digest)
                cached = frames.has_blob(blob.digest, diff_id) is not None if item.name in exact else \
                    frames.has(diff_id)
                held = site is not None and site.has_layer(diff_id, blob.digest if item.name in exact else diff_id)
                pieces.append(Planned(name=f"layer {blob.digest[:19]}.. of {item.ref}", size=blob.size, cached=cached,
                                      source="cache" if cached else source, held=held))
    return pieces


# ---- fetching --------------------------------------------------------------------------------

def fetch_images(locked: list[LockedImage], registries: Registries, frames: LayerFrames, jobs: int, *,
                 progress: Progress = NULL, docker: Callable[[], object] | None = None,
                 stats: FetchStats | None = None, stop: threading.Event | None = None,
                 exact: Collection[str] = (), site: Site | None = None) -> list[FetchedImage]:
    """Bring every pinned image's config and layers into the cache; layers in parallel.

    A layer becomes the zstd frame the bundle carries (``frames``), compressed while it arrives when
    the compressor is free; for the images named in ``exact`` it is kept instead as the registry
    serves it, compressed, under its own digest. Either way its raw bytes are checked against the
    config's diff_id. A layer downloads once, whatever needs it. For a delta (``site``), a rebuilt
    layer's patch against the site's layer is made while it arrives, where the cache can (delta.py).
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
        config_digest, diff_ids, config = _config(client, item, manifest, cache=cache)
        plans.append((item, manifest, config_digest, diff_ids, config_created(config)))
    _fetch_upstream_indexes(locked, registries, cache, exact=exact)
    bases = patch_bases([(item.name, diff_ids) for item, _, _, diff_ids, _ in plans if item.name not in exact],
                        site, cache) if site is not None else {}

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
                download = todo[blob.digest] = _Download(client=registries.client(item.image.registry), item=item,
                                                         blob=blob, diff_id=diff_id, base=bases.get(diff_id))
                stats.downloaded += 1
            download.frame |= frame
            download.keep |= need_blob
            if frame:
                framed_by.add(diff_id)

    def one(digest: str, stop: threading.Event, on_bytes: Callable[[int], None]) -> int:
        return fetch_layer(todo[digest], frames, stop, on_bytes=on_bytes)

    # The largest first: it takes the compressor while the others download beside it.
    fetch_parallel("fetching layers", sum(d.blob.size for d in todo.values()),
                   sorted(todo, key=lambda d: -todo[d].blob.size), fetch=one, jobs=jobs, stop=stop, progress=progress,
                   stats=stats)

    for item, manifest, config_digest, diff_ids, created in plans:
        if item.name in exact:
            layers = tuple(Layer(d, frames.has_blob(b.digest, d), b) for d, b in zip(diff_ids, manifest.layers))
            fetched[item.key] = FetchedImage(locked=item, config=config_digest, layers=layers, created=created,
                                             manifest=manifest)
        else:
            layers = tuple(Layer(d, frames.size(d)) for d in diff_ids)
            fetched[item.key] = FetchedImage(locked=item, config=config_digest, layers=layers, created=created)
    return [fetched[item.key] for item in locked]


def _fetch_upstream_indexes(locked: list[LockedImage], registries: Registries, cache: Cache,
                            *, exact: Collection[str]) -> None:
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
        platforms, others = index_entries(cache.read_bytes(index_digest))
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


def index_entries(raw: bytes) -> tuple[set[str], list[str]]:
    """An index's platform manifests, and its other manifests (platform unknown/unknown), by digest."""
    platforms, others = set(), []
    for entry in json.loads(raw).get("manifests") or []:
        if (entry.get("platform") or {}).get("os") == "unknown":
            others.append(entry.get("digest"))
        else:
            platforms.add(entry.get("digest"))
    return platforms, others


@dataclass(kw_only=True)
class _Download:
    """One layer blob to download, and what its one download must leave in the cache."""

    client: RegistryClient
    item: LockedImage
    blob: Descriptor
    diff_id: str
    frame: bool = False       # the zstd frame of its raw bytes (an image carried unpacked)
    keep: bool = False        # the compressed blob itself (an image carried exact)
    base: BaseFile | None = None   # a delta's base for this layer: its patch is made as it arrives


def fetch_layer(download: _Download, frames: LayerFrames, stop: threading.Event,
                *, on_bytes: Callable[[int], None]) -> int:
    """One layer into the cache through the endpoints; returns the bytes resumed from an earlier try."""
    client, item, blob, diff_id = download.client, download.item, download.blob, download.diff_id
    with frames.layer(diff_id):
        # Under the layer's lock, so that a build sharing the cache never finds it half done: a whole
        # copy is only a step on the way to the frame (and is dropped once the frame is made).
        frame = download.frame and not _framed(frames, diff_id, stop)
        keep = download.keep and frames.has_blob(blob.digest, diff_id) is None
        if not (frame or keep):
            return 0
        # A layer a delta may carry as a patch is kept whole, not compressed: the patch is made as it
        # arrives, and the layer is framed only if the patch was not worth carrying (or by a later build).
        # Any other layer that finds the compressor busy downloads now and is framed from its compressed
        # bytes once the compressor is free (LayerSink's deferred): no raw copy of it waits on disk.
        patching = frame and download.base is not None
        with frames.slot(wait=False) if frame and not patching else contextlib.nullcontext(False) as streaming:
            raw = WHOLE if patching else FRAME if frame else HASH
            sink = LayerSink(frames, blob, diff_id, stop, raw, keep_blob=keep,
                             deferred=frame and not patching and not streaming, base=download.base)
            try:
                resumed = sink.replay()

                def attempt(endpoint: object) -> int:
                    offset = sink.offset
                    if offset >= blob.size:
                        return sink.finish()
                    response = client.open_blob(endpoint, item.image.repository, blob.digest, offset=offset)
                    with response:
                        if offset and response.status_code != 206:
                            sink.restart()  # the endpoint ignored Range: start over with its bytes
                        sink.download(iter_body(response, client.policy), on_bytes)
                    return sink.finish()

                client.fallback.run(f"fetching layer {blob.digest[:19]}.. of {item.ref}", client.endpoints,
                                    attempt, client.label)
            finally:
                sink.close()
        if patching and not patch_carried(frames.cache, diff_id, download.base.diff_id):
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
    return parse_manifest(item.digest, raw, media_type, index_digest=item.index_digest, name=item.ref)


def _config(client: RegistryClient, item: LockedImage, manifest: Manifest, *,
            cache: Cache) -> tuple[str, list[str], dict]:
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
    return FetchedImage(locked=item, config=config, layers=tuple(Layer(d, frames.size(d)) for d in layers),
                        created=config_created(data))


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
