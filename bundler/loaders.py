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
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urljoin

from bundler import proc
from bundler.archive import BLOCK, MemberReader, padding, tar_header
from bundler.decode import LayerCheck, checked_beside
from bundler.errors import BundlerError, DiskError, DockerError, IntegrityError, NetworkError
from bundler.files import CHUNK
from bundler.format import (
    DOCKER_MANIFEST_FILE,
    LAYOUT_DIR,
    OCI_INDEX,
    OCI_INDEX_FILE,
    OCI_LAYOUT,
    Digest,
    Head,
    blob_path,
)
from bundler.format_images import ImageEntry, IndexEntry
from bundler.mirrors import OFFICIAL, Endpoint, EndpointError, Fallback, RetryPolicy, http_error, registry_base_url
from bundler.reference import ImageRef
from bundler.registry import RegistryClient

if TYPE_CHECKING:
    from bundler.bases import Piece
    from bundler.context import Context
    from bundler.restore import RestoreOptions, RestoreReport

MAX_LAYOUT_FILE = 16 << 20     # index.json, manifest.json and the manifests are kilobytes; refuse a bomb
CTR_TIMEOUT = 120


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
        return RegistryPusher(options.registry, ctx.policy, options.insecure)
    if options.containerd:
        return ContainerdImporter(options.containerd_address or DEFAULT_CONTAINERD, options.namespace)
    try:
        return DockerLoader(docker_client())
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

    def __init__(self, client: object) -> None:
        self.client = client
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


# ---- a private registry ----------------------------------------------------------------------

