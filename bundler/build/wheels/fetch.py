"""Wheels: fetching exactly what the requirements lock pins (requirements.py reads the lock and knows
the target's tags).

Resolution itself is uv's (see resolve.py); this module chooses for each pin the best wheel for the
target's tags, and downloads it through the PyPI mirrors, extra indexes and find-links pages in
order, checking its sha256 against the lock while it streams, into the shared cache.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bundler.build.cache import Cache
from bundler.build.downloads import fetch_parallel
from bundler.build.options import FetchStats, Planned
from bundler.build.wheels.requirements import Pin, WheelTarget
from bundler.digest import Digest
from bundler.errors import LockError
from bundler.files import CHUNK, disk_error, sha256_file
from bundler.net.endpoints import BAD_RESPONSE, MISMATCH, NOT_FOUND, Endpoint, EndpointError, Fallback, http_error
from bundler.net.http import Sessions, iter_body, read_limited
from bundler.parallel import Stopped, run_parallel
from bundler.progress import NULL, Progress

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
MAX_PAGE = 64 << 20           # the largest project pages (every release of a big project) are a few MiB
ACCEPT_PAGES = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
@dataclass(frozen=True, kw_only=True)
class Link:
    filename: str
    url: str
    sha256: str | None
    size: int | None = None         # from a PEP 700 page (``size``), or asked of the server


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def parse_page(body: bytes, content_type: str, page_url: str) -> list[Link]:
    """Links of a PEP 691 JSON page, or of a PEP 503 / find-links HTML page."""
    links = []
    if content_type.startswith(SIMPLE_JSON):
        try:
            data = json.loads(body)
            files = data["files"]
        except (ValueError, KeyError, TypeError):
            raise EndpointError(BAD_RESPONSE, f"{page_url} is not a PEP 691 page") from None
        for entry in files:
            url = urljoin(page_url, entry.get("url", ""))
            size = entry.get("size")
            links.append(Link(filename=entry.get("filename") or _filename(url), url=url,
                              sha256=(entry.get("hashes") or {}).get("sha256"),
                              size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0
                              else None))
        return links
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    for href in parser.hrefs:
        url = urljoin(page_url, href)
        fragment = urlsplit(url).fragment
        sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        links.append(Link(filename=_filename(url), url=url.split("#")[0], sha256=sha))
    return links


def _filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


# ---- fetching --------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Wheel:
    """A wheel in the cache, ready to bundle."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int
    built: bool = False             # built here from a pure-Python sdist


@dataclass(frozen=True)
class Source:
    """Where wheel files may come from: an index (``<url>/<project>/``) or a find-links page."""

    url: str
    kind: str = "index"             # index | links
    origin: str = field(default="", compare=False)    # the mirrors layer it came from (mirrors.Endpoint)

    def __str__(self) -> str:
        return self.url


def _version_matches(filename_version: Version, pinned: str) -> bool:
    try:
        return filename_version == Version(pinned)
    except InvalidVersion:
        return str(filename_version) == pinned


