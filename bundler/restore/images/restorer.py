"""The images' air-gapped side: the local docker engine, a private registry, or containerd.

``ImagesRestorer`` takes the image layout's members as the bundle streams and hands the blobs to
one loader. Each loader is told which images the bundle holds, decides which are missing, receives
the blobs as they stream out of the bundle (a blob's chunks end only once its member matched
bundle.json, so a loader may act on a blob then), and names images only after the
whole bundle was verified: docker and containerd receive the end of their tar stream, and a
registry its manifests, at that moment and not before. ``abort()`` leaves nothing behind that
refers to the images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError
from bundler.files import CHUNK
from bundler.format.archive import MemberReader
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.paths import LAYOUT_DIR, blob_path
from bundler.oci.reference import ImageRef
from bundler.restore.images.delta import DeltaSide, ImagesDelta
from bundler.restore.options import Piece, RestoreReport

MAX_LAYOUT_FILE = 16 << 20     # index.json, manifest.json and the manifests are kilobytes; refuse a bomb


class Loader(Protocol):
    """One image destination (docker.py, registry.py, containerd.py)."""

    def plan(self, images: Sequence[ImageEntry], indexes: Sequence[IndexEntry]) -> list[str]: ...  # notes: skipped
    def wants(self, digest: str) -> bool: ...
    def done(self) -> bool: ...                                        # nothing to load at all
    def blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None: ...
    def commit(self, layout: dict[str, bytes]) -> list[str]: ...       # notes on what was done
    def abort(self) -> None: ...
    def delta_side(self, head: Head) -> DeltaSide: ...                 # what it holds, for a delta (delta.py)


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
        if head.delta is not None:   # layers the bundle does not carry come from the destination (delta.py)
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

    def needs(self, path: str) -> bool:
        name = path[len(LAYOUT_DIR) + 1:]
        if name.startswith("patches/"):
            return self.delta is not None and self.loader.wants(Digest.from_hex(name.rsplit("/", 1)[1]))
        if not name.startswith("blobs/") or name in self._manifests:
            return True
        return self.loader.wants(Digest.from_hex(name.rsplit("/", 1)[1]))

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
    """The member's bytes; they end only once all of them matched bundle.json (a loader may act on its end)."""
    while chunk := member.read(CHUNK):
        yield chunk
    member.finish()


def run_names(image: ImageEntry) -> tuple[str, ...]:
    """The names docker gives an image: its tags, or for one pinned by digest alone a tag made of the
    digest (``repo:sha256-<12 hex>``), so that it can be run by name."""
    if image.tags:
        return image.tags
    return (f"{ImageRef.parse(image.name).familiar_name}:sha256-{image.digest.hex[:12]}",)


def packed_layers(images: Sequence[ImageEntry]) -> dict[str, tuple[str, int]]:
    """Each layer carried compressed (an image carried exact): its blob -> the diff_id and size it unpacks to."""
    return {b.digest: (d, size) for i in images if i.exact
            for b, d, size in zip(i.blobs, i.layer_digests, i.layer_sizes)}


def needed_blobs(images: Sequence[ImageEntry]) -> set:
    """Every blob the images need: configs, manifests and layers as carried."""
    return {digest for image in images for digest in [image.id, image.manifest, *(b.digest for b in image.blobs)]}



