"""Restoring images into containerd: ``restore --containerd`` feeds ``ctr images import`` on its stdin."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from bundler import proc
from bundler.digest import Digest
from bundler.errors import DockerError
from bundler.files import copy_checked, file_chunks
from bundler.format.archive import TarWriter
from bundler.format.decode import LayerCheck, checked_beside
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.media import OCI_INDEX
from bundler.format.paths import OCI_INDEX_FILE, OCI_LAYOUT, blob_path
from bundler.progress import NULL, Progress, waiting
from bundler.restore.images.restorer import needed_blobs, packed_layers
from bundler.restore.images.site import containerd_content, ctr_export

DEFAULT_CONTAINERD = "/run/containerd/containerd.sock"
CTR_TIMEOUT = 120


class ContainerdImporter:
    """``ctr images import`` fed on its stdin; a killed import leaves no image record behind."""

    def __init__(self, address: str = DEFAULT_CONTAINERD, namespace: str = "k8s.io", progress: Progress = NULL) -> None:
        self.progress = progress
        self.ctr = shutil.which("ctr")
        if self.ctr is None:
            raise DockerError("ctr is not installed (it comes with containerd)")
        self.base = [self.ctr, "--address", address, "--namespace", namespace]
        self.address, self.namespace = address, namespace
        self.missing: list[ImageEntry] = []
        self._needed: set = set()
        self._packed: dict[str, tuple[str, int]] = {}
        self._process: subprocess.Popen | None = None
        self._tar = TarWriter(self._write)

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
        self._needed = needed_blobs(self.missing)
        self._packed = packed_layers(self.missing)
        if self.missing:
            self._process = proc.start([*self.base, "images", "import", "--all-platforms", "-"],
                                       "importing into containerd", stdin=subprocess.PIPE)
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
        count = len(self.missing)
        try:
            with waiting(self.progress, f"containerd importing {count} image{'s' if count > 1 else ''}"):
                _, err = self._process.communicate(timeout=CTR_TIMEOUT * 10)
        except subprocess.TimeoutExpired:
            self.abort()
            raise DockerError(f"ctr images import gave no answer within {CTR_TIMEOUT * 10} s after the whole "
                              "bundle was sent; it was stopped") from None
        if self._process.returncode:
            raise DockerError(f"ctr images import failed: {err.decode(errors='replace').strip()[:300]}")
        return [f"imported {i.annotations.get('io.containerd.image.name', i.name)} into containerd "
                f"namespace {self.namespace}" for i in self.missing]

    def delta_side(self, head: Head) -> ContainerdSide:  # noqa: ARG002 - the Loader interface
        return ContainerdSide(self)

    def abort(self) -> None:
        if self._process is not None and self._process.poll() is None:
            proc.stop(self._process)


class ContainerdSide:
    """What containerd holds for a delta: content by digest, which an import refers to without sending it."""

    takes_raw = False

    def __init__(self, loader: ContainerdImporter) -> None:
        self.loader, self.content = loader, containerd_content(loader.base)
        self.where = f"in containerd namespace {loader.namespace}"

    def reuse(self, image: ImageEntry, index: int) -> bool:
        return image.blobs[index].digest in self.content   # the import refers to it by digest

    def readable(self, digest: str) -> bool:
        return digest in self.content

    def read(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]:
        found = {}
        for digest in sorted(sizes):
            path = folder / Digest(digest).hex
            ctr_export(self.loader.base, digest, path)
            copy_checked(file_chunks(path), path.with_suffix(".checked"), digest, what="containerd")
            path.with_suffix(".checked").replace(path)
            found[digest] = path
        return found

    def start(self) -> None:
        pass
