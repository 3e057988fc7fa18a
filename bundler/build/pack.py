"""Writing a bundle: the members streamed once, in order, through one zstd stream into
``OUT.partial`` (or volumes ``OUT.001.partial``, ...), renamed into place only when complete.

bundle.json gets a zstd frame of its own so that ``inspect`` reads only kilobytes; a layer arrives
as a zstd frame made while it was fetched (layers.LayerFrames) and is copied as it is. The same
members and mtime give the same bytes. Reading is archive.py's.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bundler.errors import DiskError, InputError, IntegrityError
from bundler.files import CHUNK, disk_error
from bundler.format.archive import BLOCK, RECORD, glob_escape, padding, tar_header
from bundler.format.paths import HEAD, SIGNATURE_FRAME, SIGNATURE_SUFFIX, restorer_beside, signature_beside
from bundler.format.trust import signature_payload

MIN_SPLIT = 1 << 20
FAT32_MAX = (4 << 30) - 1
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Member:
    """One file of a bundle: where it goes, what it must hash to, and where its bytes are now."""

    path: str                      # POSIX, relative: images/blobs/sha256/<hex>, wheels/x.whl
    size: int
    sha256: str                    # hex
    file: Path | None = None       # bytes on disk (the cache), or
    data: bytes | None = None      # small generated content (manifests, the lock), or
    frame: Path | None = None      # one zstd frame of them, made while fetching (see layers.LayerFrames)
    frame_sha256: str | None = None
    verified: bool = False         # checked by this process already: packing does not hash it again
    compressed: bool = False       # already compressed (a gzip layer): stored in a fast frame of its own
    alone: bool = False            # ``data`` in a zstd frame of its own, read without the rest (the SBOM)

    def open(self) -> io.BufferedIOBase:
        """The member's own bytes, whichever way they are kept."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.frame is not None:
            return zstandard.ZstdDecompressor().stream_reader(open(self.frame, "rb"), closefd=True)
        return open(self.file, "rb")


def parse_size(text: str) -> int:
    """``4G``, ``700M`` (binary units), plain bytes, or ``fat32`` (4 GiB - 1)."""
    value = text.strip()
    if value.lower() == "fat32":
        return FAT32_MAX
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", value, re.IGNORECASE)
    if not match:
        raise InputError(f"size {text!r}: expected a number of bytes, a number with K, M, G or T, or fat32")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < MIN_SPLIT:
        raise InputError(f"size {text!r}: volumes must hold at least 1M")
    return size


# ---- writing -------------------------------------------------------------------------------

