"""Where bytes come from: the mirror catalog and the fallback policy shared by images, wheels and models.

Endpoints for each upstream (a registry host, PyPI, or a model hub) are configured in layers, highest first:
``--mirrors FILE``, the profile's ``mirrors:``, the user's ``mirrors.yaml``, the built-in catalog.
For each upstream the highest layer that names it wins. ``official`` stands for the upstream
itself; for PyPI that is the client's own default index, whose address this code never spells.

The policy tries endpoints in order. Every failure is classified; transient ones are retried with
backoff, an endpoint that keeps failing is skipped for the rest of the run, and when every
endpoint failed one error lists every attempt. Content is checked by the caller against digests,
so a lying mirror shows up here as a failure of kind ``digest mismatch``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import platformdirs
import requests
import urllib3

from bundler import __version__
from bundler.errors import BundlerError, InputError, IntegrityError, MirrorsError, NetworkError
from bundler.format_models import HUBS, HUGGINGFACE, MODELSCOPE
from bundler.yamlfile import Doc, read_text

OFFICIAL = "official"
PYPI = "pypi"                        # the model hubs (HUBS) are upstreams too, configured like pypi
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?\Z")

# The public mirrors for mainland China, reviewed in CATALOG_REVIEWED from public reports (the review
# could not reach them; `bundler mirrors check` probes them from where you are). Docker Hub mirrors
# closed or narrowed one after another from June 2024: USTC's answers 403 outside its campus network,
# NetEase's and the universities' stopped, TUNA never mirrored Docker Hub (it carries no
# user-generated content); DaoCloud's still serves, an allowlist of images (official, verified and
# sponsored open-source publishers) and 403 for the rest, after which the next endpoint is asked.
# USTC's PyPI mirror has redirected to TUNA's since 2019, so it is not listed twice.
CATALOG_REVIEWED = "2026-11"
BUILTIN_CATALOG: dict[str, Any] = {
    "registries": {
        "docker.io": [
            "https://docker.m.daocloud.io",
            OFFICIAL,
        ],
    },
    "pypi": [
        "https://pypi.tuna.tsinghua.edu.cn/simple",
        "https://mirrors.aliyun.com/pypi/simple",
        OFFICIAL,
    ],
    HUGGINGFACE: ["https://hf-mirror.com", OFFICIAL],
    MODELSCOPE: [OFFICIAL],
}

# Docker Hub's API lives on another host than its name.
OFFICIAL_REGISTRY_URLS = {"docker.io": "https://registry-1.docker.io"}
OFFICIAL_HUB_URLS = {HUGGINGFACE: "https://huggingface.co", MODELSCOPE: "https://www.modelscope.cn"}

ORIGIN_FLAG = "--mirrors"
ORIGIN_PROFILE = "profile"
ORIGIN_USER = "user file"
ORIGIN_BUILTIN = "built-in"


def user_mirrors_file() -> Path:
    return Path(platformdirs.user_config_dir("bundler")) / "mirrors.yaml"


@dataclass(frozen=True)
class Endpoint:
    """One place to ask: a base URL, or ``official`` for the upstream itself."""

    url: str
    origin: str = ORIGIN_BUILTIN

    @property
    def official(self) -> bool:
        return self.url == OFFICIAL

    def __str__(self) -> str:
        return self.url


def registry_base_url(endpoint: Endpoint, upstream: str) -> str:
    """The base URL that serves ``/v2/`` for ``upstream`` through ``endpoint``."""
    if endpoint.official:
        if upstream in OFFICIAL_REGISTRY_URLS:
            return OFFICIAL_REGISTRY_URLS[upstream]
        host = upstream.split(":")[0]
        insecure = host in ("localhost", "127.0.0.1", "::1", "[::1]")
        return f"{'http' if insecure else 'https'}://{upstream}"
    return endpoint.url.rstrip("/")


def hub_base_url(endpoint: Endpoint, hub: str) -> str:
    """The base URL of a model hub's API through ``endpoint``."""
    return OFFICIAL_HUB_URLS[hub] if endpoint.official else endpoint.url.rstrip("/")


