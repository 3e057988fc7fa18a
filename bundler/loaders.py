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
from bundler.archive import BLOCK, MemberReader, tar_header
from bundler.errors import BundlerError, DiskError, DockerError, IntegrityError, NetworkError
from bundler.files import CHUNK
from bundler.format import (
    DOCKER_MANIFEST_FILE,
    LAYOUT_DIR,
    OCI_INDEX_FILE,
    OCI_LAYOUT,
    OCI_MANIFEST,
    Digest,
    Head,
    ImageEntry,
    blob_path,
)
from bundler.mirrors import OFFICIAL, Endpoint, EndpointError, Fallback, RetryPolicy, http_error, registry_base_url
from bundler.reference import ImageRef
from bundler.registry import RegistryClient

if TYPE_CHECKING:
    from bundler.context import Context
    from bundler.restore import RestoreOptions, RestoreReport

MAX_LAYOUT_FILE = 16 << 20     # index.json, manifest.json and the manifests are kilobytes; refuse a bomb
CTR_TIMEOUT = 120


class Loader(Protocol):
    def plan(self, images: Sequence[ImageEntry]) -> list[str]: ...   # notes on what is skipped
    def wants(self, digest: str) -> bool: ...
    def done(self) -> bool: ...                                        # nothing to load at all
    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None: ...
    def commit(self, layout: dict[str, bytes]) -> list[str]: ...       # notes on what was done
    def abort(self) -> None: ...


class ImagesRestorer:
    """The image layout's members, as the bundle streams, into one loader."""

    def __init__(self, head: Head, loader: Loader) -> None:
        self.images, self.loader = head.images, loader
        self._layout: dict[str, bytes] = {}      # index.json, manifest.json, the manifests: small, kept
        self._manifests = {blob_path(i.manifest) for i in head.images}

    def plan(self, report: RestoreReport) -> None:
        report.notes += self.loader.plan(self.images)

    def done(self) -> bool:
        return self.loader.done()

    def start(self) -> None:
        pass

    def wants(self, path: str) -> bool:
        return path.startswith(f"{LAYOUT_DIR}/")

    def member(self, path: str, member: MemberReader) -> None:
        name = path[len(LAYOUT_DIR) + 1:]
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


def _needed_blobs(images: Sequence[ImageEntry]) -> set:
    return {digest for image in images for digest in [image.id, image.manifest, *image.layer_digests]}


# ---- docker engine ---------------------------------------------------------------------------

_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class DockerLoader:
    """``docker load`` through the engine API, fed while the bundle streams; the tar's end is sent last."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.missing: list[ImageEntry] = []
        self._needed: set = set()
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self._result: list[dict] = []
        self._error: BaseException | None = None
        self._tar = _TarWriter(self._put)

    def plan(self, images: Sequence[ImageEntry]) -> list[str]:
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
            for tag in image.tags:
                if tag not in present.tags:
                    present.tag(tag)
            notes.append(f"skipped {', '.join(image.tags) or image.id[:19]}: already loaded ({image.id[:19]}..)")
        self._needed = {d for i in self.missing for d in [i.id, *i.layer_digests]}
        self._check_space()
        if self.missing:
            self._thread = threading.Thread(target=self._load, name="docker-load", daemon=True)
            self._thread.start()
        return notes

    def wants(self, digest: str) -> bool:
        return digest in self._needed

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
        self._tar.add(blob_path(digest), size, chunks)

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        if not self.missing:
            return []
        entries = json.loads(layout[DOCKER_MANIFEST_FILE])
        ids = {blob_path(i.id) for i in self.missing}
        manifest = json.dumps([e for e in entries if e["Config"] in ids]).encode()
        self._tar.add_bytes(DOCKER_MANIFEST_FILE, manifest)
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
            names = ", ".join(image.tags) or "untagged"
            notes.append(f"loaded {names} ({image.id[:19]}..)")
        return notes

    def abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_ABORT, timeout=5)
            self._thread.join(timeout=30)


# ---- a private registry ----------------------------------------------------------------------

class RegistryPusher:
    """Pushes the images to ``host`` under their own repository paths; manifests go last."""

    def __init__(self, host: str, policy: RetryPolicy, insecure: bool = False,
                 docker_config: Path | None = None) -> None:
        self.host = host
        url = registry_base_url(Endpoint(OFFICIAL), host)
        if insecure:
            url = "http://" + url.split("://", 1)[1]
        self.endpoint = Endpoint(url, "--registry")
        self.client = RegistryClient(host, (self.endpoint,), Fallback(policy), docker_config)
        self.images: list[ImageEntry] = []
        self._repos: dict[str, list[str]] = {}     # blob digest -> repositories that need it

    def repository(self, image: ImageEntry) -> str:
        return ImageRef.parse(image.name).repository

    def target(self, image: ImageEntry) -> str:
        ref = ImageRef.parse(image.name)
        where = f"{self.host}/{ref.repository}"
        return f"{where}:{ref.tag}" if ref.tag else f"{where}@{image.manifest}"

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

    def _has_manifest(self, image: ImageEntry) -> bool:
        ref = ImageRef.parse(image.name)
        response = self._call(f"checking {self.target(image)}", self.repository(image),
                              f"manifests/{ref.tag or image.manifest}", method="HEAD",
                              headers={"Accept": OCI_MANIFEST})
        response.close()
        return response.status_code == 200 and response.headers.get("Docker-Content-Digest") == image.manifest

    def plan(self, images: Sequence[ImageEntry]) -> list[str]:
        present = [self._has_manifest(i) for i in images]
        notes = [f"skipped {self.target(i)}: already on {self.host}" for i, p in zip(images, present) if p]
        images = [i for i, p in zip(images, present) if not p]
        self.images = images
        for image in images:
            repository = self.repository(image)
            for digest in [image.id, *image.layer_digests]:
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
            mount = self._call(f"mounting {digest[:19]}..", repository, f"blobs/uploads/?mount={digest}&from={first}",
                               method="POST")
            mount.close()
            if mount.status_code != 201:
                raise NetworkError(f"{self.host} would not mount {digest[:19]}.. from {first} into {repository} "
                                   f"({http_error(mount)})")

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        notes = []
        for image in self.images:
            repository, ref = self.repository(image), ImageRef.parse(image.name)
            body = layout[blob_path(image.manifest)]
            reference = ref.tag or image.manifest
            response = self._call(f"pushing the manifest of {image.name}", repository, f"manifests/{reference}",
                                  method="PUT", data=body, headers={"Content-Type": OCI_MANIFEST})
            response.close()
            if response.status_code != 201:
                raise NetworkError(f"pushing {self.target(image)}: {http_error(response)}")
            notes.append(f"pushed {self.target(image)}")
        return notes

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

    def plan(self, images: Sequence[ImageEntry]) -> list[str]:
        existing = self._existing()
        notes = []
        for image in images:
            name = image.annotations.get("io.containerd.image.name")
            if name and existing.get(name) == image.manifest:
                notes.append(f"skipped {name}: already in containerd namespace {self.namespace}")
            else:
                self.missing.append(image)
        self._needed = _needed_blobs(self.missing)
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
        self._tar.add(blob_path(digest), size, chunks)

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        if not self.missing:
            return []
        manifests = {i.manifest for i in self.missing}
        index = json.loads(layout[OCI_INDEX_FILE])
        index["manifests"] = [m for m in index["manifests"] if m["digest"] in manifests]
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

