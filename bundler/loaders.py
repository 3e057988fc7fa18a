"""The images' air-gapped side: the local docker engine, a private registry, or containerd.

``ImagesRestorer`` takes the image layout's members as the bundle streams and hands the blobs to
one loader. Each loader is told which images the bundle holds, decides which are missing, receives
the blobs as they stream out of the bundle (verified member by member), and commits only after the
whole bundle was verified: docker and containerd receive the end of their tar stream, and a
registry its manifests, at that moment and not before. ``abort()`` leaves nothing behind that
refers to the images.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bundler.archive import BLOCK, MemberReader, padding, tar_header
from bundler.decode import LayerCheck, checked_beside
from bundler.errors import BundlerError, DiskError, DockerError, IntegrityError
from bundler.files import CHUNK
from bundler.format import (
    DOCKER_MANIFEST_FILE,
    LAYOUT_DIR,
    Digest,
    Head,
    blob_path,
)
from bundler.format_images import ImageEntry, IndexEntry
from bundler.progress import NULL, Progress, waiting
from bundler.reference import ImageRef

if TYPE_CHECKING:
    from bundler.bases import Piece
    from bundler.context import Context
    from bundler.restore import RestoreOptions, RestoreReport

MAX_LAYOUT_FILE = 16 << 20     # index.json, manifest.json and the manifests are kilobytes; refuse a bomb


class Loader(Protocol):
    def plan(self, images: Sequence[ImageEntry], indexes: Sequence[IndexEntry]) -> list[str]: ...  # notes: skipped
    def wants(self, digest: str) -> bool: ...
    def done(self) -> bool: ...                                        # nothing to load at all
    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None: ...
    def commit(self, layout: dict[str, bytes]) -> list[str]: ...       # notes on what was done
    def abort(self) -> None: ...


class ImagesRestorer:
    """The image layout's members, as the bundle streams, into one loader: ``images`` (of one platform,
    or every one for a registry) and the ``indexes`` that name an image's platforms together."""

    def __init__(self, head: Head, loader: Loader, images: Sequence[ImageEntry],
                 indexes: Sequence[IndexEntry] = ()) -> None:
        self.images, self.indexes, self.loader = tuple(images), tuple(indexes), loader
        self._layout: dict[str, bytes] = {}      # index.json, manifest.json, manifests, indexes: small, kept
        self._manifests = ({blob_path(i.manifest) for i in head.images} | {blob_path(i.digest) for i in head.indexes}
                           | {blob_path(a.digest) for i in head.indexes for a in i.attachments})
        self.delta = None
        if head.delta is not None:   # layers the bundle does not carry come from the destination (delta_images.py)
            from bundler.delta_images import ImagesDelta
            self.delta = ImagesDelta(head, loader, self.images)

    def plan(self, report: RestoreReport) -> None:
        report.notes += self.loader.plan(self.images, self.indexes)

    def done(self) -> bool:
        return self.loader.done()

    def lacking(self, scratch: Path) -> list[Piece]:
        return self.delta.lacking(scratch) if self.delta is not None else []

    def supply(self, piece: Piece, path: Path) -> None:
        self.delta.supply(piece, path)

    def start(self) -> None:
        if self.delta is not None:
            self.delta.start()

    def wants(self, path: str) -> bool:
        return path.startswith(f"{LAYOUT_DIR}/")

    def member(self, path: str, member: MemberReader) -> None:
        name = path[len(LAYOUT_DIR) + 1:]
        if name.startswith("patches/") and self.delta is not None:
            self.delta.patch(path, member)
            return
        if not name.startswith("blobs/") or name in self._manifests:
            if member.size > MAX_LAYOUT_FILE:
                raise IntegrityError(f"member {path}: {member.size} bytes, far more than an image layout's "
                                     "metadata holds")
            self._layout[name] = data = member.read()
            digest = Digest.from_hex(name.rsplit("/", 1)[1]) if name.startswith("blobs/") else None
            if digest is not None and self.loader.wants(digest):
                self.loader.blob(digest, len(data), iter([data]))
            return
        digest = Digest.from_hex(name.rsplit("/", 1)[1])
        if self.loader.wants(digest):
            try:
                self.loader.blob(digest, member.size, _chunks(member))
            except BundlerError:
                member.finish()   # a damaged member is the real cause: name it
                raise

    def commit(self, report: RestoreReport) -> None:
        report.notes += self.loader.commit(self._layout)

    def abort(self) -> None:
        self.loader.abort()

    def finish(self, report: RestoreReport) -> None:
        pass


