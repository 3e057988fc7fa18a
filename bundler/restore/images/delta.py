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

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.files import CHUNK, file_chunks
from bundler.format.archive import MemberReader
from bundler.format.delta import Patch
from bundler.format.head import Head
from bundler.format.images import ImageEntry
from bundler.format.patch import apply_patch
from bundler.format.paths import blob_path, layout_path
from bundler.restore.options import Piece


def image_name(image: ImageEntry) -> str:
    return f"image {image.tags[0] if image.tags else image.name} ({image.platform})"


class DeltaSide(Protocol):
    """What an image destination holds for a delta's restore; each loader gives its own (``delta_side``)."""

    where: str                   # "in the docker engine", "on HOST", "in containerd namespace NS"
    takes_raw: bool              # it takes a layer unpacked as well as compressed (docker): ask for its diff_id

    def reuse(self, image: ImageEntry, index: int) -> bool: ...   # its own copy of the layer serves as it is
    def readable(self, digest: str) -> bool: ...                  # its bytes can be read back out of it
    def read(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]: ...   # read out, checked
    def start(self) -> None: ...                                  # before the bundle streams


class DeltaLoader(Protocol):
    """What ImagesDelta asks of an image loader (restore/images/restorer.py's Loader)."""

    def done(self) -> bool: ...
    def wants(self, digest: str) -> bool: ...
    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None: ...
    def delta_side(self, head: Head) -> DeltaSide: ...


# ---- the delta ------------------------------------------------------------------------------------

class ImagesDelta:
    """See the module's docstring: ``lacking`` after the loader planned, ``supply`` for what a --base
    bundle gives, ``start`` before the bundle streams, ``patch`` for each patch member."""

    def __init__(self, head: Head, loader: DeltaLoader, images: Sequence[ImageEntry]) -> None:
        self.head, self.loader, self.images = head, loader, images
        self.carried = {m.path for m in head.members}
        self.patches: dict[str, Patch] = {p.layer: p for p in head.delta.patches}
        self.side: DeltaSide | None = None
        self.scratch: Path | None = None
        self._read: dict[str, int] = {}          # digest -> size: to read out of the destination at start
        self._paths: dict[str, Path] = {}        # what was read, or taken from a base bundle: verified files
        self._send: dict[str, int] = {}          # layers to send the loader as they are: digest -> size
        self._bases: set[str] = set()            # the layers patches read

    def lacking(self, scratch: Path) -> list[Piece]:
        if self.loader.done():
            return []
        self.scratch, self.side = scratch, self.loader.delta_side(self.head)
        pieces: dict[str, Piece] = {}
        for image in self.images:
            for index, (diff_id, blob) in enumerate(zip(image.layer_digests, image.blobs)):
                if layout_path(blob_path(blob.digest)) in self.carried or not self.loader.wants(blob.digest):
                    continue
                patch = self.patches.get(diff_id) if not image.exact else None
                if patch is not None:
                    self._bases.add(patch.base)
                    self._need(patch.base, patch.base_size, pieces, needed_by=f"the rebuilt layer {diff_id[:19]}.. of "
                                                                    f"{image_name(image)}")
                elif not self.side.reuse(image, index):
                    raw = self.side.takes_raw
                    digest, size = (diff_id, image.layer_sizes[index]) if raw else (blob.digest, blob.size)
                    self._send[digest] = size
                    self._need(digest, size, pieces, needed_by=image_name(image), raw=raw)
        return list(pieces.values())

    def _need(self, digest: str, size: int, pieces: dict[str, Piece], *, needed_by: str, raw: bool = True) -> None:
        if digest in pieces or digest in self._read:
            return
        if self.side.readable(digest):
            self._read[digest] = size
        else:
            pieces[digest] = Piece("layer", digest, size, needed_by=needed_by, site=self.side.where,
                                   member=layout_path(blob_path(digest)), raw=raw)

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
            self.loader.blob(digest, size, file_chunks(self._paths[digest]))
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
        apply_patch(io.BufferedReader(member, CHUNK), self._paths[patch.base], base_size=patch.base_size, out=rebuilt,
                    size=patch.size, diff_id=layer, name=f"member {path}")
        member.finish()   # the patch itself matched bundle.json, and the layer it rebuilt its diff_id
        self.loader.blob(layer, patch.size, file_chunks(rebuilt))
        rebuilt.unlink()
