"""An OCI distribution client that needs no docker engine.

It speaks to one upstream registry through its mirror endpoints (the fallback policy decides the
order), authenticates anonymously, with HTTP basic credentials from the docker config, or through
the bearer-token challenge that Docker Hub and Harbor use, resolves tags and indexes to one
platform's manifest, and streams blobs. Every manifest fetched by digest is checked against it;
blob bytes are checked by the caller while they stream (see images.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bundler import proc
from bundler.context import RetryPolicy
from bundler.digest import Digest
from bundler.errors import ImageReferenceError, InputError, OperationalError
from bundler.format.media import DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST
from bundler.net.endpoints import (
    BAD_RESPONSE,
    DENIED,
    MISMATCH,
    Endpoint,
    EndpointError,
    Fallback,
    http_error,
    registry_base_url,
)
from bundler.net.http import Sessions, read_limited
from bundler.oci.reference import ImageRef, Platform

SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        try:
            digest, size = data["digest"], int(data["size"])
            media_type = data.get("mediaType", "")
        except (KeyError, TypeError, ValueError):
            raise EndpointError(BAD_RESPONSE, f"{where}: a descriptor without digest or size") from None
        try:
            return cls(media_type, Digest(digest), size)
        except ValueError:
            raise EndpointError(BAD_RESPONSE, f"{where}: unsupported digest {digest!r}") from None


@dataclass(frozen=True)
class Manifest:
    """One platform's image manifest, verified against ``digest``."""

    digest: str
    media_type: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]
    index_digest: str | None = None      # the index it was chosen from, if any


# ---- credentials -----------------------------------------------------------------------------

def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _host_key(key: str) -> str:
    parts = urlsplit(key if "://" in key else f"//{key}")
    return parts.netloc or key


_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


HUB_SERVER = "https://index.docker.io/v1/"   # the key docker login files Docker Hub under
HELPER_TIMEOUT = 30                           # seconds a credential helper may take (it may ask for a PIN)


def credentials_for(host: str, config: Path | None = None) -> tuple[str, str] | None:
    """Credentials for ``host`` from the docker config, looked up as docker does: the host's
    ``credHelpers`` entry, then the ``credsStore`` helper, then ``auths``."""
    path = config or docker_config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable docker config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a readable docker config (not a JSON object)")
    wanted = _HUB_HOSTS if host in _HUB_HOSTS else {host}
    for key in ("auths", "credHelpers"):
        if not isinstance(data.get(key, {}), dict):
            raise InputError(f"{path}: {key} is not a JSON object")
    auths = data.get("auths", {})
    for key, helper in data.get("credHelpers", {}).items():
        if _host_key(key) in wanted:
            return _from_helper(helper, key, path, where=f"credHelpers.{key}")
    store = data.get("credsStore")
    if store:
        servers = [key for key in auths if _host_key(key) in wanted] or [HUB_SERVER if host in _HUB_HOSTS else host]
        for server in servers:
            found = _from_helper(store, server, path, where="credsStore")
            if found is not None:
                return found
    for key, entry in auths.items():
        if _host_key(key) not in wanted or not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password"):
            return entry["username"], entry["password"]
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise InputError(f"{path}: auths.{key}.auth is not base64 of user:password") from None
            return user, password
    return None


