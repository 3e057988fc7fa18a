"""A registry bundler writes to, or reads a pushed bundle back from: the site's (Harbor, distribution,
zot), at one address, with no mirrors in front of it.

Both sides of the gap stop here on the air-gapped side: ``restore --registry`` and ``bundler push``
upload blobs and manifests, ``restore oci://`` and ``bundler serve`` read them back, an inventory
lists them. Every call names the operation and the host in the error it raises. The login comes
from BUNDLER_REGISTRY_USER and BUNDLER_REGISTRY_PASSWORD when both are set, else as docker keeps it
(``docker login``: registry.py reads its config and credential helpers); it is never printed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urljoin

import requests

from bundler.context import RetryPolicy
from bundler.digest import Digest
from bundler.errors import IntegrityError, NetworkError
from bundler.net.endpoints import OFFICIAL, Endpoint, EndpointError, Fallback, classify, http_error, registry_base_url
from bundler.net.http import read_limited
from bundler.oci.registry import RegistryClient

USER_VARIABLE, PASSWORD_VARIABLE = "BUNDLER_REGISTRY_USER", "BUNDLER_REGISTRY_PASSWORD"
MAX_JSON = 16 << 20        # a manifest, an index, a config or a listing: refuse a larger answer
PAGE = 1000


def login_from_env() -> tuple[str, str] | None:
    """The site's login from BUNDLER_REGISTRY_USER and BUNDLER_REGISTRY_PASSWORD, for a node or a job
    with no docker config; None when they are not both set (docker's own config is read then)."""
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    return (user, password) if user and password else None


class SiteRegistry:
    """One registry host, spoken to directly (``plain_http``: no TLS, for a registry on a trusted LAN)."""

    def __init__(self, host: str, policy: RetryPolicy, *, plain_http: bool = False,
                 docker_config: Path | None = None) -> None:
        self.host = host
        url = registry_base_url(Endpoint(OFFICIAL), host)
        if plain_http:
            url = "http://" + url.split("://", 1)[1]
        self.endpoint = Endpoint(url, "--registry")
        self.client = RegistryClient(host, (self.endpoint,), Fallback(policy), docker_config, login=login_from_env())
        self.policy = policy

    @property
    def url(self) -> str:
        """The base URL that serves ``/v2/``."""
        return self.endpoint.url

    def call(self, what: str, repository: str, tail: str, **kwargs: object) -> requests.Response:
        """One authenticated request (pull and push scope on ``repository``); a failure to reach the
        registry is a NetworkError naming ``what`` and the host."""
        try:
            return self.client.request(self.endpoint, repository, tail, actions="pull,push", **kwargs)
        except EndpointError as exc:
            raise NetworkError(f"{what} on {self.host}: {exc}") from None
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise
            raise NetworkError(f"{what} on {self.host}: {found[1]}") from None

    # -- blobs --
    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.call(f"checking {digest[:19]}..", repository, f"blobs/{digest}", method="HEAD")
        response.close()
        return response.status_code == 200

    def _start_upload(self, repository: str, what: str) -> str:
        start = self.call(f"starting the upload of {what}", repository, "blobs/uploads/", method="POST")
        start.close()
        if start.status_code != 202 or "Location" not in start.headers:
            raise NetworkError(f"starting the upload of {what} to {self.host}/{repository}: {http_error(start)}")
        return urljoin(self.url + "/", start.headers["Location"])

    def _finish_upload(self, repository: str, location: str, digest: str, *, what: str,
                       data: Iterable[bytes] | bytes = b"") -> None:
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        done = self.call(f"uploading {what}", repository, "", method="PUT", url=location, data=data,
                         headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            raise NetworkError(f"uploading {what} to {self.host}/{repository}: {http_error(done)}{_said(done)}")
        done.close()

    def upload(self, repository: str, digest: str, chunks: Iterable[bytes] | bytes) -> None:
        """A blob whose digest is known, in one request (the registry checks the digest)."""
        location = self._start_upload(repository, f"{digest[:19]}..")
        self._finish_upload(repository, location, digest, what=f"{digest[:19]}..", data=chunks)

    def upload_stream(self, repository: str, chunks: Iterator[bytes], what: str) -> tuple[Digest, int]:
        """A blob whose digest is known only once it is sent (a layer compressed on its way): streamed in
        one PATCH, hashed as it goes, then committed under that digest. Returns its digest and size."""
        location = self._start_upload(repository, what)
        hasher, size = hashlib.sha256(), 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        sent = self.call(f"uploading {what}", repository, "", method="PATCH", url=location, data=counted(),
                         headers={"Content-Type": "application/octet-stream"})
        sent.close()
        if sent.status_code != 202 or "Location" not in sent.headers:
            raise NetworkError(f"uploading {what} to {self.host}/{repository}: {http_error(sent)}")
        digest = Digest.from_hex(hasher.hexdigest())
        self._finish_upload(repository, urljoin(self.url + "/", sent.headers["Location"]), digest, what=what)
        return digest, size

    def mount(self, digest: str, source: str, repository: str) -> None:
        """Make the blob ``source`` holds ``repository``'s too, without sending it again."""
        mount = self.call(f"mounting {digest[:19]}..", repository, f"blobs/uploads/?mount={digest}&from={source}",
                          method="POST")
        mount.close()
        if mount.status_code != 201:
            raise NetworkError(f"{self.host} would not mount {digest[:19]}.. from {source} into {repository} "
                               f"({http_error(mount)})")

    def open_blob(self, repository: str, digest: str) -> requests.Response:
        """A blob's body as a stream (the caller checks what it reads against the digest)."""
        response = self.call(f"reading {digest[:19]}..", repository, f"blobs/{digest}", stream=True)
        if response.status_code != 200:
            response.close()
            raise NetworkError(f"reading {digest[:19]}.. from {self.host}/{repository}: {http_error(response)}")
        return response

    def blob_bytes(self, repository: str, digest: str, *, limit: int = MAX_JSON) -> bytes:
        """A small blob (a config, a head), whole and checked against its digest."""
        with self.open_blob(repository, digest) as response:
            try:
                body = read_limited(response, limit, f"{digest[:19]}..", policy=self.policy)
            except EndpointError as exc:
                raise NetworkError(f"reading {digest[:19]}.. from {self.host}/{repository}: {exc}") from None
        if Digest.of(body) != digest:
            raise IntegrityError(f"{self.host}/{repository}: blob {digest[:19]}.. came back as "
                                 f"{Digest.of(body)[:19]}..")
        return body

    # -- manifests --
    def manifest(self, repository: str, reference: str) -> tuple[Digest, bytes, str]:
        """(digest, bytes, media type) of a manifest or index; a digest reference is checked."""
        try:
            digest, body, media_type = self.client.manifest_at(self.endpoint, repository, reference)
        except EndpointError as exc:
            raise NetworkError(f"reading {self.host}/{repository}:{reference}: {exc}") from None
        return Digest(digest), body, media_type

    def has_manifest(self, repository: str, reference: str, media_type: str) -> str | None:
        """The digest the registry serves at ``reference`` (a tag or a digest), or None."""
        response = self.call(f"checking {self.host}/{repository}:{reference}", repository, f"manifests/{reference}",
                             method="HEAD", headers={"Accept": media_type})
        response.close()
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> Digest:
        """A manifest or index under ``reference`` (a tag, or its own digest)."""
        response = self.call(f"pushing {self.host}/{repository}:{reference}", repository, f"manifests/{reference}",
                             method="PUT", data=body, headers={"Content-Type": media_type})
        if response.status_code != 201:
            where = f"{self.host}/{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"
            raise NetworkError(f"pushing {where}: {http_error(response)}{_said(response)}")
        response.close()
        return Digest.of(body)

    # -- listings --
    def catalog(self) -> list[str]:
        return self._paged("", f"_catalog?n={PAGE}", key="repositories")

    def tags(self, repository: str) -> list[str]:
        return self._paged(repository, f"tags/list?n={PAGE}", key="tags")

    def _paged(self, repository: str, tail: str, *, key: str) -> list[str]:
        names: list[str] = []
        while tail:
            response = self.call(f"listing {key}", repository, tail,
                                 url=f"{self.url}/v2/{tail}" if not repository else None)
            with response:
                if response.status_code == 404 and repository:
                    return names
                if response.status_code != 200:
                    raise NetworkError(f"{self.host}: listing {key}: HTTP {response.status_code}")
                try:
                    names += json.loads(response.content).get(key) or []
                except (ValueError, AttributeError):
                    raise NetworkError(f"{self.host}: listing {key}: not the JSON a registry answers") from None
                link = response.headers.get("Link", "")
            tail = link.split("<", 1)[1].split(">", 1)[0].split("/v2/", 1)[1] \
                if "<" in link and "/v2/" in link else ""
        return names


def _said(response: requests.Response) -> str:
    """What a registry's error body says (distribution's ``errors``: code, message, detail), briefly."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        said = f" ({first.get('code', '')}: {first.get('message', '')}"
        detail = first.get("detail")
        return said + (f" {json.dumps(detail)[:200]})" if detail else ")")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
    finally:
        response.close()