class WheelFetcher:
    """Fetches the pinned wheels of a lock for one target."""

    def __init__(self, target: WheelTarget, sources: list[Source], fallback: Fallback, cache: Cache,
                 builder: Callable[[Path, str, Pin, WheelTarget], Path] | None = None,
                 stop: threading.Event | None = None, pages: dict | None = None) -> None:
        self.target, self.sources, self.fallback, self.cache = target, sources, fallback, cache
        self.builder = builder
        self.stop = stop if stop is not None else threading.Event()   # set: downloads end at their next chunk
        self._sessions = Sessions()
        self._tags = {tag: rank for rank, tag in enumerate(target.tags)}
        # the pages (and file sizes) this run read: a plan's reading serves the fetch after it
        self._pages: dict = pages if pages is not None else {}
        self._lock = threading.Lock()

    # -- choosing --
    def rank(self, filename: str) -> int | None:
        """The wheel's priority for the target (lower is better), or None if it does not fit."""
        try:
            _, _, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            return None
        ranks = [self._tags[t] for t in tags if t in self._tags]
        return min(ranks) if ranks else None

    def _candidates(self, pin: Pin, links: Iterable[Link]) -> tuple[list[Link], list[Link]]:
        """(wheels that fit the target, best first; sdists) among ``links`` whose hash the lock allows."""
        wheels, sdists = [], []
        for link in links:
            if link.sha256 is not None and link.sha256 not in pin.hashes:
                continue
            try:
                if link.filename.endswith(".whl"):
                    name, version, _, _ = parse_wheel_filename(link.filename)
                    if (canonicalize_name(name) == pin.name and _version_matches(version, pin.version)
                            and self.rank(link.filename) is not None):
                        wheels.append(link)
                elif link.filename.endswith((".tar.gz", ".zip")):
                    name, version = parse_sdist_filename(link.filename)
                    if canonicalize_name(name) == pin.name and _version_matches(version, pin.version):
                        sdists.append(link)
            except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
                continue
        wheels.sort(key=lambda link: self.rank(link.filename))
        return wheels, sdists

    def _choice(self, pin: Pin) -> str:
        target = self.target
        return f"{target.platform}-cp{target.python}-glibc{target.glibc}-{pin.name}-{pin.version}".replace("/", "_")

    def cached(self, pin: Pin) -> Wheel | None:
        """The wheel an earlier fetch chose for the pin and this target, when the cache still has it and
        the pin's hashes allow it (or the sdist it was built from). Only the choice counts: a file of the
        pin cached for another target (an older glibc) may not be the best for this one, and only the
        index says which files there are; a file published again under its name since that choice is
        one the lock no longer allows."""
        choice = self.cache.meta("wheel-choice", self._choice(pin))
        sha = choice.get("sha256") if choice else None
        meta = self.cache.meta("wheel", sha) if sha else None
        if not meta or not self.cache.has(Digest.from_hex(sha)):
            return None
        if sha not in pin.hashes and meta.get("built_from") not in pin.hashes:
            return None
        return Wheel(name=pin.name, version=pin.version, filename=meta["filename"], sha256=sha,
                     size=self.cache.size(Digest.from_hex(sha)),
                     built=bool(choice.get("built")))

    def _chose(self, pin: Pin, wheel: Wheel) -> Wheel:
        self.cache.set_meta("wheel-choice", self._choice(pin), {"sha256": wheel.sha256, "built": wheel.built})
        return wheel

    def _in_cache(self, link: Link) -> bool:
        """The file is in the cache already (fetched for another target)."""
        return bool(link.sha256 and self.cache.meta("wheel", link.sha256) and
                    self.cache.has(Digest.from_hex(link.sha256)))

    # -- the network --
    def _page(self, source: Source, project: str) -> list[Link]:
        key = (source.url, project if source.kind == "index" else "")
        with self._lock:
            if key in self._pages:
                return self._pages[key]
        if source.url.startswith("file://") or source.url.startswith("/"):
            folder = Path(unquote(urlsplit(source.url).path) if source.url.startswith("file://") else source.url)
            links = [Link(filename=p.name, url=p.as_uri(),
                          sha256=None) for p in sorted(folder.iterdir())] if folder.is_dir() else []
        else:
            url = f"{source.url.rstrip('/')}/{project}/" if source.kind == "index" else source.url
            response = self._sessions.get().get(url, headers={"Accept": ACCEPT_PAGES}, stream=True,
                                                timeout=self.fallback.policy.timeout)
            with response:
                if response.status_code != 200:
                    raise http_error(response, f"page {url}")
                body = read_limited(response, MAX_PAGE, f"page {url}", policy=self.fallback.policy)
            links = parse_page(body, response.headers.get("Content-Type", ""), response.url)
        with self._lock:
            self._pages[key] = links
        return links

    def _download(self, link: Link, pin: Pin, on_bytes: Callable[[int], None], stats: FetchStats) -> str:
        """One file into the cache, resumed if a partial copy exists; returns its sha256 hex."""
        partial = self.cache.partial(f"file-{link.filename}")
        hasher = hashlib.sha256()
        offset = 0
        if partial.exists():
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    offset += len(chunk)
        if link.url.startswith("file://"):
            source_path = Path(unquote(urlsplit(link.url).path))
            chunks, status = _file_chunks(source_path, offset), 206 if offset else 200
        else:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self._sessions.get().get(link.url, headers=headers, stream=True,
                                                timeout=self.fallback.policy.timeout)
            if response.status_code not in (200, 206):
                response.close()
                raise http_error(response, link.filename)
            status = response.status_code
            chunks = iter_body(response, self.fallback.policy)
        if offset and status != 206:
            hasher, offset = hashlib.sha256(), 0
            partial.unlink(missing_ok=True)
        elif offset:
            stats.add(bytes_resumed=offset)
        try:
            with open(partial, "ab") as out:
                for chunk in chunks:
                    if self.stop.is_set():
                        raise Stopped()
                    hasher.update(chunk)
                    out.write(chunk)
                    on_bytes(len(chunk))
        except OSError as exc:
            raise disk_error(exc, f"writing {link.filename} to the cache {self.cache.root}") from None
        sha = hasher.hexdigest()
        if sha not in pin.hashes or (link.sha256 and sha != link.sha256):
            partial.unlink(missing_ok=True)
            raise EndpointError(MISMATCH, f"{link.filename} arrived with sha256 {sha[:12]}.., which the lock "
                                          "does not allow")
        self.cache.commit(partial, Digest.from_hex(sha))
        self.cache.set_meta("wheel", sha, {"filename": link.filename})
        return sha

    def _size(self, link: Link) -> int | None:
        """The file's size: from its page, else asked of its server (HEAD); None when nobody says."""
        if link.size is not None:
            return link.size
        key = ("size", link.url)
        with self._lock:
            if key in self._pages:
                return self._pages[key]
        size = None
        try:
            if link.url.startswith("file://"):
                size = Path(unquote(urlsplit(link.url).path)).stat().st_size
            else:
                response = self._sessions.get().head(link.url, allow_redirects=True,
                                                     timeout=self.fallback.policy.timeout)
                length = response.headers.get("Content-Length", "")
                size = int(length) if response.status_code == 200 and length.isdigit() else None
        except (OSError, requests.RequestException):
            size = None
        with self._lock:
            self._pages[key] = size
        return size

    def plan(self, pin: Pin) -> Planned:
        """What fetching ``pin`` would download, and from where, reading only index pages."""
        hit = self.cached(pin)
        if hit is not None:
            return Planned(name=f"{pin.name} {pin.version} ({hit.filename})", size=hit.size, cached=True,
                           source="cache", digest=hit.sha256)

        def attempt(source: Source) -> Planned:
            wheels, sdists = self._candidates(pin, self._page(source, pin.name))
            if wheels:
                cached = self._in_cache(wheels[0])
                only = pin.hashes[0] if len(pin.hashes) == 1 else ""   # the page may give no hash
                return Planned(name=f"{pin.name} {pin.version} ({wheels[0].filename})", size=self._size(wheels[0]),
                               cached=cached,
                               source="cache" if cached else str(source), digest=wheels[0].sha256 or only)
            if sdists:
                return Planned(name=f"{pin.name} {pin.version} (sdist {sdists[0].filename}, built into a wheel here)",
                               size=self._size(sdists[0]), cached=False, source=str(source))
            raise EndpointError(NOT_FOUND, f"no file of {pin.name}=={pin.version} for {self.target} with a "
                                           "hash the lock allows")

        return self.fallback.run(f"fetching {pin.name}=={pin.version}", self.sources, attempt)

    def fetch(self, pin: Pin, on_bytes: Callable[[int], None] = lambda _n: None,
              stats: FetchStats | None = None) -> Wheel:
        stats = stats if stats is not None else FetchStats()
        hit = self.cached(pin)
        if hit is not None:
            stats.add(cached=1)
            return hit

        def attempt(source: Source) -> Wheel:
            wheels, sdists = self._candidates(pin, self._page(source, pin.name))
            if wheels:
                link = wheels[0]
                with self.cache.lock(f"file-{link.filename}"):
                    if self._in_cache(link):
                        sha = link.sha256
                        stats.add(cached=1)
                    else:
                        sha = self._download(link, pin, on_bytes, stats)
                        stats.add(downloaded=1)
                return self._chose(pin, Wheel(name=pin.name, version=pin.version, filename=link.filename, sha256=sha,
                                              size=self.cache.size(Digest.from_hex(sha))))
            if sdists:
                return self._build(sdists[0], pin, on_bytes, stats=stats)
            raise EndpointError(NOT_FOUND, f"no file of {pin.name}=={pin.version} for {self.target} with a "
                                           "hash the lock allows")

        return self.fallback.run(f"fetching {pin.name}=={pin.version}", self.sources, attempt)

    def _build(self, link: Link, pin: Pin, on_bytes: Callable[[int], None], *, stats: FetchStats) -> Wheel:
        if self.builder is None:
            raise LockError(f"{pin.name}=={pin.version} is published only as an sdist and building is off")
        with self.cache.lock(f"file-{link.filename}"):
            sha = self._download(link, pin, on_bytes, stats)
        wheel_path = self.builder(self.cache.path(Digest.from_hex(sha)), link.filename, pin, self.target)
        try:
            wheel_bytes_sha = sha256_file(wheel_path)
            target = Digest.from_hex(wheel_bytes_sha)
            if not self.cache.has(target):
                self.cache.commit(wheel_path, target)
            self.cache.set_meta("wheel", wheel_bytes_sha, {"filename": wheel_path.name, "built_from": sha})
        finally:
            shutil.rmtree(wheel_path.parent, ignore_errors=True)
        stats.built.append(f"{pin.name}=={pin.version}")
        return self._chose(pin, Wheel(name=pin.name, version=pin.version, filename=wheel_path.name,
                                      sha256=wheel_bytes_sha, size=self.cache.size(target),
                                      built=True))