def _from_helper(name: object, server: str, path: Path, *, where: str) -> tuple[str, str] | None:
    """``docker-credential-NAME get`` for ``server``: docker's credential helper protocol (the server
    on stdin, ``{"Username": ..., "Secret": ...}`` on stdout). None when it has nothing for it."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"{path}: {where} is not the name of a credential helper: {name!r}")
    program = f"docker-credential-{name}"
    found = shutil.which(program)
    if found is None:
        raise InputError(f"{path}: {where} names {program}, which is not on PATH")
    result = proc.run([found, "get"], f"asking {program} for the login to {server}", HELPER_TIMEOUT, input=server)
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip()
        if "credentials not found" in said.lower():
            return None
        first = said.splitlines()[0][:200] if said else f"exit status {result.returncode}"
        raise OperationalError(f"{program} get failed for {server}: {first}")
    try:
        answer = json.loads(result.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise OperationalError(f"{program} get answered for {server} with something other than its JSON") from None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":   # an identity token, for a token exchange bundler does not do: go on without
        return None
    return user, secret


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class _Auth:
    """Tokens and credentials per endpoint origin, shared by the client's threads."""

    def __init__(self, config: Path | None, login: tuple[str, str] | None = None) -> None:
        self._config, self._login = config, login
        self._lock = threading.Lock()
        self._headers: dict[tuple[str, str], str] = {}

    def header(self, origin: str, scope: str) -> str | None:
        with self._lock:
            return self._headers.get((origin, scope))

    def answer(self, session: requests.Session, origin: str, scope: str, response: requests.Response,
               timeout: tuple[float, float]) -> None:
        """Obtain what the 401 ``response`` asks for; raise EndpointError(DENIED) when we cannot."""
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        creds = self._login or credentials_for(urlsplit(origin).netloc, self._config)
        if scheme == "basic":
            if creds is None:
                raise EndpointError(DENIED, f"{origin} asks for a login; add it to {docker_config_path()} "
                                            "(docker login)")
            value = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        elif scheme == "bearer" and params.get("realm"):
            query = {"service": params.get("service", "")}
            query["scope"] = params.get("scope") or scope
            token_response = session.get(params["realm"], params=query, auth=creds, timeout=timeout)
            if token_response.status_code in (401, 403):
                who = "the credentials in the docker config" if creds else "anonymous access"
                raise EndpointError(DENIED, f"token server {urlsplit(params['realm']).netloc} refused {who}")
            if token_response.status_code != 200:
                raise http_error(token_response, "token server")
            try:
                body = token_response.json()
                token = body.get("token") or body.get("access_token")
            except ValueError:
                token = None
            if not token:
                raise EndpointError(BAD_RESPONSE, "token server answered without a token")
            value = f"Bearer {token}"
        else:
            raise EndpointError(DENIED, f"unsupported authentication challenge {scheme or '(none)'!r}")
        with self._lock:
            if self._headers.get((origin, scope)) == value:
                raise EndpointError(DENIED, "credentials were refused")
            self._headers[(origin, scope)] = value


# ---- the client ------------------------------------------------------------------------------

