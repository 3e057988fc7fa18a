"""Restoring images into a private registry (Harbor, distribution): ``restore --registry``.

Blobs the registry has are not sent again (mounted across repositories where it holds them
elsewhere); manifests go last, and an image carried for several platforms gets its index under the
tag, its platforms' manifests by digest, and the attestations its index lists before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from bundler.context import RetryPolicy
from bundler.digest import Digest
from bundler.files import copy_checked
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.paths import blob_path
from bundler.net.http import iter_body
from bundler.oci.reference import ImageRef, repository_of
from bundler.oci.registry import RegistryClient
from bundler.oci.site import SiteRegistry


class RegistryPusher:
    """Pushes the images to ``host`` under their own repository paths; manifests go last, and an image
    carried for several platforms gets its index under the tag (its platforms' manifests by digest)."""

    def __init__(self, host: str, policy: RetryPolicy, insecure: bool = False,
                 docker_config: Path | None = None) -> None:
        self.host = host
        self.site = SiteRegistry(host, policy, plain_http=insecure, docker_config=docker_config)
        self.images: list[ImageEntry] = []
        self.indexes: list[IndexEntry] = []
        self._listed: set[str] = set()             # manifests an index names: pushed by digest, not tag
        self._repos: dict[str, list[str]] = {}     # blob digest -> repositories that need it

    @property
    def client(self) -> RegistryClient:
        return self.site.client

    def _where(self, entry: ImageEntry | IndexEntry) -> tuple[str, str]:
        """The repository and reference an image (or an index) goes to: its tag, or its digest for a
        platform an index names (and for an image pinned by digest alone)."""
        ref = ImageRef.parse(entry.name)
        digest = entry.digest if isinstance(entry, IndexEntry) else entry.manifest
        return ref.repository, ref.tag if ref.tag and digest not in self._listed else digest

    def target(self, entry: ImageEntry | IndexEntry) -> str:
        repository, reference = self._where(entry)
        return f"{self.host}/{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"

    def _has(self, entry: ImageEntry | IndexEntry, digest: str, media_type: str) -> bool:
        """Whether the registry already serves ``digest`` where ``entry`` goes."""
        repository, reference = self._where(entry)
        return self.site.has_manifest(repository, reference, media_type) == digest

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
            missing = [r for r in repos if not self.site.has_blob(r, digest)]
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
        self.site.upload(first, digest, chunks)
        for repository in others:
            self.site.mount(digest, first, repository)

    def commit(self, layout: dict[str, bytes]) -> list[str]:
        notes = []
        for image in self.images:
            self._put_manifest(image, layout[blob_path(image.manifest)], image.manifest_media_type)
            if image.manifest not in self._listed:
                notes.append(f"pushed {self.target(image)}")
        for index in self.indexes:   # after the manifests it names: a registry checks they are there
            for attachment in index.attachments:
                self._put_manifest(index, layout[blob_path(attachment.digest)], attachment.media_type,
                                   reference=attachment.digest)
            self._put_manifest(index, layout[blob_path(index.digest)], index.media_type)
            platforms = ", ".join(i.platform for i in self.images if i.manifest in index.manifests)
            notes.append(f"pushed {self.target(index)}" + (f" (an index of {platforms})" if platforms else ""))
        return notes

    def _put_manifest(self, entry: ImageEntry | IndexEntry, body: bytes, media_type: str,
                      *, reference: str | None = None) -> None:
        repository, where = self._where(entry)
        self.site.put_manifest(repository, reference or where, body, media_type)

    def delta_side(self, head: Head) -> RegistrySide:
        return RegistrySide(self, head)

    def abort(self) -> None:
        pass   # blobs without a manifest are invisible, and garbage-collected by the registry


class RegistrySide:
    """What a registry holds for a delta: blobs per repository, mounted across repositories, read back."""

    takes_raw = False

    def __init__(self, loader: RegistryPusher, head: Head) -> None:
        self.loader, self.where = loader, f"on {loader.host}"
        names = [i.name for i in head.images] + [n for b in head.delta.bases for n in b.images]
        self.candidates = [r for r in dict.fromkeys(map(repository_of, names)) if r]
        self._holders: dict[str, str | None] = {}
        self._mounts: list[tuple[str, str, str]] = []

    def holder(self, digest: str) -> str | None:
        if digest not in self._holders:
            self._holders[digest] = next((r for r in self.candidates if self.loader.site.has_blob(r, digest)), None)
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
        digests = sorted(sizes)
        found = {}
        for digest in digests:
            source = self.holder(digest)
            with self.loader.site.open_blob(source, digest) as response:
                path = folder / Digest(digest).hex
                copy_checked(iter_body(response, self.loader.site.policy), path, digest,
                             what=f"{self.loader.host}/{source}")
            found[digest] = path
        return found

    def start(self) -> None:
        for digest, source, repository in self._mounts:
            self.loader.site.mount(digest, source, repository)
