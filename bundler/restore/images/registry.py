"""Restoring images into a private registry (Harbor, distribution): ``restore --registry``.

Blobs the registry has are not sent again (mounted across repositories where it holds them
elsewhere); manifests go last, and an image carried for several platforms gets its index under the
tag, its platforms' manifests by digest, and the attestations its index lists before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urljoin

import requests

from bundler.context import RetryPolicy
from bundler.digest import Digest
from bundler.errors import NetworkError
from bundler.files import copy_checked
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.paths import blob_path
from bundler.net.endpoints import OFFICIAL, Endpoint, EndpointError, Fallback, classify, http_error, registry_base_url
from bundler.net.http import iter_body
from bundler.oci.reference import ImageRef, repository_of
from bundler.oci.registry import RegistryClient


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

    def call(self, what: str, repository: str, tail: str, **kwargs: object) -> requests.Response:
        try:
            return self.client.request(self.endpoint, repository, tail, actions="pull,push", **kwargs)
        except EndpointError as exc:
            raise NetworkError(f"{what} on {self.host}: {exc}") from None
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise
            raise NetworkError(f"{what} on {self.host}: {found[1]}") from None

    def exists(self, repository: str, digest: str) -> bool:
        response = self.call(f"checking {digest[:19]}..", repository, f"blobs/{digest}", method="HEAD")
        response.close()
        return response.status_code == 200

    def _has(self, entry: ImageEntry | IndexEntry, digest: str, media_type: str) -> bool:
        """Whether the registry already serves ``digest`` where ``entry`` goes."""
        repository, reference = self._where(entry)
        response = self.call(f"checking {self.target(entry)}", repository, f"manifests/{reference}", method="HEAD",
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
            missing = [r for r in repos if not self.exists(r, digest)]
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
        start = self.call(f"starting the upload of {digest[:19]}..", first, "blobs/uploads/", method="POST")
        start.close()
        if start.status_code != 202 or "Location" not in start.headers:
            raise NetworkError(f"starting the upload of {digest[:19]}.. to {self.host}/{first}: "
                               f"{http_error(start)}")
        location = urljoin(self.endpoint.url + "/", start.headers["Location"])
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        done = self.call(f"uploading {digest[:19]}..", first, "", method="PUT", url=location,
                          data=chunks, headers={"Content-Type": "application/octet-stream"})
        done.close()
        if done.status_code != 201:
            raise NetworkError(f"uploading {digest[:19]}.. to {self.host}/{first}: {http_error(done)}")
        for repository in others:
            self.mount(digest, first, repository)

    def mount(self, digest: str, source: str, repository: str) -> None:
        """Make the blob ``source`` holds ``repository``'s too, without sending it again."""
        mount = self.call(f"mounting {digest[:19]}..", repository, f"blobs/uploads/?mount={digest}&from={source}",
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
                                   reference=attachment.digest)
            self._put_manifest(index, layout[blob_path(index.digest)], index.media_type)
            platforms = ", ".join(i.platform for i in self.images if i.manifest in index.manifests)
            notes.append(f"pushed {self.target(index)}" + (f" (an index of {platforms})" if platforms else ""))
        return notes

    def _put_manifest(self, entry: ImageEntry | IndexEntry, body: bytes, media_type: str,
                      *, reference: str | None = None) -> None:
        repository, where = self._where(entry)
        reference = reference or where
        response = self.call(f"pushing the manifest of {entry.name}", repository, f"manifests/{reference}",
                              method="PUT", data=body, headers={"Content-Type": media_type})
        response.close()
        if response.status_code != 201:
            raise NetworkError(f"pushing {self.target(entry)}: {http_error(response)}")

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
            self._holders[digest] = next((r for r in self.candidates if self.loader.exists(r, digest)), None)
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
            response = self.loader.call(f"reading {digest[:19]}..", source, f"blobs/{digest}", stream=True)
            with response:
                if response.status_code != 200:
                    raise NetworkError(f"reading {digest[:19]}.. from {self.loader.host}/{source}: HTTP "
                                       f"{response.status_code}")
                path = folder / Digest(digest).hex
                copy_checked(iter_body(response, self.loader.client.policy), path, digest,
                              what=f"{self.loader.host}/{source}")
            found[digest] = path
        return found

    def start(self) -> None:
        for digest, source, repository in self._mounts:
            self.loader.mount(digest, source, repository)
