"""The images' part of a delta's restore: each layer the bundle does not carry, from the destination.

For every layer the destination must receive and the bundle lacks, in this order: the destination
uses its own copy as it is (docker: the same chain of layers; a registry: the blob, mounted from a
repository that has it; containerd: the content); or its bytes are read out of the destination
(``docker save`` of an image holding it; a registry's or containerd's blob), checked against their
digest, and sent like a member; or the piece is lacking, for bases.py to take from a ``--base``
bundle. A layer rebuilt by a patch needs the bytes of the layer the patch reads, found the same
way; it is rebuilt into a file, checked against its diff_id, and only then sent.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.bases import Piece
from bundler.errors import IntegrityError, NetworkError
from bundler.files import CHUNK, disk_error
from bundler.format import Digest, Head, blob_path, layout_path
from bundler.format_delta import Patch
from bundler.format_images import ImageEntry
from bundler.patch import apply_patch
from bundler.site_images import DockerSite, containerd_content, ctr_export

if TYPE_CHECKING:
    from bundler.archive import MemberReader
    from bundler.containerd import ContainerdImporter
    from bundler.loaders import DockerLoader
    from bundler.push import RegistryPusher


def image_name(image: ImageEntry) -> str:
    return f"image {image.tags[0] if image.tags else image.name} ({image.platform})"


def repository(name: str) -> str | None:
    from bundler.reference import ImageRef
    try:
        return ImageRef.parse(name).repository
    except Exception:  # noqa: BLE001 - a name bundler cannot parse names no repository
        return None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _copy_checked(chunks: Iterator[bytes], path: Path, digest: str, what: str) -> None:
    hasher = hashlib.sha256()
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise disk_error(exc, f"writing {path}") from None
    if "sha256:" + hasher.hexdigest() != digest:
        path.unlink(missing_ok=True)
        raise IntegrityError(f"{what}: the site's copy of {digest[:19]}.. hashes to sha256:{hasher.hexdigest()[:12]}..")


# ---- what each destination holds ----------------------------------------------------------------

class DockerSide:
    def __init__(self, loader: DockerLoader) -> None:
        self.loader, self.site = loader, DockerSite(loader.client)
        self.where = "in the docker engine"

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


class RegistrySide:
    def __init__(self, loader: RegistryPusher, head: Head) -> None:
        self.loader, self.where = loader, f"on {loader.host}"
        names = [i.name for i in head.images] + [n for b in head.delta.bases for n in b.images]
        self.candidates = [r for r in dict.fromkeys(map(repository, names)) if r]
        self._holders: dict[str, str | None] = {}
        self._mounts: list[tuple[str, str, str]] = []

    def holder(self, digest: str) -> str | None:
        if digest not in self._holders:
            self._holders[digest] = next((r for r in self.candidates if self.loader._exists(r, digest)), None)
        return self._holders[digest]

    def reuse(self, image: ImageEntry, index: int) -> bool:
        digest = image.blobs[index].digest
        lacking = self.loader._repos.get(digest) or []
        source = self.holder(digest) if lacking else None
        if lacking and source is None:
            return False
        self._mounts += [(digest, source, r) for r in lacking]
        self.loader._repos[digest] = []
        return True

    def readable(self, digest: str) -> bool:
        return self.holder(digest) is not None

    def read(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]:
        from bundler.registry import iter_body
        digests = sorted(sizes)
        found = {}
        for digest in digests:
            source = self.holder(digest)
            response = self.loader._call(f"reading {digest[:19]}..", source, f"blobs/{digest}", stream=True)
            with response:
                if response.status_code != 200:
                    raise NetworkError(f"reading {digest[:19]}.. from {self.loader.host}/{source}: HTTP "
                                       f"{response.status_code}")
                path = folder / Digest(digest).hex
                _copy_checked(iter_body(response, self.loader.client.policy), path, digest,
                              f"{self.loader.host}/{source}")
            found[digest] = path
        return found

    def start(self) -> None:
        for digest, source, repository in self._mounts:
            self.loader.mount(digest, source, repository)


class ContainerdSide:
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
            _copy_checked(_file_chunks(path), path.with_suffix(".checked"), digest, "containerd")
            path.with_suffix(".checked").replace(path)
            found[digest] = path
        return found

    def start(self) -> None:
        pass


def side_for(loader: object, head: Head) -> DockerSide | RegistrySide | ContainerdSide:
    from bundler.containerd import ContainerdImporter
    from bundler.loaders import DockerLoader
    if isinstance(loader, DockerLoader):
        return DockerSide(loader)
    if isinstance(loader, ContainerdImporter):
        return ContainerdSide(loader)
    return RegistrySide(loader, head)


# ---- the delta ------------------------------------------------------------------------------------

class ImagesDelta:
    """See the module's docstring: ``lacking`` after the loader planned, ``supply`` for what a --base
    bundle gives, ``start`` before the bundle streams, ``patch`` for each patch member."""

    def __init__(self, head: Head, loader: object, images: Sequence[ImageEntry]) -> None:
        self.head, self.loader, self.images = head, loader, images
        self.carried = {m.path for m in head.members}
        self.patches: dict[str, Patch] = {p.layer: p for p in head.delta.patches}
        self.side = None
        self.scratch: Path | None = None
        self._read: dict[str, int] = {}          # digest -> size: to read out of the destination at start
        self._paths: dict[str, Path] = {}        # what was read, or taken from a base bundle: verified files
        self._send: dict[str, int] = {}          # layers to send the loader as they are: digest -> size
        self._bases: set[str] = set()            # the layers patches read

    def lacking(self, scratch: Path) -> list[Piece]:
        if self.loader.done():
            return []
        self.scratch, self.side = scratch, side_for(self.loader, self.head)
        pieces: dict[str, Piece] = {}
        for image in self.images:
            for index, (diff_id, blob) in enumerate(zip(image.layer_digests, image.blobs)):
                if layout_path(blob_path(blob.digest)) in self.carried or not self.loader.wants(blob.digest):
                    continue
                patch = self.patches.get(diff_id) if not image.exact else None
                if patch is not None:
                    self._bases.add(patch.base)
                    self._need(patch.base, patch.base_size, pieces, f"the rebuilt layer {diff_id[:19]}.. of "
                                                                    f"{image_name(image)}")
                elif not self.side.reuse(image, index):
                    raw = isinstance(self.side, DockerSide)   # docker takes a layer in either form
                    digest, size = (diff_id, image.layer_sizes[index]) if raw else (blob.digest, blob.size)
                    self._send[digest] = size
                    self._need(digest, size, pieces, image_name(image), raw)
        return list(pieces.values())

    def _need(self, digest: str, size: int, pieces: dict[str, Piece], needed_by: str, raw: bool = True) -> None:
        if digest in pieces or digest in self._read:
            return
        if self.side.readable(digest):
            self._read[digest] = size
        else:
            pieces[digest] = Piece("layer", digest, size, needed_by, self.side.where,
                                   layout_path(blob_path(digest)), raw=raw)

    def supply(self, piece: Piece, path: Path) -> None:
        self._paths[piece.digest] = path

    def start(self) -> None:
        """Read out what the destination holds (checked), and send what is not a patch's base."""
        if self.side is None:
            return
        self.side.start()
        if self._read:
            found = self.side.read(dict(self._read), self.scratch)
            for digest in self._read:
                if digest not in found:
                    raise IntegrityError(f"layer {digest}: {self.side.where} no longer holds it")
                self._paths[digest] = found[digest]
        for digest, size in sorted(self._send.items()):
            self.loader.blob(digest, size, _file_chunks(self._paths[digest]))
            if digest not in self._bases:
                self._paths.pop(digest).unlink()

    def patch(self, path: str, member: MemberReader) -> None:
        layer = Digest.from_hex(path.rsplit("/", 1)[1])
        patch = self.patches.get(layer)
        if patch is None:
            raise IntegrityError(f"member {path}: no patch of bundle.json is this member")
        if not self.loader.wants(layer):
            member.finish()
            return
        rebuilt = self.scratch / f"rebuilt-{layer.hex}"
        apply_patch(io.BufferedReader(member, CHUNK), self._paths[patch.base], patch.base_size, rebuilt, patch.size,
                    layer, f"member {path}")
        member.finish()   # the patch itself matched bundle.json, and the layer it rebuilt its diff_id
        self.loader.blob(layer, patch.size, _file_chunks(rebuilt))
        rebuilt.unlink()