def _file_chunks(path: Path, offset: int) -> Iterable[bytes]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(CHUNK):
                yield chunk
    except FileNotFoundError:
        raise EndpointError(NOT_FOUND, f"{path}: no such file") from None


def plan_wheels(pins: list[Pin], fetcher: WheelFetcher, jobs: int = 4) -> list[Planned]:
    """What fetching every pin that applies to the target would download (index pages read in parallel)."""
    wanted = {f"{p.name}=={p.version}": p for p in pins if p.applies_to(fetcher.target)}
    found: dict[str, Planned] = {}

    def one(key: str, stop: threading.Event) -> None:
        if stop.is_set():
            raise Stopped()
        found[key] = fetcher.plan(wanted[key])

    run_parallel(wanted, one, jobs, fetcher.stop)
    return [found[key] for key in wanted]


def fetch_wheels(pins: list[Pin], fetcher: WheelFetcher, jobs: int = 4, *, progress: Progress = NULL,
                 stats: FetchStats | None = None, purpose: str = "") -> list[Wheel]:
    """Every pin that applies to the target, in parallel; the first failure stops the rest. ``purpose``
    ends the progress bar's description (`` for the restorer``)."""
    stats = stats if stats is not None else FetchStats()
    wanted = {f"{p.name}=={p.version}": p for p in pins if p.applies_to(fetcher.target)}
    stats.wanted += len(wanted)
    results: dict[str, Wheel] = {}
    planned = [p for p in plan_wheels(pins, fetcher, jobs) if not p.cached]   # pages read once: the fetch reuses them
    total = None if any(p.size is None for p in planned) else sum(p.size for p in planned)

    def one(key: str, stop: threading.Event, on_bytes: Callable[[int], None]) -> int:
        if stop.is_set():
            raise Stopped()
        results[key] = fetcher.fetch(wanted[key], on_bytes, stats)
        return 0   # a resumed wheel counts its bytes itself

    fetch_parallel(f"fetching {len(planned)} of {len(wanted)} wheels{purpose}", total, wanted, fetch=one, jobs=jobs,
                   stop=fetcher.stop, progress=progress, stats=stats)
    return [results[key] for key in wanted]


def sources_for(pypi: tuple[Endpoint, ...], default_index: Callable[[], str], extra_index_urls: Iterable[str] = (),
                find_links: Iterable[str] = ()) -> list[Source]:
    """PyPI's endpoints in order (``official`` as the client's own default), then the profile's extras."""
    sources = [Source(default_index() if e.official else e.url.rstrip("/"), origin=e.origin) for e in pypi]
    sources += [Source(url.rstrip("/")) for url in extra_index_urls]
    sources += [Source(url, "links") for url in find_links]
    return list(dict.fromkeys(sources))
