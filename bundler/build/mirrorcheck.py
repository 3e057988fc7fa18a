"""The health of the mirrors: every endpoint of every upstream probed at once, with its latency.

A registry endpoint is alive when ``GET /v2/`` answers 200 or 401 (the API is there and wants a
login or a token, as Docker Hub and Harbor do). An index endpoint is alive when it serves the
simple page of a project every PyPI mirror has (``pip``). Alive is not enough for a mirror that
stopped syncing, the common failure: given an image, each endpoint of its registry is also asked
for the image's manifest, through the client and authentication a build uses. A model hub's endpoint
is alive when it lists a repository (the profile's first of that hub, or a well-known one) through
the client a build uses: a mirror that answers but never synced the model fails like a stale one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from bundler.build.mirrors import PYPI, Mirrors
from bundler.build.models.hub import base_url, list_repo
from bundler.build.models.spec import ModelSpec
from bundler.build.profile import Profile
from bundler.build.wheels.resolve import default_index_url
from bundler.context import DEFAULT_RETRY, RetryPolicy
from bundler.format.models import HUBS, HUGGINGFACE, MODELSCOPE
from bundler.net.endpoints import (
    NOT_FOUND,
    ORIGIN_BUILTIN,
    TIMEOUT,
    Endpoint,
    EndpointError,
    Fallback,
    classify,
    http_error,
    registry_base_url,
)
from bundler.net.http import Sessions, new_session
from bundler.oci.reference import DOCKER_HUB, ImageRef
from bundler.oci.registry import RegistryClient

DEFAULT_PROJECT = "pip"        # on every PyPI mirror, and its page is small
DEFAULT_MODELS = {             # what a hub's endpoint is asked to list when no profile names a model of it
    HUGGINGFACE: ModelSpec(hub=HUGGINGFACE, repo="openai-community/gpt2", revision="main"),
    MODELSCOPE: ModelSpec(hub=MODELSCOPE, repo="Qwen/Qwen2.5-0.5B-Instruct", revision="master"),
}
MAX_PROBES = 16                # probes in flight at once
PAGE_SAMPLE = 64 << 10         # enough of a simple page to see that it lists the project's files


@dataclass(frozen=True)
class Upstream:
    """A registry host, PyPI, or a model hub, with its effective endpoints in order."""

    name: str
    endpoints: tuple[Endpoint, ...]
    model: ModelSpec | None = None       # a hub's: the repository its endpoints are asked to list

    @property
    def is_index(self) -> bool:
        return self.name == PYPI

    @property
    def is_hub(self) -> bool:
        return self.model is not None

    def as_dict(self) -> dict:
        return {"name": self.name, "endpoints": [{"endpoint": e.url, "origin": e.origin} for e in self.endpoints]}


def upstreams(mirrors: Mirrors, profile: Profile | None = None, image: ImageRef | None = None) -> list[Upstream]:
    """The upstreams worth showing.

    With a profile, the ones its build uses: the registries of its images, PyPI if it has wheels,
    and the hubs of its models. Without, docker.io, every registry a mirrors layer names, PyPI, and
    every hub a layer above the built-in catalog names. An image adds its registry.
    """
    if profile is None:
        hosts = [DOCKER_HUB, *mirrors.registries]
        wants_pypi = True
        models = {hub: DEFAULT_MODELS[hub] for hub in HUBS
                  if any(e.origin != ORIGIN_BUILTIN for e in mirrors.hubs.get(hub, ()))}
    else:
        hosts = [spec.image.registry for spec in profile.images if spec.source == "registry"]
        wants_pypi = profile.python is not None
        models = {}
        for spec in profile.models:
            models.setdefault(spec.hub, spec)
    if image is not None:
        hosts.append(image.registry)
    found = [Upstream(host, mirrors.for_registry(host)) for host in dict.fromkeys(hosts)]
    if wants_pypi:
        found.append(Upstream(PYPI, mirrors.for_pypi()))
    return found + [Upstream(hub, mirrors.for_hub(hub), models[hub]) for hub in HUBS if hub in models]


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What one endpoint answered."""

    upstream: str
    endpoint: Endpoint
    url: str                          # what was asked
    alive: bool
    status: str                       # "HTTP 200", "connection refused", "timed out after 2 s", ...
    latency: float | None = None      # seconds until the answer's headers; None without an answer
    manifest: str | None = None       # with an image: its digest on this endpoint
    manifest_problem: str | None = None   # with an image: why this endpoint could not give it

    @property
    def ok(self) -> bool:
        return self.alive and self.manifest_problem is None