@dataclass(frozen=True)
class Mirrors:
    """The effective endpoints: per registry host, for PyPI, and per model hub."""

    registries: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    pypi: tuple[Endpoint, ...] | None = None
    hubs: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)

    def for_registry(self, host: str) -> tuple[Endpoint, ...]:
        return self.registries.get(host) or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_pypi(self) -> tuple[Endpoint, ...]:
        return self.pypi or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_hub(self, hub: str) -> tuple[Endpoint, ...]:
        return self.hubs.get(hub) or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_upstream(self, name: str) -> tuple[Endpoint, ...]:
        """A registry host's endpoints, PyPI's, or a hub's."""
        if name == PYPI:
            return self.for_pypi()
        return self.for_hub(name) if name in HUBS else self.for_registry(name)

    def over(self, lower: Mirrors) -> Mirrors:
        """This layer on top of ``lower``: per upstream, this layer's list wins where it has one."""
        return Mirrors({**lower.registries, **self.registries}, self.pypi if self.pypi is not None else lower.pypi,
                       {**lower.hubs, **self.hubs})

    def by_latency(self, latency: Mapping[tuple[str, Endpoint], float | None]) -> Mirrors:
        """Per upstream (a registry host, or ``pypi``), the endpoints that answered, fastest first, then
        the others in their configured order: a slow or dead mirror stays as a last resort.

        Upstreams ``latency`` knows nothing about keep their order.
        """
        def order(upstream: str, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
            timed = {e: t for e in endpoints if (t := latency.get((upstream, e))) is not None}
            rest = [e for e in endpoints if e not in timed]
            return (*sorted(timed, key=timed.__getitem__), *rest)

        registries = {host: order(host, endpoints) for host, endpoints in self.registries.items()}
        hubs = {hub: order(hub, endpoints) for hub, endpoints in self.hubs.items()}
        return Mirrors(registries, order(PYPI, self.pypi) if self.pypi is not None else None, hubs)


def _check_url(doc: Doc, value: str, key: str, line: int) -> str:
    if value == OFFICIAL:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise doc.fail(line, key, f"{value!r} is not an http(s) URL or 'official'")
    if parts.query or parts.fragment:
        raise doc.fail(line, key, f"{value!r}: an endpoint takes no query or fragment")
    return value


def parse_mirrors(doc: Doc, value: Any, key: str, line: int | None, origin: str) -> Mirrors:
    """Validate a mirrors mapping (a whole mirrors file, or a profile's ``mirrors:``)."""
    mapping = doc.mapping(value, key, line, {"registries", PYPI, *HUBS})
    prefix = f"{key}." if key else ""
    registries: dict[str, tuple[Endpoint, ...]] = {}
    if "registries" in mapping:
        regs = doc.mapping(mapping["registries"], f"{prefix}registries", mapping.lines["registries"],
                           allowed=set(mapping["registries"]) if isinstance(mapping["registries"], dict) else set())
        for host, endpoints in regs.items():
            host_key = f"{prefix}registries.{host}"
            if not isinstance(host, str) or not _HOST.match(host):
                raise doc.fail(regs.lines[host], host_key, "expected a registry host like docker.io or host:5000")
            registries[host] = _endpoint_list(doc, endpoints, host_key, regs.lines[host], origin)
    pypi = None
    if PYPI in mapping:
        pypi = _endpoint_list(doc, mapping[PYPI], f"{prefix}{PYPI}", mapping.lines[PYPI], origin)
    hubs = {hub: _endpoint_list(doc, mapping[hub], f"{prefix}{hub}", mapping.lines[hub], origin)
            for hub in HUBS if hub in mapping}
    return Mirrors(registries, pypi, hubs)


def _endpoint_list(doc: Doc, value: Any, key: str, line: int, origin: str) -> tuple[Endpoint, ...]:
    items = doc.string_list(value, key, line)
    if not items:
        raise doc.fail(line, key, "empty list: name at least one endpoint (or 'official')")
    seen = set()
    endpoints = []
    for index, (url, item_line) in enumerate(items):
        url = _check_url(doc, url, f"{key}[{index}]", item_line)
        if url in seen:
            raise doc.fail(item_line, f"{key}[{index}]", f"{url!r} is listed twice")
        seen.add(url)
        endpoints.append(Endpoint(url, origin))
    return tuple(endpoints)


def load_mirrors_file(path: Path, origin: str) -> Mirrors:
    doc = Doc(path, MirrorsError)
    data = doc.load_text(read_text(path, MirrorsError))
    if data is None:
        return Mirrors()
    return parse_mirrors(doc, data, "", None, origin)


def builtin_mirrors() -> Mirrors:
    registries = {host: tuple(Endpoint(u, ORIGIN_BUILTIN) for u in urls)
                  for host, urls in BUILTIN_CATALOG["registries"].items()}
    hubs = {hub: tuple(Endpoint(u, ORIGIN_BUILTIN) for u in BUILTIN_CATALOG[hub]) for hub in HUBS}
    return Mirrors(registries, tuple(Endpoint(u, ORIGIN_BUILTIN) for u in BUILTIN_CATALOG[PYPI]), hubs)


def effective_mirrors(flag_file: Path | None = None, profile_mirrors: Mirrors | None = None,
                      user_file: Path | None = None) -> Mirrors:
    """Stack the configuration layers, highest first: flag file, profile, user file, built-in."""
    result = builtin_mirrors()
    user_file = user_file if user_file is not None else user_mirrors_file()
    if user_file.is_file():
        result = load_mirrors_file(user_file, f"{ORIGIN_USER} {user_file}").over(result)
    if profile_mirrors is not None:
        result = profile_mirrors.over(result)
    if flag_file is not None:
        result = load_mirrors_file(flag_file, f"{ORIGIN_FLAG} {flag_file}").over(result)
    return result


# ---- the fallback policy -------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and retries, as data; a run carries its policy in its Context (tests pass a fast one)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0       # longest silence allowed while a body streams
    attempts: int = 3                # tries per endpoint for a transient failure
    backoff: float = 1.0             # first pause before a retry; doubles each time
    max_backoff: float = 8.0
    skip_after: int = 3              # failures after which an endpoint is skipped for the run
    stall_window: float = 30.0       # a body slower than stall_bytes per stall_window is abandoned
    stall_bytes: int = 64 << 10
    resolve_timeout: float = 900.0   # one uv resolution through one index (uv cannot see a trickle)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def pause(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * (2 ** retry))


DEFAULT_RETRY = RetryPolicy()

# Failure kinds. Only transient ones are retried on the same endpoint; a 404 (a tag a mirror never
# synced) does not count against the endpoint, since the same mirror may hold everything else.
REFUSED = "connection refused"
UNRESOLVED = "host not found"
TIMEOUT = "timed out"
SLOW = "too slow"               # kept answering, too slowly: not worth a second try on the same endpoint
TLS = "TLS error"
RESET = "connection broken"
SERVER_ERROR = "server error"
NOT_FOUND = "not found"
DENIED = "access denied"
MISMATCH = "digest mismatch"
BAD_RESPONSE = "bad response"
SKIPPED = "skipped"
TRANSIENT = frozenset({TIMEOUT, RESET, SERVER_ERROR})
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class EndpointError(Exception):
    """Raised by an operation to report a classified failure of one endpoint."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def http_error(response: requests.Response, what: str = "") -> EndpointError:
    status = response.status_code
    if status == 404:
        kind = NOT_FOUND
    elif status in (401, 403):
        kind = DENIED
    elif status in RETRY_STATUSES or status >= 500:
        kind = SERVER_ERROR
    else:
        kind = BAD_RESPONSE
    reason = f"HTTP {status}"
    if response.reason:
        reason += f" {response.reason}"
    return EndpointError(kind, f"{what}: {reason}" if what else reason)


def classify(exc: BaseException) -> tuple[str, str] | None:
    """The kind and a short message for a failure of one endpoint, or None if it is not one."""
    if isinstance(exc, EndpointError):
        return exc.kind, str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return TLS, _innermost(exc)
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout)):
        return TIMEOUT, "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = _innermost(exc)
        if isinstance(_root(exc), urllib3.exceptions.ReadTimeoutError) or "timed out" in text:
            return TIMEOUT, "timed out"
        if "refused" in text.lower():
            return REFUSED, REFUSED
        if "resolve" in text.lower() or "Name or service not known" in text:
            return UNRESOLVED, UNRESOLVED
        return RESET, text
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
                        requests.exceptions.ContentDecodingError)):
        return RESET, _innermost(exc)
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return BAD_RESPONSE, "too many redirects"
    if isinstance(exc, requests.exceptions.RequestException):
        return BAD_RESPONSE, _innermost(exc)
    if isinstance(exc, TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, ConnectionError):
        return RESET, str(exc)
    return None


def _root(exc: BaseException) -> BaseException:
    while True:
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        inner = inner or getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) or inner is exc:
            return exc
        exc = inner


def _innermost(exc: BaseException) -> str:
    root = _root(exc)
    # urllib3's ProtocolError carries ("Connection broken: IncompleteRead(...)", the exception)
    text = root.args[0] if isinstance(root, urllib3.exceptions.ProtocolError) and root.args else str(root)
    # urllib3 wraps the useful part: "<Connection ...>: Failed to establish ...: [Errno 111] ..."
    return text.split(": ", 1)[-1] if text.startswith("<") else text


@dataclass(frozen=True)
class Attempt:
    endpoint: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.message}"


def endpoints_failed(what: str, attempts: list[Attempt]) -> BundlerError:
    """One error for a request every endpoint failed, of the class its failures call for."""
    tried = [a for a in attempts if a.kind != SKIPPED]
    runs: list[tuple[str, int]] = []    # the same failure of one endpoint, retried, is said once with its count
    for attempt in map(str, attempts):
        if runs and runs[-1][0] == attempt:
            runs[-1] = (attempt, runs[-1][1] + 1)
        else:
            runs.append((attempt, 1))
    detail = "; ".join(text + (f" ({count} tries)" if count > 1 else "") for text, count in runs)
    message = f"{what}: every endpoint failed: {detail}"
    if tried and all(a.kind == MISMATCH for a in tried):
        return IntegrityError(message)
    if tried and all(a.kind == NOT_FOUND for a in tried):
        return InputError(f"{what}: not found on any endpoint: {detail}")
    return NetworkError(message)


T = TypeVar("T")


class Fallback:
    """Runs an operation against endpoints in order; remembers, for this run, which keep failing."""

    def __init__(self, policy: RetryPolicy = DEFAULT_RETRY, sleep: Callable[[float], None] = time.sleep,
                 note: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self._sleep = sleep
        self._note = note   # told when a request succeeded only after an endpoint failed
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._served: dict[tuple[str, ...], str] = {}    # per list of endpoints: the one that last answered
        self._told: set[str] = set()                      # endpoints whose failure was noted: once per run

    def serving(self, endpoints: Iterable[Any], label: Callable[[Any], str] = str) -> str:
        """The endpoint of ``endpoints`` that last answered in this run, else the first one not skipped:
        where the next request will most likely be served from."""
        names = [label(e) for e in endpoints]
        with self._lock:
            found = self._served.get(tuple(names))
        return found or next((n for n in names if not self.skipped(n)), names[0] if names else "")

    def _tell(self, what: str, attempts: list[Attempt], served: str, endpoints: list[Any],
              label: Callable[[Any], str]) -> None:
        """Note the endpoints that failed before ``served`` answered, each once per run (a dead mirror
        would otherwise be named for every layer and wheel), saying how to stop trying a built-in one."""
        with self._lock:
            new = [a for a in attempts if a.kind != SKIPPED and a.endpoint not in self._told]
            self._told.update(a.endpoint for a in new)
        if not new or self._note is None:
            return
        origins = {label(e): getattr(e, "origin", "") for e in endpoints}
        builtin = [a.endpoint for a in new if origins.get(a.endpoint) == ORIGIN_BUILTIN]
        hint = ""
        if builtin:
            hint = (f" ({', '.join(dict.fromkeys(builtin))}: from the built-in list, reviewed {CATALOG_REVIEWED}; a "
                    f"list of your own in {user_mirrors_file()} or --mirrors FILE stops trying it)")
        self._note(f"{what}: {'; '.join(map(str, new))}; served by {served}; not repeated this run{hint}")

    def failures(self, endpoint: str) -> int:
        with self._lock:
            return self._failures.get(endpoint, 0)

    def skipped(self, endpoint: str) -> bool:
        return self.failures(endpoint) >= self.policy.skip_after

    def _count(self, endpoint: str, failed: bool) -> None:
        with self._lock:
            if failed:
                self._failures[endpoint] = self._failures.get(endpoint, 0) + 1
            elif self._failures.get(endpoint, 0) < self.policy.skip_after:
                self._failures[endpoint] = 0

    def run(self, what: str, endpoints: Iterable[Any], operation: Callable[[Any], T],
            label: Callable[[Any], str] = str) -> T:
        """``operation(endpoint)`` on each endpoint in turn until one succeeds.

        ``what`` names the operation and its input for the error (``fetching layer sha256:ab.. of
        ubuntu:22.04``). Exceptions that are not endpoint failures (bad input, a full disk) pass
        straight through.
        """
        attempts: list[Attempt] = []
        endpoints = list(endpoints)
        key = tuple(label(e) for e in endpoints)
        for endpoint in endpoints:
            name = label(endpoint)
            if self.skipped(name):
                attempts.append(Attempt(name, SKIPPED, f"skipped after {self.policy.skip_after} failures in this run"))
                continue
            for retry in range(self.policy.attempts):
                try:
                    result = operation(endpoint)
                except Exception as exc:
                    found = classify(exc)
                    if found is None:
                        raise
                    kind, message = found
                    attempts.append(Attempt(name, kind, message))
                    if kind in TRANSIENT and retry + 1 < self.policy.attempts:
                        self._sleep(self.policy.pause(retry))
                        continue
                    if kind != NOT_FOUND:
                        self._count(name, failed=True)
                    break
                else:
                    self._count(name, failed=False)
                    with self._lock:
                        self._served[key] = name
                    self._tell(what, attempts, name, endpoints, label)
                    return result
        if not attempts:
            raise NetworkError(f"{what}: no endpoint configured")
        raise endpoints_failed(what, attempts)


# ---- HTTP sessions -------------------------------------------------------------------------

def ca_bundle() -> str | bool:
    """The CA bundle a user pointed us at, else the default store."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return value
    return True


class _Session(requests.Session):
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the session's own CA bundle on
    # every request; ours was already chosen from the environment, SSL_CERT_FILE included.
    def merge_environment_settings(self, url: str, proxies: dict, stream: bool | None, verify: object,
                                   cert: object) -> dict:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = self.verify
        return settings


def new_session() -> requests.Session:
    """A session that honours proxy variables and custom CA bundles."""
    session = _Session()
    session.trust_env = True
    session.verify = ca_bundle()
    session.headers["User-Agent"] = f"bundler/{__version__}"
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Sessions:
    """One requests session per thread (a session is not safe to share across threads)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = new_session()
        return session
