"""The content-addressed cache shared by every build: ``blobs/sha256/<hex>``, verified on the way in.

A blob reaches ``blobs/`` only by an atomic rename after its digest was checked, so whatever is
there is whole and correct. Downloads in progress live in ``partial/``, where an interrupted one
is resumed; a per-key file lock lets two builds share the cache without fetching a blob twice.

Temp files (a layer being framed, a wheel being built) live in a folder of each process's own,
``tmp/<session>``, guarded by a lock the process holds for its lifetime (``locks/session-<session>``).
The kernel drops that lock when the process dies, however it dies, so the next process to open
the cache removes the folders whose lock it can take: a killed build leaks nothing for good. Every
process also holds ``locks/cache`` shared; ``bundler cache prune`` takes it exclusively.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from bundler.digest import Digest
from bundler.errors import DiskError
from bundler.files import disk_error

SESSION_LOCK = "session-"      # locks/session-<name>: held by the process whose temp folder is tmp/<name>
USERS_LOCK = "cache"           # locks/cache: held shared by every process using the cache
LOOSE_AGE = 3600               # seconds: a loose file in tmp/ (a release before sessions) untouched this long is
                               # abandoned


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("bundler"))


@dataclass(frozen=True)
class Reclaimed:
    """Temp files of processes that died without removing them."""

    entries: int = 0
    bytes: int = 0


class Cache:
    def __init__(self, root: Path | None = None, exclusive: bool = False) -> None:
        """Open (and create) the cache; reclaim what dead processes left in ``tmp/``.

        ``exclusive``: no other process may use the cache meanwhile (``cache prune``); DiskError
        naming the cache when one does.
        """
        self.root = Path(root) if root is not None else default_cache_dir()
        self.fresh: set[str] = set()   # digests verified and stored by this process
        self._used: set[Path] = set()  # files this run dated (used)
        try:
            for sub in ("blobs/sha256", "partial", "locks", "meta", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, f"creating the cache in {self.root}") from None
        self._held = _held(self.root)
        self._held.use(exclusive)
        self.reclaimed = reclaim(self.root)

    @property
    def tmp(self) -> Path:
        """This process's temp folder in the cache (same filesystem as the blobs, so commit is a rename),
        made on first use and removed when the process ends; a later process removes it if this one dies."""
        return self._held.session()

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / Digest(digest).hex

    def used(self, path: Path) -> Path:
        """``path``, a file of the cache this run uses, dated now (once per run): ``cache prune
        --older-than`` removes only what no build used for that long. Every lookup that finds a file
        (``has``, ``read_bytes``, ``frame``) dates it, so whatever a build takes from the cache instead
        of downloading it (a layer, a wheel, a model file, a patch, the restorer, a manifest) stays."""
        if path not in self._used:
            with contextlib.suppress(OSError):
                os.utime(path)
            self._used.add(path)
        return path

    def has(self, digest: str) -> bool:
        path = self.path(digest)
        if not path.is_file():
            return False
        self.used(path)
        return True

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def partial(self, key: str) -> Path:
        return self.root / "partial" / key.replace(":", "-")

    @contextlib.contextmanager
    def writer(self, digest: str) -> Iterator[tuple[object, hashlib._Hash]]:
        """A temp file and a running sha256; on clean exit the file becomes the blob if the digest matches.

        The caller must check the digest itself (it knows which endpoint to blame); this only
        refuses to store bytes under a name they do not hash to.
        """
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=Digest(digest).hex[:16] + ".")
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                yield out, hasher
            if f"sha256:{hasher.hexdigest()}" != digest:
                raise AssertionError(f"cache writer for {digest} got sha256:{hasher.hexdigest()}")
            os.replace(tmp, self.path(digest))
            self.fresh.add(digest)
        except OSError as exc:
            raise disk_error(exc, f"writing {digest} to the cache in {self.root}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def temp(self, hint: str = "") -> Path:
        """A fresh temp file inside the cache (same filesystem as the blobs, so commit is a rename)."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=(hint.replace(":", "-")[:23] or "blob") + ".")
        os.close(fd)
        return Path(tmp)

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a verified temp file into place as ``digest``."""
        target = self.path(digest)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise disk_error(exc, f"storing {digest} in the cache {self.root}") from None
        self.fresh.add(digest)
        return target

    def put_bytes(self, data: bytes) -> str:
        digest = Digest.of(data)
        if not self.has(digest):
            with self.writer(digest) as (out, hasher):
                hasher.update(data)
                out.write(data)
        return digest

    def read_bytes(self, digest: str, limit: int = 64 << 20) -> bytes:
        """A small blob (manifest, config), re-checked against its digest."""
        path = self.path(digest)
        if path.stat().st_size > limit:
            raise DiskError(f"{digest} in the cache is larger than {limit} bytes")
        data = self.used(path).read_bytes()
        if Digest.of(data) != digest:
            path.unlink()
            raise DiskError(f"{digest} in the cache {self.root} was corrupted on disk; it was removed, run again")
        return data

    # -- zstd frames of large blobs, made while fetching (see archive.Frames) --
    def frame_path(self, key: str, digest: str) -> Path:
        return self.root / "frames" / key / Digest(digest).hex

    def frame(self, key: str, digest: str) -> dict | None:
        """``{"size": raw size, "frame_sha256": ...}`` when a whole frame of ``digest`` made with ``key``
        is cached (it is then dated as used)."""
        meta = self._whole_frame(key, digest)
        if meta is not None:
            self.used(self.frame_path(key, digest))
        return meta

    def _whole_frame(self, key: str, digest: str) -> dict | None:
        meta = self.meta(f"frame-{key}", digest)
        path = self.frame_path(key, digest)
        if meta is None or not path.is_file() or path.stat().st_size != meta.get("frame_size"):
            return None
        return meta

    def frame_keys(self, digest: str) -> list[str]:
        """The parameter keys of every whole frame of ``digest`` in the cache (none dated: ``frame`` dates
        the one the caller takes)."""
        folder = self.root / "frames"
        if not folder.is_dir():
            return []
        return sorted(path.name for path in folder.iterdir() if self._whole_frame(path.name, digest) is not None)

    # -- chunk indexes of layers (build/chunking.py), made while fetching, read by deltas --
    def chunks_path(self, key: str, diff_id: str) -> Path:
        """The chunk index of the layer ``diff_id`` made with parameters ``key`` (it may be absent or damaged:
        chunking.check_index says)."""
        return self.root / "chunks" / key / Digest(diff_id).hex

    def commit_chunks(self, tmp: Path, key: str, diff_id: str) -> None:
        """Move a chunk index, made from bytes that matched ``diff_id``, into place."""
        target = self.chunks_path(key, diff_id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except OSError as exc:
            raise disk_error(exc, f"storing the chunk index of {diff_id} in the cache {self.root}") from None
        self.used(target)

    def commit_frame(self, tmp: Path, key: str, digest: str, *, size: int, frame_sha256: str) -> None:
        target = self.frame_path(key, digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            frame_size = tmp.stat().st_size
            os.replace(tmp, target)
            self.set_meta(f"frame-{key}", digest, {"size": size, "frame_size": frame_size,
                                                   "frame_sha256": frame_sha256})
        except OSError as exc:
            raise disk_error(exc, f"storing a frame of {digest} in the cache {self.root}") from None
        self.fresh.add(f"{key}/{digest}")

    # -- small facts about blobs (a compressed layer's diff_id and size) --
    def meta(self, kind: str, key: str) -> dict | None:
        path = self.root / "meta" / kind / key.replace(":", "-")
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def set_meta(self, kind: str, key: str, value: dict) -> None:
        folder = self.root / "meta" / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump(value, out)
            os.replace(tmp, folder / key.replace(":", "-"))
        except OSError as exc:
            raise disk_error(exc, f"writing to the cache {self.root}") from None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive across processes: two builds sharing the cache fetch a blob once."""
        path = self.root / "locks" / key.replace(":", "-")
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ---- what a process holds in a cache for its lifetime ----------------------------------------------

