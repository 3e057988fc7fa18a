"""The content-addressed cache shared by every build: ``blobs/sha256/<hex>``, verified on the way in.

A blob reaches ``blobs/`` only by an atomic rename after its digest was checked, so whatever is
there is whole and correct. Downloads in progress live in ``partial/``, where an interrupted one
is resumed; a per-key file lock lets two builds share the cache without fetching a blob twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from bundler.errors import DiskError
from bundler.files import disk_error
from bundler.format import Digest


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("bundler"))


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.fresh: set[str] = set()   # digests verified and stored by this process
        try:
            for sub in ("blobs/sha256", "partial", "locks", "meta", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, f"creating the cache in {self.root}") from None

    # -- blobs --
    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / Digest(digest).hex

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

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
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=Digest(digest).hex[:16] + ".")
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
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=(hint.replace(":", "-")[:23] or "blob") + ".")
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
        data = path.read_bytes()
        if Digest.of(data) != digest:
            path.unlink()
            raise DiskError(f"{digest} in the cache {self.root} was corrupted on disk; it was removed, run again")
        return data

    # -- zstd frames of large blobs, made while fetching (see archive.Frames) --
    def frame_path(self, key: str, digest: str) -> Path:
        return self.root / "frames" / key / Digest(digest).hex

    def frame(self, key: str, digest: str) -> dict | None:
        """``{"size": raw size, "frame_sha256": ...}`` when a whole frame of ``digest`` made with ``key``
        is cached."""
        meta = self.meta(f"frame-{key}", digest)
        path = self.frame_path(key, digest)
        if meta is None or not path.is_file() or path.stat().st_size != meta.get("frame_size"):
            return None
        return meta

    def frame_keys(self, digest: str) -> list[str]:
        """The parameter keys of every whole frame of ``digest`` in the cache."""
        folder = self.root / "frames"
        if not folder.is_dir():
            return []
        return sorted(path.name for path in folder.iterdir() if self.frame(path.name, digest) is not None)

    def commit_frame(self, tmp: Path, key: str, digest: str, size: int, frame_sha256: str) -> None:
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
