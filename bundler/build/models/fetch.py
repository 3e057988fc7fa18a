"""Models on the connected side: repositories pinned file by file, fetched into the shared cache.

Locking lists each repository through its hub's endpoints (hub.py) and pins the commit and every
file's path, size and sha256: the hub's own sha256 for an LFS file; for a small file, the sha256
of its bytes, fetched now and accepted only when they hash to the git blob id the hub lists. A
build then fetches exactly those bytes, from any endpoint, checked while they stream.

Downloads are ours, not a hub client's: per file, the endpoints are tried in order (a dead or
lying mirror is skipped like a registry mirror), an interrupted file resumes with HTTP Range, and
bytes go in pieces of files.CHUNK to ``partial/`` in the cache, so memory stays flat for
multi-gigabyte shards. A file two repositories share is fetched, cached and bundled once.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bundler.build.cache import Cache
from bundler.build.downloads import fetch_parallel
from bundler.build.mirrors import Mirrors
from bundler.build.models.hub import file_url, list_repo
from bundler.build.models.spec import ModelSpec
from bundler.build.options import FetchStats
from bundler.build.pack import Member
from bundler.digest import Digest
from bundler.errors import LockError
from bundler.files import CHUNK, disk_error
from bundler.format.models import (
    GIT_OID,
    HUBS,
    HUGGINGFACE,
    REPO_TYPES,
    ModelEntry,
    ModelFile,
    file_problem,
    repo_id_problem,
    revision_problem,
    tree_problem,
)
from bundler.format.paths import model_blob_path
from bundler.net.endpoints import MISMATCH, RESET, Endpoint, EndpointError, Fallback, http_error
from bundler.net.http import Sessions, iter_body
from bundler.parallel import Stopped, run_parallel
from bundler.progress import NULL, Progress

REPO_COMMIT = "X-Repo-Commit"     # the Hub's header: the commit a resolve answer came from


@dataclass(frozen=True)
class LockedModel:
    """A repository pinned for a build: what the lock file records."""

    spec: ModelSpec
    commit: str | None                   # None on ModelScope, whose API names no commit
    files: tuple[ModelFile, ...]

    @property
    def revision(self) -> str:
        """What to ask the hub for: the commit where there is one, so a moved branch changes nothing."""
        return self.commit or self.spec.revision

    def entry(self) -> ModelEntry:
        spec = self.spec
        return ModelEntry(spec.hub, spec.repo, spec.repo_type, revision=spec.revision, commit=self.commit,
                          files=self.files)


@dataclass(frozen=True, kw_only=True)
class _Want:
    """One file to fetch, and what its bytes must hash to."""

    spec: ModelSpec
    revision: str
    path: str
    size: int
    sha256: str | None                   # None: a small file being pinned now, by its git blob id
    git_oid: str | None = None

    @property
    def key(self) -> str:
        return f"model-{self.sha256}" if self.sha256 else f"model-git-{self.git_oid}"


class ModelFetcher:
    """Lists repositories and fetches their files through each hub's endpoints, into the cache."""

    def __init__(self, mirrors: Mirrors, fallback: Fallback, cache: Cache, stop: threading.Event | None = None) -> None:
        self.mirrors, self.fallback, self.cache = mirrors, fallback, cache
        self.stop = stop if stop is not None else threading.Event()
        self._sessions = Sessions()
        self._token: str | None = None
        self._token_read = False

    def token(self) -> str | None:
        """The user's Hugging Face token (HF_TOKEN, or `hf auth login`'s), for the Hub itself only."""
        if not self._token_read:
            from huggingface_hub import get_token
            self._token, self._token_read = get_token(), True
        return self._token

    def endpoints(self, spec: ModelSpec) -> tuple[Endpoint, ...]:
        return self.mirrors.for_hub(spec.hub)

    # -- locking --
    def pin(self, spec: ModelSpec, on_bytes: Callable[[int], None] = lambda _n: None,
            stats: FetchStats | None = None) -> LockedModel:
        """List the repository, keep the files the spec wants, and pin each by sha256."""
        policy = self.fallback.policy
        listing = self.fallback.run(f"listing {spec}", self.endpoints(spec),
                                    lambda e: list_repo(spec, e, policy, sessions=self._sessions, token=self.token()))
        wanted = [f for f in listing.files if spec.wants(f.path)]
        if not wanted:
            raise LockError(f"{spec}: no file of the repository matches its include/exclude patterns")
        revision = listing.commit or spec.revision
        files = []
        for found in sorted(wanted, key=lambda f: f.path):
            sha256 = found.sha256
            if sha256 is None:   # a small file: pinned by what it holds, checked against its git blob id
                sha256 = self.fetch(_Want(spec=spec, revision=revision, path=found.path, size=found.size, sha256=None,
                                          git_oid=found.git_oid), on_bytes,
                                    stats)
            files.append(ModelFile(found.path, found.size, sha256, etag=found.etag))
        return LockedModel(spec, listing.commit, tuple(files))

    # -- fetching --
    def fetch(self, want: _Want, on_bytes: Callable[[int], None] = lambda _n: None,
              stats: FetchStats | None = None) -> str:
        """One file into the cache (unless it is there); returns its sha256 (hex)."""
        stats = stats if stats is not None else FetchStats()
        if want.sha256 and self.cache.has(Digest.from_hex(want.sha256)):
            stats.add(cached=1)
            return want.sha256
        with self.cache.lock(want.key):
            if want.sha256 and self.cache.has(Digest.from_hex(want.sha256)):
                stats.add(cached=1)
                return want.sha256
            sha256 = self.fallback.run(f"fetching {want.path} of {want.spec}", self.endpoints(want.spec),
                                       lambda e: self._download(e, want, on_bytes, stats))
        stats.add(downloaded=1)
        return sha256

    def _download(self, endpoint: Endpoint, want: _Want, on_bytes: Callable[[int], None], stats: FetchStats) -> str:
        partial = self.cache.partial(want.key)
        hashers = _Hashers(want.size, want.git_oid is not None)
        offset = hashers.resume(partial, want.size)
        headers = {"Accept-Encoding": "identity"}     # sizes and Range are about the file's own bytes
        if want.spec.hub == HUGGINGFACE and endpoint.official and self.token():
            headers["Authorization"] = f"Bearer {self.token()}"
        if offset < want.size or want.size == 0:
            if offset:
                headers["Range"] = f"bytes={offset}-"
            url = file_url(want.spec, endpoint, want.revision, path=want.path)
            response = self._sessions.get().get(url, headers=headers, stream=True,
                                                timeout=self.fallback.policy.timeout)
            with response:
                offset = self._receive(response, want, partial, hashers=hashers, offset=offset, on_bytes=on_bytes,
                                       stats=stats)
        return self._store(partial, want, hashers, size=offset)

    def _receive(self, response, want: _Want, partial: Path, *, hashers: _Hashers, offset: int,  # noqa: ANN001
                 on_bytes: Callable[[int], None], stats: FetchStats) -> int:
        """The body appended to ``partial``; returns how many bytes the partial file holds now."""
        if response.status_code not in (200, 206):
            raise http_error(response, want.path)
        first = response.history[0] if response.history else response
        served = first.headers.get(REPO_COMMIT)
        if want.spec.hub == HUGGINGFACE and served and served != want.revision and GIT_OID.match(want.revision):
            raise EndpointError(MISMATCH, f"{want.path}: served from commit {served[:12]}.., the lock pins "
                                          f"{want.revision[:12]}..")
        if offset and response.status_code == 200:     # the endpoint ignored Range: start over
            hashers.restart()
            partial.unlink(missing_ok=True)
            offset = 0
        elif offset:
            stats.add(bytes_resumed=offset)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != want.size - offset:
            raise EndpointError(MISMATCH, f"{want.path}: {int(length) + offset} bytes served, the lock says "
                                          f"{want.size}")
        try:
            with open(partial, "ab") as out:
                for chunk in iter_body(response, self.fallback.policy):
                    if self.stop.is_set():
                        raise Stopped()
                    offset += len(chunk)
                    if offset > want.size:
                        partial.unlink(missing_ok=True)
                        raise EndpointError(MISMATCH, f"{want.path}: more than the {want.size} bytes the lock says")
                    hashers.update(chunk)
                    out.write(chunk)
                    on_bytes(len(chunk))
        except OSError as exc:
            raise disk_error(exc, f"writing {want.path} to the cache {self.cache.root}") from None
        return offset

    def _store(self, partial: Path, want: _Want, hashers: _Hashers, *, size: int) -> str:
        if size < want.size:   # kept: the next endpoint, or the next run, resumes it
            raise EndpointError(RESET, f"{want.path}: the body ended after {size} of {want.size} bytes")
        sha256, git_oid = hashers.sha256.hexdigest(), hashers.git_oid()
        problem = None
        if want.sha256 and sha256 != want.sha256:
            problem = f"sha256 {sha256[:12]}.., the lock pins {want.sha256[:12]}.."
        elif want.git_oid and git_oid != want.git_oid:
            problem = f"git blob id {git_oid[:12]}.., the hub lists {want.git_oid[:12]}.."
        if problem:
            partial.unlink(missing_ok=True)
            raise EndpointError(MISMATCH, f"{want.path} arrived with {problem}")
        digest = Digest.from_hex(sha256)
        if self.cache.has(digest):
            partial.unlink(missing_ok=True)
        else:
            partial.touch()      # a file of 0 bytes never came through the loop
            self.cache.commit(partial, digest)
        return sha256