class VolumeWriter:
    """Bytes into ``OUT.partial`` (or ``OUT.001.partial``, ... when split), renamed only on commit."""

    def __init__(self, out: Path, split: int | None) -> None:
        self.out, self.split = out, split
        self.finals: list[Path] = []
        self.hashes: list[str] = []     # of each volume, for OUT.sha256: only a split bundle has one
        self._handle = None
        self._written = 0
        self._hasher = hashlib.sha256() if split is not None else None
        self.total = 0
        self.beside: dict[str, bytes] = {}   # small files written beside OUT on commit: OUT.sig

    def _volume_name(self, number: int) -> Path:
        return self.out if self.split is None else self.out.with_name(f"{self.out.name}.{number:03d}")

    def _open_next(self) -> None:
        self._close_current()
        final = self._volume_name(len(self.finals) + 1)
        self.finals.append(final)
        self._handle = open(final.with_name(final.name + ".partial"), "wb")  # noqa: SIM115
        self._written = 0
        self._hasher = hashlib.sha256() if self.split is not None else None

    def _close_current(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            if self._hasher is not None:
                self.hashes.append(self._hasher.hexdigest())

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while view:
                if self._handle is None or (self.split is not None and self._written >= self.split):
                    self._open_next()
                room = len(view) if self.split is None else self.split - self._written
                piece = view[:room]
                self._handle.write(piece)
                if self._hasher is not None:
                    self._hasher.update(piece)
                self._written += len(piece)
                self.total += len(piece)
                view = view[room:]
        except OSError as exc:
            raise disk_error(exc, f"writing {self.out}") from None
        return len(data)

    def copy_file(self, path: Path) -> bool:
        """Append a whole file in the kernel (no copy through Python), when nothing needs to see its
        bytes on the way: an unsplit bundle. Returns False when the caller must copy it itself."""
        if self.split is not None or self._handle is None or not hasattr(os, "copy_file_range"):
            return False
        self._handle.flush()
        done = 0
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                while done < size:
                    sent = os.copy_file_range(source.fileno(), self._handle.fileno(), size - done)
                    if sent == 0:
                        break
                    done += sent
        except OSError as exc:
            if done == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise disk_error(exc, f"writing {self.out}") from None
        if done != size:
            raise DiskError(f"{path}: could not copy it whole into {self.out}")
        self._written += done
        self.total += done
        return True

    def commit(self) -> list[Path]:
        """Close, then rename every partial into place; the checksums file comes last, when split."""
        if self._handle is None and not self.finals:
            self._open_next()
        self._close_current()
        try:
            for final in self.finals:
                os.replace(final.with_name(final.name + ".partial"), final)
            for suffix, data in self.beside.items():
                path = self.out.with_name(self.out.name + suffix)
                path.with_name(path.name + ".partial").write_bytes(data)
                os.replace(path.with_name(path.name + ".partial"), path)
            if self.split is not None:
                listing = "".join(f"{h}  {p.name}\n" for h, p in zip(self.hashes, self.finals))
                checksums = self.out.with_name(self.out.name + ".sha256")
                tmp = checksums.with_name(checksums.name + ".partial")
                tmp.write_text(listing)
                os.replace(tmp, checksums)
        except OSError as exc:
            raise disk_error(exc, f"finishing {self.out}") from None
        return list(self.finals)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for final in self.finals:
            final.with_name(final.name + ".partial").unlink(missing_ok=True)
        for suffix in (".sha256", *self.beside):
            self.out.with_name(self.out.name + suffix + ".partial").unlink(missing_ok=True)


def existing_outputs(out: Path) -> list[Path]:
    """What a bundle at ``out`` (split or not) already occupies."""
    found = [out] if out.exists() else []
    found += sorted(p for p in out.parent.glob(f"{glob_escape(out.name)}.[0-9][0-9][0-9]") if p.is_file())
    beside = [out.with_name(out.name + suffix) for suffix in (".sha256", SIGNATURE_SUFFIX)]
    beside += [out.with_name(restorer_beside(out.name)), out.with_name(signature_beside(restorer_beside(out.name)))]
    return found + [path for path in beside if path.exists()]


DEFAULT_LEVEL = 3        # scripts/bench.py: within 0.95x of docker save | zstd -3, at the speed of the fetch
MAX_WORKERS = 4          # each zstd worker holds its own job buffers: bounded memory on large machines


SMALL_WINDOW_LOG = 23    # for what packing compresses itself: headers, JSON, wheels (zip files)
SMALL_JOB_SIZE = 4 << 20  # zstd's default (4 windows) would hold 240 MiB of buffers for nothing


def stream_compressor(level: int) -> zstandard.ZstdCompressor:
    """The compressor packing uses between frames. Every layer arrives as a frame made while it was
    fetched (see layers.LayerFrames), so what is left is small or already compressed (wheels): a
    large window would only cost memory."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=SMALL_WINDOW_LOG, write_checksum=1, threads=min(MAX_WORKERS, os.cpu_count() or 1),
        job_size=SMALL_JOB_SIZE)
    return zstandard.ZstdCompressor(compression_params=params)


def skippable_frame(magic: int, content: bytes) -> bytes:
    """A zstd skippable frame: every decoder passes over it (RFC 8878, 3.1.2)."""
    return struct.pack("<II", magic, len(content)) + content


# zstd at level 1 finds nothing to gain in gzip data and stores it in raw blocks at memory speed; a
# frame of its own keeps the stream's compressor from spending its window on it.
_STORE = zstandard.ZstdCompressor(level=1, write_checksum=True)


def write_bundle(out: Path, head: bytes, members: list[Member], mtime: int, level: int, split: int | None,
                 on_bytes: Callable[[int], None] = lambda _n: None, signature: bytes | None = None) -> list[Path]:
    """Stream ``head`` (as bundle.json, in a frame of its own), its ``signature`` (armored SSHSIG,
    with the head it signs in a skippable frame right after it, and alone in ``OUT.sig``), and
    ``members`` into the bundle; the leading members marked ``alone`` get a frame each.

    A member from an earlier run's cache is re-hashed on its way in: a cache file damaged on disk
    stops the build instead of reaching a user's USB stick. One checked by this run already is
    not hashed twice. Returns the paths written (one, or the volumes).
    """
    volumes = VolumeWriter(out, split)
    try:
        first = tar_header(HEAD, len(head), mtime) + head + padding(len(head))
        alone = zstandard.ZstdCompressor(level=min(level, 19), write_checksum=True)
        volumes.write(alone.compress(first))
        if signature is not None:
            volumes.write(skippable_frame(SIGNATURE_FRAME, signature_payload(signature, head)))
            volumes.beside[SIGNATURE_SUFFIX] = signature
        tar_size = len(first)
        while members and members[0].alone:
            member, members = members[0], members[1:]
            framed = tar_header(member.path, member.size, mtime) + member.data + padding(member.size)
            volumes.write(alone.compress(framed))
            on_bytes(member.size)
            tar_size += len(framed)
        with stream_compressor(level).stream_writer(volumes, closefd=False, write_size=CHUNK) as stream:
            for member in members:
                header = tar_header(member.path, member.size, mtime)
                stream.write(header)
                if member.frame is not None:
                    stream.flush(zstandard.FLUSH_FRAME)   # the header's frame ends; the member's follows
                    _copy_frame(member, volumes)
                    on_bytes(member.size)
                elif member.compressed:
                    stream.flush(zstandard.FLUSH_FRAME)
                    with _STORE.stream_writer(volumes, closefd=False, write_size=CHUNK) as stored:
                        _compress_member(member, stored, on_bytes)
                else:
                    _compress_member(member, stream, on_bytes)
                stream.write(padding(member.size))
                tar_size += len(header) + member.size + len(padding(member.size))
            # two zero blocks end the archive; tar pads to a whole record, as tarfile does
            end = 2 * BLOCK
            stream.write(b"\0" * (end + (-(tar_size + end) % RECORD)))
        return volumes.commit()
    except BaseException:
        volumes.abort()
        raise


def _changed(member: Member, source: Path | None, found: str) -> IntegrityError:
    return IntegrityError(f"{member.path}: its source {source} changed on disk ({found}); remove it from the "
                          "cache and build again")


def _compress_member(member: Member, stream: zstandard.ZstdCompressionWriter, on_bytes: Callable[[int], None]) -> None:
    hasher = None if member.verified else hashlib.sha256()
    size = 0
    with member.open() as source:
        while chunk := source.read(CHUNK):
            if hasher is not None:
                hasher.update(chunk)
            stream.write(chunk)
            size += len(chunk)
            on_bytes(len(chunk))
    digest = hasher.hexdigest() if hasher is not None else member.sha256
    if size != member.size or digest != member.sha256:
        raise _changed(member, member.file, f"{size} bytes, sha256 {digest[:12]}.., expected {member.size} bytes, "
                                            f"{member.sha256[:12]}..")


def _copy_frame(member: Member, out: VolumeWriter) -> None:
    """A cached frame as it is; one from an earlier run is checked against the sha256 noted with it."""
    if member.verified and out.copy_file(member.frame):
        return
    hasher = None if member.verified else hashlib.sha256()
    with open(member.frame, "rb") as source:
        while chunk := source.read(CHUNK):
            if hasher is not None:
                hasher.update(chunk)
            out.write(chunk)
    if hasher is not None and hasher.hexdigest() != member.frame_sha256:
        raise _changed(member, member.frame, f"frame sha256 {hasher.hexdigest()[:12]}.., expected "
                                             f"{(member.frame_sha256 or '?')[:12]}..")