class RegistryClient:
    """Speaks the distribution API for one upstream registry, through its endpoints in order."""

    def __init__(self, upstream: str, endpoints: tuple[Endpoint, ...], fallback: Fallback,
                 docker_config: Path | None = None, *, login: tuple[str, str] | None = None) -> None:
        self.upstream = upstream
        self.endpoints = endpoints
        self.fallback = fallback
        self.policy: RetryPolicy = fallback.policy
        self._sessions = Sessions()
        self._auth = _Auth(docker_config, login)

    def label(self, endpoint: Endpoint) -> str:
        return registry_base_url(endpoint, self.upstream)

    def _url(self, endpoint: Endpoint, repository: str, tail: str) -> tuple[str, str]:
        base = registry_base_url(endpoint, self.upstream)
        parts = urlsplit(base)
        origin = f"{parts.scheme}://{parts.netloc}"
        prefix = parts.path.strip("/")
        path = f"{prefix}/{repository}" if prefix else repository
        return origin, f"{origin}/v2/{path}/{tail}"

    def request(self, endpoint: Endpoint, repository: str, tail: str, headers: dict[str, str] | None = None,
                stream: bool = False, method: str = "GET", data: object = None, actions: str = "pull",
                url: str | None = None) -> requests.Response:
        """One authenticated request to one endpoint; answers a 401 challenge once.

        ``url`` overrides ``/v2/<repository>/<tail>`` (an upload's Location). A streaming ``data``
        cannot be sent twice, so callers authenticate with a small request first.
        """
        origin, default_url = self._url(endpoint, repository, tail)
        url = url or default_url
        scope = f"repository:{repository}:{actions}"
        session = self._sessions.get()
        session.max_redirects = 10
        for _ in range(2):
            all_headers = dict(headers or {})
            auth = self._auth.header(origin, scope)
            if auth:
                all_headers["Authorization"] = auth
            response = session.request(method, url, headers=all_headers, stream=stream, data=data,
                                       timeout=self.policy.timeout)
            if response.status_code != 401:
                return response
            response.close()
            self._auth.answer(session, origin, scope, response, self.policy.timeout)
        raise EndpointError(DENIED, "credentials were refused")

    # -- manifests --
    def manifest_at(self, endpoint: Endpoint, repository: str, reference: str) -> tuple[str, bytes, str]:
        """(digest, bytes, media type) of a manifest from one endpoint; EndpointError when it fails."""
        response = self.request(endpoint, repository, f"manifests/{reference}", {"Accept": ACCEPT}, stream=True)
        with response:
            if response.status_code != 200:
                raise http_error(response)
            body = read_limited(response, MAX_MANIFEST, "manifest", policy=self.policy)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = Digest.of(body)
        if reference.startswith("sha256:") and digest != reference:
            raise EndpointError(MISMATCH, f"manifest is {digest[:19]}.., not the {reference[:19]}.. asked for")
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise EndpointError(MISMATCH, f"manifest body is {digest[:19]}.. but the registry says {claimed[:19]}..")
        try:
            data = json.loads(body)
        except ValueError:
            raise EndpointError(BAD_RESPONSE, "manifest is not JSON") from None
        if not isinstance(data, dict):
            raise EndpointError(BAD_RESPONSE, "manifest is not a JSON object")
        media_type = data.get("mediaType") or media_type
        if media_type in SCHEMA1 or data.get("schemaVersion") == 1:
            raise EndpointError(BAD_RESPONSE, "schema 1 manifest (unsupported; the image predates 2017)")
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST if "layers" in data else media_type
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise EndpointError(BAD_RESPONSE, f"unsupported manifest type {media_type!r}")
        return digest, body, media_type

    def manifest(self, image: ImageRef, reference: str, what: str) -> tuple[str, bytes, str]:
        """(digest, bytes, media type) of a manifest or index, through the endpoints in order."""
        return self.fallback.run(what, self.endpoints,
                                 lambda e: self.manifest_at(e, image.repository, reference), self.label)

    def resolve(self, image: ImageRef, platform: Platform) -> Manifest:
        """The manifest of ``image`` for ``platform`` (an index is resolved to its entry)."""
        what = f"resolving {image}"
        digest, body, media_type = self.manifest(image, image.reference, what)
        index_digest = None
        if media_type in INDEX_TYPES:
            index_digest = digest
            chosen = choose_platform(json.loads(body), platform, str(image))
            digest, body, media_type = self.manifest(image, chosen.digest, f"{what} for {platform}")
            if media_type in INDEX_TYPES:
                raise ImageReferenceError(f"{image}: nested index for {platform} is not supported")
        return parse_manifest(digest, body, media_type, index_digest=index_digest, name=str(image))

    # -- blobs --
    def open_blob(self, endpoint: Endpoint, repository: str, digest: str, *, offset: int = 0) -> requests.Response:
        """A streaming response for a blob from byte ``offset``; 206 when the range was honoured."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.request(endpoint, repository, f"blobs/{digest}", headers, stream=True)
        if response.status_code not in (200, 206):
            response.close()
            raise http_error(response)
        return response

    def blob_bytes(self, image: ImageRef, descriptor: Descriptor, what: str) -> bytes:
        """A small blob (a config), whole and verified."""
        def attempt(endpoint: Endpoint) -> bytes:
            with self.open_blob(endpoint, image.repository, descriptor.digest) as response:
                body = read_limited(response, max(descriptor.size, 1) + 1, "blob", policy=self.policy)
            if len(body) != descriptor.size or Digest.of(body) != descriptor.digest:
                raise EndpointError(MISMATCH, f"{descriptor.digest[:19]}.. came back as {Digest.of(body)[:19]}..")
            return body
        return self.fallback.run(what, self.endpoints, attempt, self.label)


def choose_platform(index: dict, platform: Platform, name: str) -> Descriptor:
    entries = index.get("manifests") or []
    available = []
    for entry in entries:
        spec = entry.get("platform") or {}
        os_, arch, variant = spec.get("os", ""), spec.get("architecture", ""), spec.get("variant")
        if os_ == "unknown":  # attestation manifests (buildx provenance)
            continue
        available.append("/".join(p for p in (os_, arch, variant) if p))
        if platform.matches(os_, arch, variant):
            return Descriptor.from_json(entry, name)
    listed = ", ".join(available) or "none"
    raise ImageReferenceError(f"{name}: no image for {platform} (the index has: {listed})")


def parse_manifest(digest: str, body: bytes, media_type: str, *, index_digest: str | None, name: str) -> Manifest:
    data = json.loads(body)
    if media_type not in MANIFEST_TYPES:
        raise ImageReferenceError(f"{name}: {digest} is an index, not an image manifest")
    config = Descriptor.from_json(data.get("config"), f"{name} config")
    layers = tuple(Descriptor.from_json(layer, f"{name} layer") for layer in data.get("layers") or [])
    return Manifest(digest, media_type, body, config=config, layers=layers, index_digest=index_digest)