class RegistryPusher:
    """Pushes the images to ``host`` under their own repository paths; manifests go last, and an image
    carried for several platforms gets its index under the tag (its platforms' manifests by digest)."""

    def __init__(self, host: str, policy: RetryPolicy, insecure: bool = False,
                 docker_config: Path | None = None) -> None:
        self.host = host
        url = registry_base_url(Endpoint(OFFICIAL), host)
        if insecure:
            url = "http://" + url.split("://", 1)[1]
        self.endpoint = Endpoint(url, "--registry")
        self.client = RegistryClient(host, (self.endpoint,), Fallback(policy), docker_config)
        self.images: list[ImageEntry] = []
        self.indexes: list[IndexEntry] = []
        self._listed: set[str] = set()             # manifests an index names: pushed by digest, not tag
        self._repos: dict[str, list[str]] = {}     # blob digest -> repositories that need it

    def _where(self, entry: ImageEntry | IndexEntry) -> tuple[str, str]:
        """The repository and reference an image (or an index) goes to: its tag, or its digest for a
        platform an index names (and for an image pinned by digest alone)."""
        ref = ImageRef.parse(entry.name)
        digest = entry.digest if isinstance(entry, IndexEntry) else entry.manifest
        return ref.repository, ref.tag if ref.tag and digest not in self._listed else digest

    def target(self, entry: ImageEntry | IndexEntry) -> str:
        repository, reference = self._where(entry)
        return f"{self.host}/{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"

    def _call(self, what: str, repository: str, tail: str, **kwargs: object):  # noqa: ANN202
        try:
            return self.client.request(self.endpoint, repository, tail, actions="pull,push", **kwargs)
        except EndpointError as exc:
            raise NetworkError(f"{what} on {self.host}: {exc}") from None
        except Exception as exc:
            from bundler.mirrors import classify
            found = classify(exc)
            if found is None:
                raise
            raise NetworkError(f"{what} on {self.host}: {found[1]}") from None

    def _exists(self, repository: str, digest: str) -> bool:
        response = self._call(f"checking {digest[:19]}..", repository, f"blobs/{digest}", method="HEAD")
        response.close()
        return response.status_code == 200

    def _has(self, entry: ImageEntry | IndexEntry, digest: str, media_type: str) -> bool:
        """Whether the registry already serves ``digest`` where ``entry`` goes."""
        repository, reference = self._where(entry)
        response = self._call(f"checking {self.target(entry)}", repository, f"manifests/{reference}", method="HEAD",
                              headers={"Accept": media_type})
        response.close()
        return response.status_code == 200 and response.headers.get("Docker-Content-Digest") == digest

    def plan(self, images: Sequence[ImageEntry], indexes: Sequence[IndexEntry] = ()) -> list[str]:
        self._listed = {digest for index in indexes for digest in index.manifests}
        self.indexes = [i for i in indexes if not self._has(i, i.digest, i.media_type)]
        notes = [f"skipped {self.target(i)}: already on {self.host}" for i in indexes if i not in self.indexes]
        present = [self._has(i, i.manifest, i.manifest_media_type) for i in images]
        notes += [f"skipped {self.target(i)}: already on {self.host}" for i, p in zip(images, present)
                  if p and i.manifest not in self._listed]
        self.images = [i for i, p in zip(images, present) if not p]
        needs = [(image.name, [image.id, *(b.digest for b in image.blobs)]) for image in self.images]
        needs += [(index.name, [b.digest for a in index.attachments for b in a.blobs]) for index in self.indexes]
        for name, digests in needs:
            repository = ImageRef.parse(name).repository
            for digest in digests:
                repos = self._repos.setdefault(digest, [])
                if repository not in repos:
                    repos.append(repository)
        skipped = 0
        for digest, repos in list(self._repos.items()):
            missing = [r for r in repos if not self._exists(r, digest)]
            skipped += len(repos) - len(missing)
            self._repos[digest] = missing
        if skipped:
            notes.append(f"{skipped} blobs already on {self.host}, not sent again")
        return notes

    def wants(self, digest: str) -> bool:
        return bool(self._repos.get(digest))

    def done(self) -> bool:
        return not self.images

    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:  # noqa: ARG002 - the Loader interface
        first, *others = self._repos[digest]
        start = self._call(f"starting the upload of {digest[:19]}..", first, "blobs/uploads/", method="POST")
        start.close()
        if start.status_code != 202 or "Location" not in start.headers:
            raise NetworkError(f"starting the upload of {digest[:19]}.. to {self.host}/{first}: "
                               f"{http_error(start)}")
        location = urljoin(self.endpoint.url + "/", start.headers["Location"])
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        done = self._call(f"uploading {digest[:19]}..", first, "", method="PUT", url=location,
                          data=chunks, headers={"Content-Type": "application/octet-stream"})
        done.close()
        if done.status_code != 201:
            raise NetworkError(f"uploading {digest[:19]}.. to {self.host}/{first}: {http_error(done)}")
        for repository in others:
            self.mount(digest, first, repository)

    def mount(self, digest: str, source: str, repository: str) -> None:
        """Make the blob ``source`` holds ``repository``'s too, without sending it again."""
        mount = self._call(f"mounting {digest[:19]}..", repository, f"blobs/uploads/?mount={digest}&from={source}",
                           method="POST")
        mount.close()
        if mount.status_code != 201:
            raise NetworkError(f"{self.host} would not mount {digest[:19]}.. from {source} into {repository} "
                               f"({http_error(mount)})")

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        notes = []
        for image in self.images:
            self._put_manifest(image, layout[blob_path(image.manifest)], image.manifest_media_type)
            if image.manifest not in self._listed:
                notes.append(f"pushed {self.target(image)}")
        for index in self.indexes:   # after the manifests it names: a registry checks they are there
            for attachment in index.attachments:
                self._put_manifest(index, layout[blob_path(attachment.digest)], attachment.media_type,
                                   attachment.digest)
            self._put_manifest(index, layout[blob_path(index.digest)], index.media_type)
            platforms = ", ".join(i.platform for i in self.images if i.manifest in index.manifests)
            notes.append(f"pushed {self.target(index)}" + (f" (an index of {platforms})" if platforms else ""))
        return notes

    def _put_manifest(self, entry: ImageEntry | IndexEntry, body: bytes, media_type: str,
                      reference: str | None = None) -> None:
        repository, where = self._where(entry)
        reference = reference or where
        response = self._call(f"pushing the manifest of {entry.name}", repository, f"manifests/{reference}",
                              method="PUT", data=body, headers={"Content-Type": media_type})
        response.close()
        if response.status_code != 201:
            raise NetworkError(f"pushing {self.target(entry)}: {http_error(response)}")

    def abort(self) -> None:
        pass   # blobs without a manifest are invisible, and garbage-collected by the registry


