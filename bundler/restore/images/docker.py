"""Loading images into the local docker engine: ``docker load`` through the engine API, fed while the
bundle streams, its tar's end sent only after the whole bundle was verified; the names the bundle
gives images the engine already holds are tagged then too, not before."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from bundler.errors import DiskError, DockerError, IntegrityError
from bundler.format.archive import TarWriter, padding, tar_header
from bundler.format.decode import LayerCheck, checked_beside
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.paths import DOCKER_MANIFEST_FILE, blob_path
from bundler.oci.engine import short_error
from bundler.progress import NULL, Progress, waiting
from bundler.restore.images.restorer import packed_layers, run_names
from bundler.restore.images.site import DockerSite

_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class DockerLoader:
    """``docker load`` through the engine API, fed while the bundle streams; the tar's end is sent last."""

    def __init__(self, client: object, progress: Progress = NULL) -> None:
        self.client, self.progress = client, progress
        self.missing: list[ImageEntry] = []
        self._tags: list[tuple[object, str, str]] = []   # (an image the engine holds, a name to give it, its ID)
        self._needed: set = set()      # configs and diff_ids docker must receive
        self._packed: dict[str, tuple[str, int]] = {}   # compressed blob -> the diff_id and size it unpacks to
        self._sent: set = set()
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self._result: list[dict] = []
        self._error: BaseException | None = None
        self._tar = TarWriter(self._put)

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
            # named in commit(), once every member matched: a damaged bundle moves no tag
            self._tags += [(present, tag, image.id) for tag in run_names(image)
                           if tag not in present.tags and all(tag != t for _, t, _ in self._tags)]
            notes.append(f"skipped {', '.join(run_names(image))}: already loaded ({image.id[:19]}..)")
        self._needed = {d for i in self.missing for d in [i.id, *i.layer_digests]}
        self._packed = packed_layers(self.missing)
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
        return not self.missing and not self._tags

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
        import docker
        notes = self._end_load() if self.missing else []
        for present, tag, image_id in self._tags:
            try:
                present.tag(tag)
            except docker.errors.APIError as exc:
                raise DockerError(f"tagging {image_id[:19]}.. as {tag}: {short_error(exc)}") from None
            notes.append(f"tagged {tag} ({image_id[:19]}..): already loaded")
        self._tags.clear()
        return notes

    def _end_load(self) -> list[str]:
        """The end of docker load's stream: docker registers the images."""
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

    def delta_side(self, head: Head) -> DockerSide:  # noqa: ARG002 - the Loader interface
        return DockerSide(self)

    def abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_ABORT, timeout=5)
            self._thread.join(timeout=30)


class DockerSide:
    """What the docker engine holds for a delta: layers by chain, read back by ``docker save`` or its store."""

    where = "in the docker engine"
    takes_raw = True              # docker takes a layer in either form

    def __init__(self, loader: DockerLoader) -> None:
        self.loader, self.site = loader, DockerSite(loader.client)

    def reuse(self, image: ImageEntry, index: int) -> bool:
        if self.site.reuses(image.layer_digests[:index + 1]):
            self.loader._sent.add(image.layer_digests[index])   # docker load finds the chain itself
            return True
        return False

    def readable(self, digest: str) -> bool:
        return self.site.holder(digest) is not None

    def read(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]:
        return self.site.export(sizes, folder)

    def start(self) -> None:
        pass
