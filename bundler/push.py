"""Restoring images into a private registry (Harbor, distribution): ``restore --registry``.

Blobs the registry has are not sent again (mounted across repositories where it holds them
elsewhere); manifests go last, and an image carried for several platforms gets its index under the
tag, its platforms' manifests by digest, and the attestations its index lists before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urljoin

from bundler.errors import NetworkError
from bundler.format import (
    blob_path,
)
from bundler.format_images import ImageEntry, IndexEntry
from bundler.mirrors import OFFICIAL, Endpoint, EndpointError, Fallback, RetryPolicy, http_error, registry_base_url
from bundler.reference import ImageRef
from bundler.registry import RegistryClient


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


