"""HTTP for every network client on both sides: sessions that honour proxies and the user's CA
bundle (one per thread), and response bodies read in bounded pieces that fail as a timeout when they
trickle slower than the run's policy allows."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import requests

from bundler import __version__
from bundler.context import RetryPolicy
from bundler.files import CHUNK
from bundler.net.endpoints import BAD_RESPONSE, SLOW, EndpointError


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


def read_limited(response: requests.Response, limit: int, what: str, *, policy: RetryPolicy) -> bytes:
    """A small body whole (a manifest, a config, an index page), refusing one larger than ``limit``
    and one that trickles slower than the policy allows."""
    data = bytearray()
    for chunk in iter_body(response, policy):
        data += chunk
        if len(data) > limit:
            raise EndpointError(BAD_RESPONSE, f"{what} is larger than expected ({limit} bytes)")
    return bytes(data)


def iter_body(response: requests.Response, policy: RetryPolicy) -> Iterator[bytes]:
    """A response body as it arrives, failing as a timeout when it trickles slower than the policy allows.

    ``read1`` returns what the socket has instead of waiting for a full chunk, so a body that
    sends a byte now and then is noticed; a per-read timeout alone would wait on it forever.
    """
    window_start, window_bytes = time.monotonic(), 0
    while True:
        chunk = response.raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk
        window_bytes += len(chunk)
        now = time.monotonic()
        if now - window_start >= policy.stall_window:
            if window_bytes < policy.stall_bytes:
                raise EndpointError(SLOW, f"stalled: {window_bytes} bytes in {policy.stall_window:g} s")
            window_start, window_bytes = now, 0