@dataclass(frozen=True, kw_only=True)
class Report:
    upstreams: tuple[Upstream, ...]
    probes: tuple[Probe, ...]
    timeout: float
    image: ImageRef | None = None

    def of(self, upstream: str) -> list[Probe]:
        return [p for p in self.probes if p.upstream == upstream]

    def failed(self) -> list[str]:
        """The upstreams with no working endpoint."""
        return [u.name for u in self.upstreams if not any(p.ok for p in self.of(u.name))]

    def failure(self) -> str | None:
        """One line naming each upstream with no working endpoint, or None when every one has one."""
        failed = self.failed()
        if not failed:
            return None
        named = [f"{name} (none has {self.image})" if self.image and name == self.image.registry
                 and any(p.alive for p in self.of(name)) else name for name in failed]
        return (f"no working endpoint for {', '.join(named)}; "
                f"{len(self.probes)} endpoints probed, {self.timeout:g} s allowed each")

    def latencies(self) -> dict[tuple[str, Endpoint], float | None]:
        return {(p.upstream, p.endpoint): p.latency if p.ok else None for p in self.probes}

    def as_dict(self) -> dict:
        def probe(p: Probe) -> dict:
            return {"endpoint": p.endpoint.url, "origin": p.endpoint.origin, "url": p.url, "ok": p.ok,
                    "alive": p.alive, "status": p.status,
                    "latency_ms": None if p.latency is None else round(p.latency * 1000, 1),
                    "manifest": p.manifest, "manifest_problem": p.manifest_problem}

        return {"timeout": self.timeout, "image": str(self.image) if self.image else None, "failed": self.failed(),
                "upstreams": [{"name": u.name, "endpoints": [probe(p) for p in self.of(u.name)]}
                              for u in self.upstreams]}


def check(targets: list[Upstream], timeout: float = DEFAULT_RETRY.connect_timeout, image: ImageRef | None = None,
          project: str = DEFAULT_PROJECT, default_index: Callable[[], str] | None = None,
          docker_config: Path | None = None) -> Report:
    """Probe every endpoint of ``targets`` concurrently.

    Every wait in a probe (to connect, for an answer, for the rest of a page) is bounded by
    ``timeout``. ``default_index`` gives the URL ``official`` stands for on PyPI (asked only if it
    is listed).
    """
    jobs = [(upstream, endpoint) for upstream in targets for endpoint in upstream.endpoints]
    index_url = None
    if any(u.is_index and e.official for u, e in jobs):
        index_url = (default_index or default_index_url)()
    policy = RetryPolicy(connect_timeout=timeout, read_timeout=timeout, attempts=1)

    def probe(upstream: Upstream, endpoint: Endpoint) -> Probe:
        if upstream.is_hub:
            return probe_hub(upstream, endpoint, policy)
        if upstream.is_index:
            base = index_url if endpoint.official else endpoint.url
            return probe_index(endpoint, str(base), project, timeout=timeout)
        found = probe_registry(upstream.name, endpoint, timeout)
        if image is not None and image.registry == upstream.name and found.alive:
            found = _with_manifest(found, image, policy, docker_config=docker_config)
        return found

    if not jobs:
        return Report(upstreams=tuple(targets), probes=(), timeout=timeout, image=image)
    with ThreadPoolExecutor(max_workers=min(MAX_PROBES, len(jobs)), thread_name_prefix="probe") as pool:
        futures = [pool.submit(probe, upstream, endpoint) for upstream, endpoint in jobs]
        probes = tuple(future.result() for future in futures)
    return Report(upstreams=tuple(targets), probes=probes, timeout=timeout, image=image)


def probe_registry(upstream: str, endpoint: Endpoint, timeout: float) -> Probe:
    parts = urlsplit(registry_base_url(endpoint, upstream))
    url = f"{parts.scheme}://{parts.netloc}/v2/"
    started = time.monotonic()
    try:
        with new_session() as session, session.get(url, timeout=(timeout, timeout), stream=True) as response:
            latency = time.monotonic() - started
            status = response.status_code
    except Exception as exc:  # noqa: BLE001 - classified, re-raised if foreign
        return _failed(upstream, endpoint, url, exc=exc, timeout=timeout)
    if status == 200:
        return Probe(upstream=upstream, endpoint=endpoint, url=url, alive=True, status="HTTP 200", latency=latency)
    if status == 401:
        return Probe(upstream=upstream, endpoint=endpoint, url=url, alive=True,
                     status="HTTP 401, wants a login or token", latency=latency)
    return Probe(upstream=upstream, endpoint=endpoint, url=url, alive=False, status=str(http_error(response)),
                 latency=latency)