class _Held:
    """The cache's users lock (shared; exclusive while pruning) and this process's temp folder with the
    lock that guards it. One per cache per process, kept until the process ends, whichever Cache
    object made it: a temp path stays valid however short-lived the object that gave it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self._users = open(root / "locks" / USERS_LOCK, "a")  # noqa: SIM115 - held for the process's life
        except OSError as exc:
            raise disk_error(exc, f"opening the cache in {root}") from None
        self._session: Path | None = None
        self._session_lock = None
        self._lock = threading.Lock()

    def use(self, exclusive: bool) -> None:
        try:    # on the same file, a new flock converts the old one: shared again after a prune
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            raise DiskError(f"the cache {self.root} is in use by another bundler process; try again when it has "
                            "finished") from None

    def stale(self) -> bool:
        """The cache was removed (and perhaps made again) under this process."""
        try:
            return os.fstat(self._users.fileno()).st_ino != (self.root / "locks" / USERS_LOCK).stat().st_ino
        except OSError:
            return True

    def session(self) -> Path:
        with self._lock:
            if self._session is not None and not self._session.is_dir():   # removed by hand: start another
                self._session_lock.close()
                self._session = None
            if self._session is None:
                name = f"{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    # The lock first, then the folder: a process that finds the folder finds it locked.
                    held = open(self.root / "locks" / f"{SESSION_LOCK}{name}", "a")  # noqa: SIM115 - for life
                    fcntl.flock(held, fcntl.LOCK_EX)
                    folder = self.root / "tmp" / name
                    folder.mkdir()
                except OSError as exc:
                    raise disk_error(exc, f"creating a temp folder in the cache {self.root}") from None
                self._session, self._session_lock = folder, held
            return self._session

    def end(self) -> None:
        if self._session is not None:
            shutil.rmtree(self._session, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.root / "locks" / f"{SESSION_LOCK}{self._session.name}").unlink()
            self._session_lock.close()
            self._session = None
        self._users.close()


_HELD: dict[Path, _Held] = {}
_HELD_LOCK = threading.Lock()


def _held(root: Path) -> _Held:
    key = root.resolve()
    with _HELD_LOCK:
        if key not in _HELD or _HELD[key].stale():
            _HELD[key] = _Held(root)
        return _HELD[key]


@atexit.register
def _end_all() -> None:
    for held in _HELD.values():
        held.end()


# ---- temp files of dead processes ---------------------------------------------------------------


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (what ``du`` would count, less the blocks)."""
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def abandoned(root: Path) -> Iterator[tuple[Path, object | None]]:
    """What in ``root/tmp`` no live process holds, each with the session lock this process now holds
    on it (or None for a loose file); a live process's folder is never yielded."""
    locks = root / "locks"
    for entry in sorted((root / "tmp").iterdir()):
        try:
            held = open(locks / f"{SESSION_LOCK}{entry.name}", "r+")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            # Not a session's: a release before sessions left it, or a session just ended. Abandoned
            # once nobody has written to it for a while.
            with contextlib.suppress(OSError):
                if time.time() - entry.lstat().st_mtime > LOOSE_AGE:
                    yield entry, None
            continue
        except OSError:
            continue
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:    # its process is alive
            held.close()
            continue
        yield entry, held


def reclaim(root: Path) -> Reclaimed:
    """Remove the temp files of processes that died (killed builds): they hold no lock any more."""
    entries = size = 0
    for entry, held in abandoned(root):
        entries, size = entries + 1, size + tree_size(entry)
        _remove(entry)
        if held is not None:
            with contextlib.suppress(OSError):
                (root / "locks" / f"{SESSION_LOCK}{entry.name}").unlink()
            held.close()
    return Reclaimed(entries, size)
