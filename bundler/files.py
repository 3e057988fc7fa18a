"""Plain file work both sides share: the read size, hashing a file, disk errors a user can act on."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from bundler.errors import DiskError, IntegrityError

CHUNK = 1 << 20      # every stream here moves in pieces of this size: bounded memory however large the file


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


class FileHashes:
    """The sha256 of files on disk, each distinct file hashed once: a file is known by its device and
    inode (as long as its size and mtime stay), so the hard links a restore makes to one file are
    hashed once however many places they fill."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: Path) -> str | None:
        """The sha256 (hex) of the regular file at ``path`` (a symlink followed); None when there is none
        or it cannot be read."""
        try:
            found = path.stat()
            if not stat.S_ISREG(found.st_mode):
                return None
            key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
            if key not in self._known:
                self._known[key] = sha256_file(path)
        except OSError:
            return None
        return self._known[key]


def disk_error(exc: OSError, what: str) -> DiskError:
    if exc.errno == errno.ENOSPC:
        return DiskError(f"{what}: no space left on device")
    return DiskError(f"{what}: {exc.strerror or exc}")


def free_space(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError as exc:
        raise DiskError(f"{folder}: cannot read free space: {exc.strerror}") from None


def human_size(size: float) -> str:
    """Binary units, as every size bundler prints: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@contextlib.contextmanager
def removed_on_failure(path: Path, what: str) -> Iterator[Path]:
    """``path`` (a temp file being written) is removed if the block fails; an OSError in it becomes a
    DiskError that names ``what``."""
    try:
        yield path
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise disk_error(exc, what) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes in pieces of CHUNK."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def copy_checked(chunks: Iterator[bytes], path: Path, digest: str, *, what: str) -> None:
    """``chunks`` into ``path``, which is removed unless they hash to ``digest`` (a site's copy of a
    blob, named by ``what`` in the error)."""
    hasher = hashlib.sha256()
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise disk_error(exc, f"writing {path}") from None
    if "sha256:" + hasher.hexdigest() != digest:
        path.unlink(missing_ok=True)
        raise IntegrityError(f"{what}: the site's copy of {digest[:19]}.. hashes to sha256:{hasher.hexdigest()[:12]}..")