def probe_index(endpoint: Endpoint, base: str, project: str, *, timeout: float) -> Probe:
    url = f"{base.rstrip('/')}/{project}/"
    # A captive portal or an error page answers 200 too: the page must link the project's files.
    files = re.compile(r"""href=["'][^"']*\b""" + re.sub(r"[-_.]+", "[-_.]", re.escape(project)) + r"-", re.I)
    started = time.monotonic()
    try:
        with new_session() as session, session.get(url, timeout=(timeout, timeout), stream=True,
                                                   headers={"Accept": "text/html"}) as response:
            latency = time.monotonic() - started
            if response.status_code != 200:
                return Probe(upstream=PYPI, endpoint=endpoint, url=url, alive=False, status=str(http_error(response)),
                             latency=latency)
            deadline, sample = time.monotonic() + timeout, b""
            for chunk in response.iter_content(8192):
                sample += chunk
                if files.search(sample.decode("utf-8", "replace")) or len(sample) >= PAGE_SAMPLE:
                    break
                if time.monotonic() > deadline:
                    raise EndpointError(TIMEOUT, "timed out")
    except Exception as exc:  # noqa: BLE001 - classified, re-raised if foreign
        return _failed(PYPI, endpoint, url, exc=exc, timeout=timeout)
    if not files.search(sample.decode("utf-8", "replace")):
        return Probe(upstream=PYPI, endpoint=endpoint, url=url, alive=False,
                     status=f"HTTP 200, but not a simple page listing {project}", latency=latency)
    return Probe(upstream=PYPI, endpoint=endpoint, url=url, alive=True, status="HTTP 200", latency=latency)


def probe_hub(upstream: Upstream, endpoint: Endpoint, policy: RetryPolicy) -> Probe:
    """A hub's endpoint lists the repository, as a build would (huggingface_hub's HfApi, ModelScope's API)."""
    spec = upstream.model
    url = base_url(spec, endpoint)
    started = time.monotonic()
    try:
        listing = list_repo(spec, endpoint, policy, sessions=Sessions())
    except Exception as exc:  # noqa: BLE001 - classified, re-raised if foreign
        return _failed(upstream.name, endpoint, url, exc=exc, timeout=policy.read_timeout)
    return Probe(upstream=upstream.name, endpoint=endpoint, url=url, alive=True,
                 status=f"lists {len(listing.files)} files of {spec}",
                 latency=time.monotonic() - started)


def _failed(upstream: str, endpoint: Endpoint, url: str, *, exc: Exception, timeout: float) -> Probe:
    found = classify(exc)
    if found is None:
        raise exc
    kind, message = found
    if kind == TIMEOUT:
        message = f"timed out after {timeout:g} s"
    return Probe(upstream=upstream, endpoint=endpoint, url=url, alive=False, status=message)


def _with_manifest(probe: Probe, image: ImageRef, policy: RetryPolicy, *, docker_config: Path | None) -> Probe:
    client = RegistryClient(image.registry, (probe.endpoint,), Fallback(policy), docker_config)
    try:
        digest, _, _ = client.manifest_at(probe.endpoint, image.repository, image.reference)
    except Exception as exc:
        found = classify(exc)
        if found is None:
            raise
        kind, message = found
        if kind == TIMEOUT:
            message = f"timed out after {policy.read_timeout:g} s"
        elif kind == NOT_FOUND:
            message = f"missing: {message}"     # alive but never synced it: a stale mirror
        return replace(probe, manifest_problem=message)
    return replace(probe, manifest=digest)


def fastest_first(mirrors: Mirrors, profile: Profile | None, timeout: float = DEFAULT_RETRY.connect_timeout,
                  *, default_index: Callable[[], str] | None = None) -> tuple[Mirrors, Report]:
    """``mirrors`` with the endpoints of each upstream the profile uses reordered by measured latency."""
    report = check(upstreams(mirrors, profile), timeout, default_index=default_index)
    return mirrors.by_latency(report.latencies()), report