class _Hashers:
    """sha256 of the bytes, and their git blob id (sha1 of ``blob <size>\\0`` and the bytes) when wanted."""

    def __init__(self, size: int, git: bool) -> None:
        self.size, self.git = size, git
        self.restart()

    def restart(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1(b"blob %d\0" % self.size) if self.git else None  # noqa: S324 - git's object id

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.sha1 is not None:
            self.sha1.update(chunk)

    def git_oid(self) -> str | None:
        return self.sha1.hexdigest() if self.sha1 is not None else None

    def resume(self, partial: Path, size: int) -> int:
        """Hash what an interrupted download left; returns its length (0 when there is nothing usable)."""
        if not partial.is_file():
            return 0
        if partial.stat().st_size > size:
            partial.unlink()
            return 0
        offset = 0
        with open(partial, "rb") as kept:
            while chunk := kept.read(CHUNK):
                self.update(chunk)
                offset += len(chunk)
        return offset


# ---- the verbs' parts --------------------------------------------------------------------------

def lock_models(specs: tuple[ModelSpec, ...], fetcher: ModelFetcher, jobs: int, *, progress: Progress = NULL
                ) -> tuple[LockedModel, ...]:
    """Every repository pinned, listed in parallel; small files fetched (and cached) to be hashed."""
    found: dict[ModelSpec, LockedModel] = {}
    stats = FetchStats()
    with progress.bar("pinning models", None) as bar:
        def one(spec: ModelSpec, _stop: threading.Event) -> None:
            found[spec] = fetcher.pin(spec, bar.update, stats)

        run_parallel(specs, one, jobs, fetcher.stop)
    return tuple(found[spec] for spec in specs)


def fetch_models(locked: tuple[LockedModel, ...], fetcher: ModelFetcher, jobs: int, *, progress: Progress = NULL,
                 stats: FetchStats | None = None) -> tuple[list[Member], tuple[ModelEntry, ...]]:
    """Every file the lock pins, each distinct one fetched once; the bundle's members and entries."""
    stats = stats if stats is not None else FetchStats()
    wanted: dict[str, _Want] = {}
    for model in locked:
        for file in model.files:
            stats.wanted += 1
            wanted.setdefault(file.sha256, _Want(spec=model.spec, revision=model.revision, path=file.path,
                                                 size=file.size, sha256=file.sha256))

    def one(sha256: str, stop: threading.Event, on_bytes: Callable[[int], None]) -> int:
        if stop.is_set():
            raise Stopped()
        fetcher.fetch(wanted[sha256], on_bytes, stats)
        return 0   # resumed bytes are counted by the fetch itself

    total = sum(w.size for w in wanted.values() if not fetcher.cache.has(Digest.from_hex(w.sha256)))
    fetch_parallel("fetching models", total, wanted, fetch=one, jobs=jobs, stop=fetcher.stop, progress=progress,
                   stats=stats)
    members = []
    for sha256, want in wanted.items():
        digest = Digest.from_hex(sha256)
        members.append(Member(model_blob_path(sha256), want.size, sha256, file=fetcher.cache.path(digest),
                              verified=digest in fetcher.cache.fresh))
    return members, tuple(model.entry() for model in locked)


# ---- the lock file's models: -----------------------------------------------------------------

_LOCK_KEYS = {"hub", "repo", "repo_type", "revision", "commit", "include", "exclude", "files"}
_FILE_KEYS = {"path", "size", "sha256", "etag"}


def dump_locked(model: LockedModel) -> dict:
    spec = model.spec
    data: dict = {"hub": spec.hub, "repo": spec.repo, "repo_type": spec.repo_type, "revision": spec.revision}
    if model.commit:
        data["commit"] = model.commit
    data.update({name: list(patterns) for name, patterns in (("include", spec.include), ("exclude", spec.exclude))
                 if patterns})
    data["files"] = [{k: v for k, v in f.to_json().items() if v is not None} for f in model.files]
    return data


def read_locked(doc, value, key: str, *, line: int | None) -> LockedModel:  # noqa: ANN001 - a yamlfile.Doc, a YAML value
    """One entry of a lock's ``models:``, every key checked against the same rules as the head's."""

    entry = doc.mapping(value, key, line, allowed=_LOCK_KEYS,
                        required={"hub", "repo", "repo_type", "revision", "files"})
    text = {k: doc.string(entry[k], f"{key}.{k}", entry.lines[k])
            for k in ("hub", "repo", "repo_type", "revision", "commit") if k in entry}
    checks = {"hub": lambda v: None if v in HUBS else f"not one of {', '.join(HUBS)}",
              "repo": repo_id_problem, "revision": revision_problem,
              "repo_type": lambda v: None if v in REPO_TYPES else f"not one of {', '.join(REPO_TYPES)}",
              "commit": lambda v: None if GIT_OID.match(v) else "expected a 40-digit commit id"}
    for name, value in text.items():
        problem = checks[name](value)
        if problem:
            raise doc.fail(entry.lines[name], f"{key}.{name}", f"{value!r}: {problem}")
    if text["hub"] == HUGGINGFACE and "commit" not in text:
        raise doc.fail(entry.line or line, f"{key}.commit", "required key is missing")
    patterns = {name: tuple(p for p, _ in doc.string_list(entry[name], f"{key}.{name}", entry.lines[name]))
                for name in ("include", "exclude") if name in entry}
    spec = ModelSpec(hub=text["hub"], repo=text["repo"], revision=text["revision"], repo_type=text["repo_type"],
                     include=patterns.get("include", ()),
                     exclude=patterns.get("exclude", ()))
    files = entry["files"]
    if not isinstance(files, list) or not files:
        raise doc.fail(entry.lines["files"], f"{key}.files", "expected a list of files")
    pinned = []
    for index, (item, item_line) in enumerate(zip(files, getattr(files, "lines", []))):
        where = f"{key}.files[{index}]"
        file = doc.mapping(item, where, item_line, allowed=_FILE_KEYS, required={"path", "size", "sha256"})
        path, sha256 = (doc.string(file[k], f"{where}.{k}", file.lines[k]) for k in ("path", "sha256"))
        size = file["size"]
        etag = doc.string(file["etag"], f"{where}.etag", file.lines["etag"]) if "etag" in file else None
        found = file_problem(path=path, size=size, sha256=sha256, etag=etag)
        if found:
            raise doc.fail(file.lines.get(found[0], item_line), where, found[1])
        if text["hub"] == HUGGINGFACE and etag is None:
            raise doc.fail(item_line, f"{where}.etag", "required key is missing")
        pinned.append(ModelFile(path, size, sha256, etag=etag))
    clash = tree_problem([f.path for f in pinned])
    if clash:
        raise doc.fail(files.lines[clash[0]], f"{key}.files[{clash[0]}]", clash[1])
    return LockedModel(spec, text.get("commit"), tuple(pinned))


def check_models_fit(locked: tuple[LockedModel, ...], specs: tuple[ModelSpec, ...], path: Path) -> None:
    """A lock's models are the profile's, with the same revisions and patterns."""
    if not locked:
        return
    wanted, pinned = set(specs), {m.spec for m in locked}
    if wanted != pinned:
        differ = sorted(str(s) for s in wanted ^ pinned)
        raise LockError(f"{path}: the lock's models differ from the profile's ({', '.join(differ)}); "
                        "run bundler lock again")
