"""Where bytes come from, and what to do when a place fails: endpoints and the fallback policy
shared by every network client on both sides (registries, indexes, model hubs).

The policy tries endpoints in order. Every failure is classified; transient ones are retried with
backoff, an endpoint that keeps failing is skipped for the rest of the run, and when every
endpoint failed one error lists every attempt. Content is checked by the caller against digests,
so a lying mirror shows up here as a failure of kind ``digest mismatch``. Which endpoints an
upstream has is the connected side's mirror catalog (build/mirrors.py); ``official`` stands for the
upstream itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import urllib3

from bundler.context import DEFAULT_RETRY, RetryPolicy
from bundler.errors import BundlerError, InputError, IntegrityError, NetworkError

OFFICIAL = "official"


# Docker Hub's API lives on another host than its name.
OFFICIAL_REGISTRY_URLS = {"docker.io": "https://registry-1.docker.io"}

ORIGIN_BUILTIN = "built-in"


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


# ---- the fallback policy -------------------------------------------------------------------


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

    def __init__(self, policy: RetryPolicy = DEFAULT_RETRY, *, sleep: Callable[[float], None] = time.sleep,
                 note: Callable[[str], None] | None = None, builtin_hint: str = "") -> None:
        self.policy = policy
        self._sleep = sleep
        self._note = note   # told when a request succeeded only after an endpoint failed
        self._builtin_hint = builtin_hint   # added to the note when an endpoint of the built-in list failed
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

    def _tell(self, what: str, attempts: list[Attempt], served: str, *, endpoints: list[Any],
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
        if builtin and self._builtin_hint:
            hint = f" ({', '.join(dict.fromkeys(builtin))}: {self._builtin_hint})"
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
                    self._tell(what, attempts, name, endpoints=endpoints, label=label)
                    return result
        if not attempts:
            raise NetworkError(f"{what}: no endpoint configured")
        raise endpoints_failed(what, attempts)


# ---- HTTP sessions -------------------------------------------------------------------------