# ---- containerd --------------------------------------------------------------------------------

DEFAULT_CONTAINERD = "/run/containerd/containerd.sock"


class ContainerdImporter:
    """``ctr images import`` fed on its stdin; a killed import leaves no image record behind."""

    def __init__(self, address: str = DEFAULT_CONTAINERD, namespace: str = "k8s.io") -> None:
        self.ctr = shutil.which("ctr")
        if self.ctr is None:
            raise DockerError("ctr is not installed (it comes with containerd)")
        self.base = [self.ctr, "--address", address, "--namespace", namespace]
        self.address, self.namespace = address, namespace
        self.missing: list[ImageEntry] = []
        self._needed: set = set()
        self._packed: dict[str, tuple[str, int]] = {}
        self._process: subprocess.Popen | None = None
        self._tar = _TarWriter(self._write)

    def _existing(self) -> dict[str, str]:
        result = proc.run([*self.base, "images", "ls"], f"listing the images of containerd at {self.address}",
                          CTR_TIMEOUT)
        if result.returncode:
            raise DockerError(f"containerd at {self.address} is not reachable: {result.stderr.strip()[:300]}")
        found = {}
        for line in result.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                found[parts[0]] = parts[2]
        return found

    def plan(self, images: Sequence[ImageEntry], indexes: Sequence[IndexEntry] = ()) -> list[str]:  # noqa: ARG002
        existing = self._existing()
        notes = []
        for image in images:
            name = image.annotations.get("io.containerd.image.name")
            if name and existing.get(name) == image.manifest:
                notes.append(f"skipped {name}: already in containerd namespace {self.namespace}")
            else:
                self.missing.append(image)
        self._needed = _needed_blobs(self.missing)
        self._packed = _packed_layers(self.missing)
        if self.missing:
            self._process = subprocess.Popen([*self.base, "images", "import", "--all-platforms", "-"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return notes

    def wants(self, digest: str) -> bool:
        return digest in self._needed

    def done(self) -> bool:
        return not self.missing

    def _write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
        except BrokenPipeError:
            _, err = self._process.communicate()
            raise DockerError(f"ctr images import failed: {err.decode(errors='replace').strip()[:300]}") from None

    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        if digest in self._packed:   # containerd keeps the registry's blob; it is checked on its way in
            diff_id, raw_size = self._packed[digest]
            chunks = checked_beside(chunks, LayerCheck(blob_path(digest), diff_id, raw_size))
        self._tar.add(blob_path(digest), size, chunks)

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        if not self.missing:
            return []
        # one platform's manifest per image, named: an index of several would send containerd looking
        # for the platforms this restore does not carry into it
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": i.manifest_media_type, "digest": i.manifest, "size": i.manifest_size,
                                **({"annotations": dict(i.annotations)} if i.annotations else {})}
                               for i in self.missing]}
        self._tar.add_bytes(OCI_INDEX_FILE, json.dumps(index).encode())
        self._tar.add_bytes(OCI_LAYOUT, layout[OCI_LAYOUT])
        self._tar.end()
        try:
            _, err = self._process.communicate(timeout=CTR_TIMEOUT * 10)
        except subprocess.TimeoutExpired:
            self.abort()
            raise DockerError(f"ctr images import gave no answer within {CTR_TIMEOUT * 10} s after the whole "
                              "bundle was sent; it was stopped") from None
        if self._process.returncode:
            raise DockerError(f"ctr images import failed: {err.decode(errors='replace').strip()[:300]}")
        return [f"imported {i.annotations.get('io.containerd.image.name', i.name)} into containerd "
                f"namespace {self.namespace}" for i in self.missing]

    def abort(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