def _chunks(member: MemberReader) -> Iterator[bytes]:
    while chunk := member.read(CHUNK):
        yield chunk


def loader_for(options: RestoreOptions, ctx: Context) -> Loader:
    """The destination the options name: a registry, containerd, or (by default) the docker engine."""
    if options.registry:
        from bundler.push import RegistryPusher
        return RegistryPusher(options.registry, ctx.policy, options.insecure)
    if options.containerd:
        from bundler.containerd import DEFAULT_CONTAINERD, ContainerdImporter
        return ContainerdImporter(options.containerd_address or DEFAULT_CONTAINERD, options.namespace,
                                  ctx.progress)
    try:
        return DockerLoader(docker_client(), ctx.progress)
    except BundlerError as exc:
        raise type(exc)(f"{exc}; use --wheels-only to install only the wheels, or --registry HOST to push the "
                        "images to a registry instead") from None


def docker_client() -> object:
    """The engine DOCKER_HOST (or the default socket) points at."""
    import os

    import docker
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds
        host = os.environ.get("DOCKER_HOST") or "the default socket"
        raise DockerError(f"no docker engine at {host}: {short_error(exc)}") from None


def short_error(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:300]


class _TarWriter:
    """A tar stream written piece by piece into ``write``."""

    def __init__(self, write) -> None:  # noqa: ANN001
        self._write = write

    def add(self, name: str, size: int, chunks: Iterator[bytes]) -> None:
        self._write(tar_header(name, size))
        written = 0
        for chunk in chunks:
            self._write(chunk)
            written += len(chunk)
        self._write(b"\0" * (-written % BLOCK))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add(name, len(data), iter([data]))

    def end(self) -> None:
        self._write(b"\0" * (2 * BLOCK))


def run_names(image: ImageEntry) -> tuple[str, ...]:
    """The names docker gives an image: its tags, or for one pinned by digest alone a tag made of the
    digest (``repo:sha256-<12 hex>``), so that it can be run by name."""
    if image.tags:
        return image.tags
    return (f"{ImageRef.parse(image.name).familiar_name}:sha256-{image.digest.hex[:12]}",)


def _packed_layers(images: Sequence[ImageEntry]) -> dict[str, tuple[str, int]]:
    """Each layer carried compressed (an image carried exact): its blob -> the diff_id and size it unpacks to."""
    return {b.digest: (d, size) for i in images if i.exact
            for b, d, size in zip(i.blobs, i.layer_digests, i.layer_sizes)}


def _needed_blobs(images: Sequence[ImageEntry]) -> set:
    return {digest for image in images for digest in [image.id, image.manifest, *(b.digest for b in image.blobs)]}


# ---- docker engine ---------------------------------------------------------------------------

