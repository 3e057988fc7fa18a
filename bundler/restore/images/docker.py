"""Loading images into the local docker engine through its API, fed while the bundle streams. Each
layer goes to the engine in a stream of its own (``docker import`` for an image's first layer, ``docker
load`` for the others) as a nameless staging image (dockerload.py), ended once its bytes matched their
digest, so docker registers layers while the bundle still streams; the images are named by one last
load of their configs, sent only after the whole bundle was verified, and the names the bundle gives
images the engine already holds are tagged then too. A failure anywhere removes every staging image
this restore made."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from bundler.errors import DiskError, DockerError, IntegrityError
from bundler.format.archive import padding, tar_header
from bundler.format.decode import LayerCheck, checked_beside
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.paths import DOCKER_MANIFEST_FILE, blob_path
from bundler.oci.engine import short_error
from bundler.parallel import despite_interrupts
from bundler.progress import NULL, Progress, waiting
from bundler.restore.images.dockerload import Holdback, LayerChain, LoadStream
from bundler.restore.images.restorer import packed_layers, run_names
from bundler.restore.images.site import DockerSite

CONTAINERD_STORE = "io.containerd.snapshotter"   # docker's driver-type when containerd holds its images


class DockerLoader:
    """A stream per layer chain into the engine while the bundle streams, the images named by a last
    ``docker load`` once it was verified (see the module's docstring)."""

    def __init__(self, client: object, progress: Progress = NULL) -> None:
        self.client, self.progress = client, progress
        self.missing: list[ImageEntry] = []
        self._tags: list[tuple[object, str, str]] = []   # (an image the engine holds, a name to give it, its ID)
        self._needed: set = set()      # configs and diff_ids docker must receive
        self._packed: dict[str, tuple[str, int]] = {}   # compressed blob -> the diff_id and size it unpacks to
        self._sent: set = set()
        self._chains: dict[tuple[str, ...], LayerChain] = {}   # every layer's chain, when loaded chain by chain
        self._by_layer: dict[str, list[LayerChain]] = {}      # diff_id -> the chains it ends
        self._run = uuid.uuid4().hex                           # names this restore's staging images
        self._final: LoadStream | None = None                 # the configs, then manifest.json: names the images

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
        info = self._info()
        self._check_space(info)
        if self.missing:
            if not _containerd_store(info):   # its load needs every blob in one stream: one load as before
                self._plan_chains()
            self._final = LoadStream(self.client, "the images")
        return notes

    def _plan_chains(self) -> None:
        for image in self.missing:
            for index, diff_id in enumerate(image.layer_digests):
                key = tuple(image.layer_digests[:index + 1])
                if key not in self._chains:
                    self._chains[key] = chain = LayerChain(key, self._chains.get(key[:-1]), image.platform)
                    self._by_layer.setdefault(diff_id, []).append(chain)

    def held(self, diff_ids: Sequence[str]) -> None:
        """The engine holds this chain of layers already (a delta's): docker load finds it itself."""
        chain = self._chains.get(tuple(diff_ids))
        if chain is not None:
            chain.held = True
        self._sent.add(diff_ids[-1])

    def wants(self, digest: str) -> bool:
        # a layer docker needs comes once, uncompressed or (an image carried exact) as its registry's blob
        raw = self._packed[digest][0] if digest in self._packed else digest
        return raw in self._needed and raw not in self._sent

    def done(self) -> bool:
        return not self.missing and not self._tags

    def _info(self) -> dict:
        import docker
        try:
            return self.client.info()
        except docker.errors.APIError:
            return {}

    def _check_space(self, info: dict) -> None:
        """docker load unpacks every layer twice (a temporary copy, then the layer store)."""
        sizes = {d: size for i in self.missing for d, size in zip(i.layer_digests, i.layer_sizes or [])}
        needed = 2 * (sum(sizes.values()) or sum(i.size for i in self.missing))
        root = Path(info.get("DockerRootDir", ""))
        if needed and info and root.is_dir():   # the engine is on this machine: its disk can be read
            free = shutil.disk_usage(root).free
            if free < needed:
                raise DiskError(f"{root}: loading the images needs about {needed >> 20} MiB for docker, only "
                                f"{free >> 20} MiB is free")

    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        """Called with chunks that end only once every byte matched its digest (restorer.py, delta.py)."""
        diff_id, raw_size = self._packed.get(digest, (digest, size))
        chains = [c for c in self._by_layer.get(diff_id, ()) if not c.held and c.load is None]
        streams = [c.open(self.client, self._run) for c in chains] or [self._final]
        for stream in streams:
            if stream.framed:
                stream.put(tar_header(blob_path(diff_id), raw_size))

        def put(data: bytes) -> None:
            for stream in streams:
                stream.put(data)

        held = Holdback(put)   # the last piece waits for the verdict: no stream can end before it
        if digest in self._packed:   # docker gets the layer's tar, decoded beside and checked on its way
            for _ in checked_beside(chunks, LayerCheck(blob_path(digest), diff_id, raw_size, held)):
                pass
        else:
            for chunk in chunks:
                held(chunk)
        last = held.release()   # every byte matched
        for chain in chains:
            chain.close(last, raw_size, self._run)
        if not chains:
            put(last)
            put(padding(raw_size))
        self._sent.add(diff_id)

    def commit(self, layout: dict[str, bytes]) -> list[str]:  # noqa: ARG002 - the Loader interface
        import docker
        try:
            notes = self._end_load() if self.missing else []
        except BaseException:
            despite_interrupts(self.abort)
            raise
        for present, tag, image_id in self._tags:
            try:
                present.tag(tag)
            except docker.errors.APIError as exc:
                raise DockerError(f"tagging {image_id[:19]}.. as {tag}: {short_error(exc)}") from None
            notes.append(f"tagged {tag} ({image_id[:19]}..): already loaded")
        self._tags.clear()
        return notes

    def _end_load(self) -> list[str]:
        """Every layer's load registered, then the end of the last load: docker names the images."""
        unsent = self._needed - self._sent
        if unsent:
            raise IntegrityError(f"blob {sorted(unsent)[0]}: an image needs it and the bundle did not hold it")
        entries: dict[str, dict] = {}
        for image in self.missing:
            entry = entries.setdefault(image.id, {"Config": blob_path(image.id), "RepoTags": [],
                                                  "Layers": [blob_path(d) for d in image.layer_digests]})
            entry["RepoTags"] += [t for t in run_names(image) if t not in entry["RepoTags"]]
        count = len(self.missing)
        with waiting(self.progress, f"docker registering {count} image{'s' if count > 1 else ''}"):
            for chain in self._chains.values():
                if chain.load is not None:
                    chain.load.wait()
            self._final.tar.add_bytes(DOCKER_MANIFEST_FILE, json.dumps(list(entries.values())).encode())
            self._final.tar.end()
            self._final.end(b"")
            self._final.wait()
        self._remove_staging()
        notes = []
        for image in self.missing:
            names = ", ".join(run_names(image))
            given = "" if image.tags else f" (pinned by digest only: {image.name} is named {names} here)"
            notes.append(f"loaded {names} ({image.id[:19]}..){given}")
        return notes

    def _remove_staging(self) -> None:
        """The staging images this restore made; their layers stay while a named image holds them."""
        import docker
        for chain in self._chains.values():
            if chain.load is None or not chain.load.image_id:
                continue
            try:
                self.client.api.remove_image(chain.load.image_id, force=True)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                raise DockerError(f"removing the staging image {chain.load.image_id[:19]}..: "
                                  f"{short_error(exc)}") from None
            chain.load.image_id = ""

    def delta_side(self, head: Head) -> DockerSide:  # noqa: ARG002 - the Loader interface
        return DockerSide(self)

    def abort(self) -> None:
        loads = [c.load for c in self._chains.values() if c.load is not None]
        for load in [*loads, *([self._final] if self._final else [])]:
            load.abort()
        with contextlib.suppress(DockerError):   # the engine is gone or failing: the first error is the one told
            self._remove_staging()


def _containerd_store(info: dict) -> bool:
    return any(key == "driver-type" and str(value).startswith(CONTAINERD_STORE)
               for key, value in info.get("DriverStatus") or [])


class DockerSide:
    """What the docker engine holds for a delta: layers by chain, read back by ``docker save`` or its store."""

    where = "in the docker engine"
    takes_raw = True              # docker takes a layer in either form

    def __init__(self, loader: DockerLoader) -> None:
        self.loader, self.site = loader, DockerSite(loader.client)

    def reuse(self, image: ImageEntry, index: int) -> bool:
        if self.site.reuses(image.layer_digests[:index + 1]):
            self.loader.held(image.layer_digests[:index + 1])
            return True
        return False

    def readable(self, digest: str) -> bool:
        return self.site.holder(digest) is not None

    def read(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]:
        return self.site.export(sizes, folder)

    def start(self) -> None:
        pass
