"""Images: pinned through the registry client (or taken from a local docker engine), fetched into
the cache as uncompressed layers, and written as one OCI image layout with docker's manifest.json.

Layers are stored uncompressed, keyed by their diff_id, so a layer shared by several images (or
pushed once gzip- and once zstd-compressed) is stored once, and the bundle's zstd sees raw bytes
instead of gzip noise. Each layer is gunzipped while it downloads; both the compressed digest and
the config's diff_id are checked before the layer enters the cache.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


from bundler.archive import DEFAULT_LEVEL, Frames, Member, frame_key
from bundler.layers import LayerSink, frame_from_other, frame_from_whole, layer_cached
from bundler.cache import CHUNK, Cache, disk_error, hex_of
from bundler.errors import BundlerError, DockerError, ImageReferenceError, IntegrityError
from bundler.mirrors import Fallback, Mirrors
from bundler.parallel import run_parallel
from bundler.profile import ImageSpec
from bundler.progress import NULL, Progress
from bundler.reference import ImageRef, Platform
from bundler.registry import Descriptor, Manifest, RegistryClient, iter_body, parse_manifest, sha256_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYOUT_DIR = "images"
DEFAULT_JOBS = 4


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


@dataclass(frozen=True)
class Layer:
    diff_id: str
    size: int


@dataclass(frozen=True)
class FetchedImage:
    locked: LockedImage
    config: str                     # digest of the config blob in the cache
    layers: tuple[Layer, ...]

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


def lock_images(specs: Iterable[ImageSpec], platform: Platform, registries: Registries,
                docker: Callable[[], object] | None = None) -> list[LockedImage]:
    """Pin every image: a tag becomes the manifest digest for ``platform``; a local image its ID."""
    locked = []
    for spec in specs:
        if spec.source == "docker":
            image_id = _docker_image(docker, spec.ref).id
            locked.append(LockedImage(spec.ref, str(spec.image), image_id, str(platform), "docker"))
            continue
        manifest = registries.client(spec.image.registry).resolve(spec.image, platform)
        locked.append(LockedImage(spec.ref, str(spec.image), manifest.digest, str(platform), "registry",
                                  manifest.index_digest))
    return locked


# ---- fetching --------------------------------------------------------------------------------

@dataclass
class FetchStats:
    """What a fetch did: for the report, and for the tests that prove resume and dedup."""

    layers_total: int = 0
    layers_cached: int = 0
    bytes_downloaded: int = 0
    bytes_resumed: int = 0
    notes: list[str] = field(default_factory=list)


def fetch_images(locked: list[LockedImage], registries: Registries, cache: Cache, jobs: int = DEFAULT_JOBS,
                 progress: Progress = NULL, docker: Callable[[], object] | None = None,
                 stats: FetchStats | None = None, level: int = DEFAULT_LEVEL) -> list[FetchedImage]:
    """Bring every pinned image's config and layers into the cache; layers in parallel, each
    compressed for the bundle (at ``level``) while it arrives when the compressor is free."""
    stats = stats if stats is not None else FetchStats()
    frames = Frames(level)
    plans: list[tuple[LockedImage, Manifest | None, str, list[str]]] = []
    fetched: dict[str, FetchedImage] = {}
    for item in locked:
        if item.source == "docker":
            fetched[item.name] = save_from_docker(_docker_image(docker, item.ref), item, cache, frames)
            continue
        client = registries.client(item.image.registry)
        manifest = _manifest(client, item, cache)
        config_digest, diff_ids = _config(client, item, manifest, cache)
        plans.append((item, manifest, config_digest, diff_ids))

    # Every distinct layer once, however many images share it.
    todo: dict[str, tuple[RegistryClient, LockedImage, Descriptor]] = {}
    for item, manifest, _, diff_ids in plans:
        for blob, diff_id in zip(manifest.layers, diff_ids):
            stats.layers_total += 1
            if cache.frame(frames.key, diff_id) is not None:
                stats.layers_cached += 1
            elif diff_id not in todo:
                todo[diff_id] = (registries.client(item.image.registry), item, blob)
    total = sum(blob.size for _, _, blob in todo.values())
    lock = threading.Lock()
    with progress.bar("fetching layers", total) as bar:
        def on_bytes(n: int) -> None:
            with lock:
                stats.bytes_downloaded += n
            bar.update(n)

        def one(diff_id: str, stop: threading.Event) -> None:
            client, item, blob = todo[diff_id]
            resumed = fetch_layer(client, item, blob, diff_id, cache, stop, on_bytes, frames)
            if resumed:
                with lock:
                    stats.bytes_resumed += resumed
                bar.update(resumed)

        # The largest first: it takes the compressor while the others download beside it.
        run_parallel(sorted(todo, key=lambda d: -todo[d][2].size), one, jobs)

    for item, manifest, config_digest, diff_ids in plans:
        layers = tuple(Layer(d, layer_cached(cache, frames, d)) for d in diff_ids)
        fetched[item.name] = FetchedImage(item, config_digest, layers)
    return [fetched[item.name] for item in locked]


def fetch_layer(client: RegistryClient, item: LockedImage, blob: Descriptor, diff_id: str, cache: Cache,
                stop: threading.Event, on_bytes: Callable[[int], None], frames: Frames) -> int:
    """One layer into the cache through the endpoints; returns the bytes resumed from an earlier try."""
    with cache.lock(f"layer-{hex_of(diff_id)}"):
        # Under the layer's lock, so that a build sharing the cache never finds it half done: a whole
        # copy is only a step on the way to the frame (and is dropped once the frame is made).
        if cache.frame(frames.key, diff_id) is not None:
            return 0
        if cache.has(diff_id):
            with frames.slot:
                frame_from_whole(cache, frames, diff_id, stop)
            return 0
        if frame_from_other(cache, frames, diff_id, stop):
            return 0
        streaming = frames.slot.acquire(blocking=False)
        try:
            sink = LayerSink(cache, blob, diff_id, stop, frames if streaming else None)
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
        finally:
            if streaming:
                frames.slot.release()
        if not streaming:
            with frames.slot:
                frame_from_whole(cache, frames, diff_id, stop)
        return resumed


def _manifest(client: RegistryClient, item: LockedImage, cache: Cache) -> Manifest:
    if cache.has(item.digest):
        raw = cache.read_bytes(item.digest)
        media_type = json.loads(raw).get("mediaType") or OCI_MANIFEST
    else:
        _, raw, media_type = client.manifest(item.image, item.digest, f"fetching the manifest of {item.ref}")
        cache.put_bytes(raw)
    return parse_manifest(item.digest, raw, media_type, item.index_digest, item.ref)


def _config(client: RegistryClient, item: LockedImage, manifest: Manifest, cache: Cache) -> tuple[str, list[str]]:
    config = manifest.config
    if not cache.has(config.digest):
        cache.put_bytes(client.blob_bytes(item.image, config, f"fetching the config of {item.ref}"))
    data = json.loads(cache.read_bytes(config.digest))
    diff_ids = list((data.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(manifest.layers):
        raise IntegrityError(f"{item.ref}: the config names {len(diff_ids)} layers, the manifest "
                             f"{len(manifest.layers)}")
    want = Platform.parse(item.platform)
    if not want.matches(data.get("os", ""), data.get("architecture", ""), data.get("variant")):
        found = "/".join(p for p in (data.get("os"), data.get("architecture"), data.get("variant")) if p)
        raise ImageReferenceError(f"{item.ref}: the image is for {found}, the profile targets {item.platform}")
    return config.digest, diff_ids


# ---- images from a local docker engine ---------------------------------------------------------

def docker_client() -> object:
    """The engine DOCKER_HOST (or the default socket) points at."""
    import docker
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds
        host = os.environ.get("DOCKER_HOST") or "the default socket"
        raise DockerError(f"no docker engine at {host}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _docker_image(docker: Callable[[], object] | None, ref: str) -> object:
    import docker as docker_sdk
    client = (docker or docker_client)()
    try:
        return client.images.get(ref)
    except docker_sdk.errors.ImageNotFound:
        raise ImageReferenceError(f"{ref}: no such image in the local docker engine (source: docker)") from None
    except docker_sdk.errors.APIError as exc:
        raise DockerError(f"{ref}: the docker engine failed: {_short(exc)}") from None


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


def save_from_docker(image: object, item: LockedImage, cache: Cache, frames: Frames) -> FetchedImage:
    """Stream ``docker save`` of a local image into the cache, each file under its own sha256."""
    import hashlib
    if image.id != item.digest:
        raise IntegrityError(f"{item.ref}: the local image is now {image.id}, the lock pins {item.digest}")
    stored: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=_IterReader(iter(image.save(chunk_size=CHUNK))), mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                tmp = cache.temp("save")
                hasher = hashlib.sha256()
                with open(tmp, "wb") as out:
                    while chunk := source.read(CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
                digest = "sha256:" + hasher.hexdigest()
                cache.commit(tmp, digest)
                stored[member.name] = digest
    except BundlerError:
        raise
    except OSError as exc:
        raise disk_error(exc, f"saving {item.ref} from docker into the cache") from None
    except Exception as exc:  # noqa: BLE001 - the SDK's stream errors
        raise DockerError(f"{item.ref}: docker save failed: {_short(exc)}") from None
    try:
        (entry,) = json.loads(cache.read_bytes(stored["manifest.json"]))
        config = stored[entry["Config"]]
        layers = [stored[path] for path in entry["Layers"]]
    except (KeyError, ValueError) as exc:
        raise DockerError(f"{item.ref}: docker save wrote an archive this version cannot read ({exc})") from None
    if config != item.digest:
        raise IntegrityError(f"{item.ref}: docker saved config {config}, expected {item.digest}")
    diff_ids = json.loads(cache.read_bytes(config))["rootfs"]["diff_ids"]
    if diff_ids != layers:
        raise IntegrityError(f"{item.ref}: the saved layers do not hash to the diff_ids of its config")
    for diff_id in dict.fromkeys(diff_ids):
        with cache.lock(f"layer-{hex_of(diff_id)}"):
            if cache.frame(frames.key, diff_id) is None:
                with frames.slot:
                    frame_from_whole(cache, frames, diff_id)
            else:   # a build sharing the cache made it first: the copy saved now is not needed
                cache.path(diff_id).unlink(missing_ok=True)
    return FetchedImage(item, config, tuple(Layer(d, layer_cached(cache, frames, d)) for d in diff_ids))


# ---- the layout -------------------------------------------------------------------------------

def _json_bytes(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _blob_path(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def layout_members(images: list[FetchedImage], cache: Cache, level: int = DEFAULT_LEVEL
                   ) -> tuple[list[Member], list[dict]]:
    """The OCI image layout (with docker's manifest.json beside index.json) as bundle members,
    and each image's manifest descriptor (as index.json lists it), in the order of ``images``."""
    blobs: dict[str, Member] = {}
    key = frame_key(level)

    def add_file(digest: str, size: int) -> None:
        path = f"{LAYOUT_DIR}/{_blob_path(digest)}"
        frame = cache.frame(key, digest)
        if frame is not None:
            member = Member(path, size, hex_of(digest), frame=cache.frame_path(key, digest),
                            frame_sha256=frame["frame_sha256"], verified=f"{key}/{digest}" in cache.fresh)
        else:
            member = Member(path, size, hex_of(digest), file=cache.path(digest), verified=digest in cache.fresh)
        blobs.setdefault(digest, member)

    def add_data(data: bytes) -> dict:
        digest = sha256_digest(data)
        blobs.setdefault(digest, Member(f"{LAYOUT_DIR}/{_blob_path(digest)}", len(data), hex_of(digest), data=data))
        return {"digest": digest, "size": len(data)}

    index_entries, docker_entries = [], {}
    for image in images:
        add_file(image.config, cache.size(image.config))
        for layer in image.layers:
            add_file(layer.diff_id, layer.size)
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": image.config, "size": cache.size(image.config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.size}
                       for layer in image.layers],
        }
        descriptor = {"mediaType": OCI_MANIFEST, **add_data(_json_bytes(manifest))}
        platform = Platform.parse(image.locked.platform)
        descriptor["platform"] = {"os": platform.os, "architecture": platform.architecture,
                                  **({"variant": platform.variant} if platform.variant else {})}
        ref = image.locked.image
        if ref.tag:
            descriptor["annotations"] = {"io.containerd.image.name": f"{ref.name}:{ref.tag}",
                                         "org.opencontainers.image.ref.name": ref.tag}
        index_entries.append(descriptor)
        entry = docker_entries.setdefault(image.config, {
            "Config": _blob_path(image.config), "RepoTags": [],
            "Layers": [_blob_path(layer.diff_id) for layer in image.layers]})
        entry["RepoTags"].extend(t for t in image.repo_tags if t not in entry["RepoTags"])

    small = {
        "oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}),
        "index.json": _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}),
        "manifest.json": _json_bytes(list(docker_entries.values())),
    }
    members = list(blobs.values())
    for name, data in small.items():
        members.append(Member(f"{LAYOUT_DIR}/{name}", len(data), hex_of(sha256_digest(data)), data=data))
    return sorted(members, key=lambda m: m.path), index_entries


def write_layout(members: list[Member], dest: Path) -> None:
    """Write layout members into a directory (for tests and for ``docker load`` by hand)."""
    for member in members:
        target = dest / member.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