_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class DockerLoader:
    """``docker load`` through the engine API, fed while the bundle streams; the tar's end is sent last."""

    def __init__(self, client: object, progress: Progress = NULL) -> None:
        self.client, self.progress = client, progress
        self.missing: list[ImageEntry] = []
        self._needed: set = set()      # configs and diff_ids docker must receive
        self._packed: dict[str, tuple[str, int]] = {}   # compressed blob -> the diff_id and size it unpacks to
        self._sent: set = set()
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self._result: list[dict] = []
        self._error: BaseException | None = None
        self._tar = _TarWriter(self._put)

    def plan(self, images: Sequence[ImageEntry], indexes: Sequence[IndexEntry] = ()) -> list[str]:  # noqa: ARG002
        import docker
        notes = []
        for image in images:
            try:
                present = self.client.images.get(image.id)
            except docker.errors.ImageNotFound:
                self.missing.append(image)
                continue
            except docker.errors.APIError as exc:
                raise DockerError(f"the docker engine failed: {exc}") from None
            for tag in run_names(image):
                if tag not in present.tags:
                    present.tag(tag)
            notes.append(f"skipped {', '.join(run_names(image))}: already loaded ({image.id[:19]}..)")
        self._needed = {d for i in self.missing for d in [i.id, *i.layer_digests]}
        self._packed = _packed_layers(self.missing)
        self._check_space()
        if self.missing:
            self._thread = threading.Thread(target=self._load, name="docker-load", daemon=True)
            self._thread.start()
        return notes

    def wants(self, digest: str) -> bool:
        # a layer docker needs comes once, uncompressed or (an image carried exact) as its registry's blob
        raw = self._packed[digest][0] if digest in self._packed else digest
        return raw in self._needed and raw not in self._sent

    def done(self) -> bool:
        return not self.missing

    def _check_space(self) -> None:
        """docker load unpacks every layer twice (a temporary copy, then the layer store)."""
        import docker
        sizes = {d: size for i in self.missing for d, size in zip(i.layer_digests, i.layer_sizes or [])}
        needed = 2 * (sum(sizes.values()) or sum(i.size for i in self.missing))
        try:
            root = Path(self.client.info().get("DockerRootDir", ""))
        except docker.errors.APIError:
            return
        if needed and root.is_dir():   # the engine is on this machine: its disk can be read
            free = shutil.disk_usage(root).free
            if free < needed:
                raise DiskError(f"{root}: loading the images needs about {needed >> 20} MiB for docker, only "
                                f"{free >> 20} MiB is free")

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted()
            yield item

    def _load(self) -> None:
        try:
            self._result = list(self.client.api.load_image(self._chunks()))
        except BaseException as exc:  # noqa: BLE001 - reported to the streaming thread
            self._error = exc

    def _put(self, item: object) -> None:
        while True:
            if self._error is not None:
                raise DockerError(f"docker load failed: {short_error(self._error)}")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._thread is None or not self._thread.is_alive():
                    raise DockerError("docker load stopped reading the stream") from None

    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        if digest in self._packed:   # docker gets the layer's tar, decoded beside and checked on its way
            diff_id, raw_size = self._packed[digest]
            self._put(tar_header(blob_path(diff_id), raw_size))
            for _ in checked_beside(chunks, LayerCheck(blob_path(digest), diff_id, raw_size, self._put)):
                pass
            self._put(padding(raw_size))
            self._sent.add(diff_id)
        else:
            self._tar.add(blob_path(digest), size, chunks)
            self._sent.add(digest)

    def commit(self, layout: dict[str, bytes]) -> list[str]:  # noqa: ARG002 - the Loader interface
        if not self.missing:
            return []
        unsent = self._needed - self._sent
        if unsent:
            raise IntegrityError(f"blob {sorted(unsent)[0]}: an image needs it and the bundle did not hold it")
        entries: dict[str, dict] = {}
        for image in self.missing:
            entry = entries.setdefault(image.id, {"Config": blob_path(image.id), "RepoTags": [],
                                                  "Layers": [blob_path(d) for d in image.layer_digests]})
            entry["RepoTags"] += [t for t in run_names(image) if t not in entry["RepoTags"]]
        self._tar.add_bytes(DOCKER_MANIFEST_FILE, json.dumps(list(entries.values())).encode())
        self._tar.end()
        self._put(_END)
        count = len(self.missing)
        with waiting(self.progress, f"docker registering {count} image{'s' if count > 1 else ''}"):
            self._thread.join()
        if self._error is not None:
            raise DockerError(f"docker load failed: {short_error(self._error)}")
        errors = [r.get("errorDetail", {}).get("message") or r.get("error") for r in self._result
                  if "error" in r or "errorDetail" in r]
        if errors:
            raise DockerError(f"docker load failed: {errors[0]}")
        notes = []
        for image in self.missing:
            names = ", ".join(run_names(image))
            given = "" if image.tags else f" (pinned by digest only: {image.name} is named {names} here)"
            notes.append(f"loaded {names} ({image.id[:19]}..){given}")
        return notes

    def abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_ABORT, timeout=5)
            self._thread.join(timeout=30)
