"""The bundle file: a pax tar compressed with zstd, optionally cut into volumes.

Writing streams the members once, in order, through one multi-threaded zstd stream; the first
member (bundle.json) gets a zstd frame of its own so that ``inspect`` reads only kilobytes.
Reading streams too, and hands out each member through a reader that checks its size and sha256
against bundle.json; nothing but plain files with safe relative names is accepted.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bundler.cache import CHUNK, disk_error
from bundler.errors import DiskError, InputError, IntegrityError

HEAD = "bundle.json"
BLOCK = 512
RECORD = 20 * BLOCK
MAX_HEAD = 64 << 20               # bundle.json larger than this is not ours
MIN_SPLIT = 1 << 20
WINDOW_LOG = 26                   # 64 MiB, with long-distance matching: 2% larger than 128 MiB for half the
                                  # memory of every compressor and decompressor; any zstd -d reads it
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
    frame: Path | None = None      # one zstd frame of them, made while fetching (see Frames)
    frame_sha256: str | None = None
    verified: bool = False         # checked by this process already: packing does not hash it again

    def open(self) -> io.BufferedIOBase:
        """The member's own bytes, whichever way they are kept."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.frame is not None:
            return zstandard.ZstdDecompressor().stream_reader(open(self.frame, "rb"), closefd=True)  # noqa: SIM115
        return open(self.file, "rb")  # noqa: SIM115


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


def check_member_path(path: str) -> None:
    """Refuse absolute paths, ``..``, empty components, backslashes and control characters."""
    if (not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path)
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise IntegrityError(f"member {path!r}: unsafe path in the bundle")


def _tar_header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


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
        self.out.with_name(self.out.name + ".sha256.partial").unlink(missing_ok=True)


def existing_outputs(out: Path) -> list[Path]:
    """What a bundle at ``out`` (split or not) already occupies."""
    found = [out] if out.exists() else []
    found += sorted(p for p in out.parent.glob(f"{glob_escape(out.name)}.[0-9][0-9][0-9]") if p.is_file())
    checksums = out.with_name(out.name + ".sha256")
    return found + ([checksums] if checksums.exists() else [])


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


JOB_SIZE = 8 << 20       # per worker: zstd's default job (4 windows, 512 MiB here) would cost GBs of memory
OVERLAP_LOG = 7          # each job sees the last half window of the one before: 0.7% larger output at most
DEFAULT_LEVEL = 3        # scripts/bench.py: within 0.95x of docker save | zstd -3, at the speed of the fetch
MAX_WORKERS = 4          # each zstd worker holds its own job buffers: bounded memory on large machines


def compressor(level: int, workers: int | None = None) -> zstandard.ZstdCompressor:
    """zstd with ``workers`` threads (default: one per core, at most MAX_WORKERS). With at least one
    worker the output does not depend on how many there are, so bundles are byte-identical across
    machines and across the two places that compress (while fetching, and while packing)."""
    cores = os.cpu_count() or 1
    workers = workers if workers is not None else min(MAX_WORKERS, cores)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=WINDOW_LOG, enable_ldm=1, write_checksum=1, threads=max(1, workers),
        job_size=JOB_SIZE, overlap_log=OVERLAP_LOG)
    return zstandard.ZstdCompressor(compression_params=params)


SMALL_WINDOW_LOG = 23    # for what packing compresses itself: headers, JSON, wheels (zip files)
SMALL_JOB_SIZE = 4 << 20  # zstd's default (4 windows) would hold 240 MiB of buffers for nothing


def stream_compressor(level: int) -> zstandard.ZstdCompressor:
    """The compressor packing uses between frames. Every layer arrives as a frame made while it was
    fetched, so what is left is small or already compressed (wheels): a large window would only
    cost memory."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=SMALL_WINDOW_LOG, write_checksum=1, threads=min(MAX_WORKERS, os.cpu_count() or 1),
        job_size=SMALL_JOB_SIZE)
    return zstandard.ZstdCompressor(compression_params=params)


def frame_key(level: int) -> str:
    """Names the parameters a cached frame was made with: frames made otherwise are not reused."""
    return f"zstd{zstandard.ZSTD_VERSION[0]}-l{level}-w{WINDOW_LOG}-ldm-j{JOB_SIZE >> 20}-o{OVERLAP_LOG}"


class Frames:
    """Large members compressed while they are fetched, one at a time with every core.

    A layer gunzipped as it downloads can be compressed in the same pass, so that packing only
    copies its frame: the bundle's zstd runs while the network and gunzip do, and a rebuild from a
    warm cache copies instead of compressing again. One compressor at a time keeps memory bounded
    (a 64 MiB window each); a layer that finds it busy is kept whole, and compressed when it is free.
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self.key = frame_key(level)
        self.slot = threading.Semaphore(1)

    def compressobj(self) -> zstandard.ZstdCompressionObj:
        return compressor(self.level).compressobj()


def write_bundle(out: Path, head: bytes, members: list[Member], mtime: int, level: int, split: int | None,
                 on_bytes: Callable[[int], None] = lambda n: None) -> list[Path]:
    """Stream ``head`` (as bundle.json, in a frame of its own) and ``members`` into the bundle.

    A member from an earlier run's cache is re-hashed on its way in: a cache file damaged on disk
    stops the build instead of reaching a user's USB stick. One checked by this run already is
    not hashed twice. Returns the paths written (one, or the volumes).
    """
    volumes = VolumeWriter(out, split)
    try:
        first = _tar_header(HEAD, len(head), mtime) + head + _padding(len(head))
        volumes.write(zstandard.ZstdCompressor(level=min(level, 19), write_checksum=True).compress(first))
        tar_size = len(first)
        with stream_compressor(level).stream_writer(volumes, closefd=False, write_size=CHUNK) as stream:
            for member in members:
                header = _tar_header(member.path, member.size, mtime)
                stream.write(header)
                if member.frame is not None:
                    stream.flush(zstandard.FLUSH_FRAME)   # the header's frame ends; the member's follows
                    _copy_frame(member, volumes)
                    on_bytes(member.size)
                else:
                    _compress_member(member, stream, on_bytes)
                stream.write(_padding(member.size))
                tar_size += len(header) + member.size + len(_padding(member.size))
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


# ---- reading -------------------------------------------------------------------------------

@dataclass
class Volumes:
    """The files of one bundle, in order, with their checksums when it was split."""

    paths: list[Path]
    checksums: dict[str, str] | None = None


def locate(path: Path) -> Volumes:
    """``x.tar.zst``, or a split bundle named by its base or by any of its volumes."""
    if not path.name:
        raise InputError(f"{str(path)!r}: not a bundle file name")
    base = path
    if re.fullmatch(r".*\.\d{3}", path.name) and not path.with_name(path.name + ".001").exists():
        base = path.with_name(path.name[:-4])
    checksums_file = base.with_name(base.name + ".sha256")
    if base.is_file() and not checksums_file.exists():
        return Volumes([base])
    present = sorted(p for p in base.parent.glob(f"{glob_escape(base.name)}.[0-9][0-9][0-9]") if p.is_file())
    if not present and not checksums_file.exists():
        raise InputError(f"{path}: no such bundle")
    if checksums_file.exists():
        checksums: dict[str, str] = {}
        for number, line in enumerate(checksums_file.read_text().splitlines(), 1):
            match = re.fullmatch(r"([0-9a-f]{64}) [ *]([^/]+)", line.strip())
            if not match:
                raise IntegrityError(f"{checksums_file}:{number}: not a sha256sum line")
            checksums[match.group(2)] = match.group(1)
        listed = [base.with_name(name) for name in checksums]
        for volume in listed:
            if not volume.is_file():
                raise IntegrityError(f"{volume}: volume {volume.suffix[1:]} of {len(listed)} is missing")
        extra = [p for p in present if p.name not in checksums]
        if extra:
            raise IntegrityError(f"{extra[0]}: extra volume, not listed in {checksums_file.name}")
        _check_volume_sizes(listed)
        return Volumes(listed, checksums)
    for number, volume in enumerate(present, 1):
        expected = base.with_name(f"{base.name}.{number:03d}")
        if volume != expected:
            raise IntegrityError(f"{expected}: volume {number:03d} is missing")
    _check_volume_sizes(present)
    return Volumes(present)


def _check_volume_sizes(volumes: list[Path]) -> None:
    """Every volume but the last is full; none is larger than a full one."""
    sizes = [v.stat().st_size for v in volumes]
    if len(volumes) > 1:
        full = max(sizes[:-1])
        for volume, size in zip(volumes[:-1], sizes[:-1]):
            if size < sizes[-1]:
                raise IntegrityError(f"{volume}: volume is {size} bytes, smaller than the last one: truncated or "
                                     "from another bundle")
            if size != full:
                raise IntegrityError(f"{volume}: volume is {size} bytes, not {full}: truncated or from another bundle")
    if sizes[-1] == 0:
        raise IntegrityError(f"{volumes[-1]}: volume is empty")


class VolumeReader(io.RawIOBase):
    """The volumes read back to back as one stream; each volume's sha256 is checked at its end."""

    def __init__(self, volumes: Volumes, split: int | None = None) -> None:
        self.volumes, self.split = volumes, split
        self.bytes_read = 0
        self._index, self._handle, self._hasher, self._in_volume = -1, None, None, 0
        self._next()

    def _next(self) -> bool:
        if self._handle is not None:
            self._handle.close()
            self._finish_volume()
        self._index += 1
        if self._index >= len(self.volumes.paths):
            self._handle = None
            return False
        path = self.volumes.paths[self._index]
        if self.split is not None and self._index < len(self.volumes.paths) - 1 and path.stat().st_size != self.split:
            raise IntegrityError(f"{path}: volume is {path.stat().st_size} bytes, not {self.split}: truncated or "
                                 "from another bundle")
        self._handle = open(path, "rb")  # noqa: SIM115
        self._hasher, self._in_volume = hashlib.sha256(), 0
        return True

    def _finish_volume(self) -> None:
        if self.volumes.checksums is None:
            return
        path = self.volumes.paths[self._index]
        if self._hasher.hexdigest() != self.volumes.checksums[path.name]:
            raise IntegrityError(f"{path}: volume does not match its checksum (damaged, truncated, or out of order)")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        while self._handle is not None:
            n = self._handle.readinto(buffer)
            if n:
                self._hasher.update(memoryview(buffer)[:n])
                self.bytes_read += n
                return n
            self._next()
        return 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        super().close()


def read_head(path: Path) -> tuple[dict, int]:
    """bundle.json from the first frame only; returns it and the number of file bytes read."""
    import json
    volumes = locate(path)
    reader = VolumeReader(Volumes(volumes.paths))  # no checksums: the rest is never read
    try:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        data = bytearray()
        while not decoder.eof:
            chunk = reader.read(64 << 10)
            if not chunk:
                _blame_first_volume(volumes)
                raise IntegrityError(f"{path}: the file ends inside its first frame (truncated, or not a bundle)")
            data += decoder.decompress(chunk)
            if len(data) > MAX_HEAD + RECORD:
                raise IntegrityError(f"{path}: the head is larger than {MAX_HEAD} bytes; not a bundle")
    except zstandard.ZstdError as exc:
        _blame_first_volume(volumes)
        raise IntegrityError(f"{path}: not a zstd-compressed bundle ({exc})") from None
    finally:
        reader.close()
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != HEAD or not first.isfile():
                raise IntegrityError(f"{path}: the first member is not {HEAD}; not a bundle")
            head = json.loads(tar.extractfile(first).read())
    except (tarfile.TarError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable {HEAD} ({exc})") from None
    if not isinstance(head, dict):
        raise IntegrityError(f"{path}: {HEAD} is not a JSON object")
    return head, reader.bytes_read


def _blame_first_volume(volumes: Volumes) -> None:
    """When the head cannot be read, name the first volume if its checksum says it is damaged."""
    if volumes.checksums is None:
        return
    first = volumes.paths[0]
    hasher = hashlib.sha256()
    with open(first, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    if hasher.hexdigest() != volumes.checksums.get(first.name):
        raise IntegrityError(f"{first}: volume does not match its checksum (damaged, truncated, or out of order)")


class MemberReader(io.RawIOBase):
    """One member's bytes, hashed as they are read; ``finish()`` reads the rest and checks it."""

    def __init__(self, source: io.BufferedIOBase, name: str, size: int, sha256: str) -> None:
        self._source, self.name, self.size, self.sha256 = source, name, size, sha256
        self._hasher, self._read = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        try:
            n = self._source.readinto(buffer)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"member {self.name}: damaged compressed data ({exc})") from None
        except (tarfile.TarError, EOFError) as exc:
            raise IntegrityError(f"member {self.name}: the bundle ends early or is damaged ({exc})") from None
        if n:
            self._hasher.update(memoryview(buffer)[:n])
            self._read += n
        return n

    def finish(self) -> None:
        while self.read(CHUNK):
            pass
        if self._read != self.size:
            raise IntegrityError(f"member {self.name}: {self._read} bytes, bundle.json says {self.size}")
        if self._hasher.hexdigest() != self.sha256:
            raise IntegrityError(f"member {self.name}: sha256 {self._hasher.hexdigest()[:16]}.. does not match "
                                 f"bundle.json ({self.sha256[:16]}..)")


def iter_members(path: Path, head: dict) -> Iterator[MemberReader]:
    """Every member after bundle.json, as a checked reader; the caller reads it, then calls finish().

    Refuses anything that is not a plain file listed in bundle.json with the same size, a member
    listed twice, and, at the end, a listed member that never came; checks every volume's
    checksum, and that nothing follows the archive.
    """
    expected = {}
    for entry in head.get("members") or []:
        check_member_path(entry["path"])
        expected[entry["path"]] = (int(entry["size"]), entry["sha256"])
    split = head.get("split")
    volumes = locate(path)
    raw = VolumeReader(volumes, split if isinstance(split, int) else None)
    seen: set[str] = set()
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
            first = True
            for info in tar:
                if first:
                    first = False
                    if info.name != HEAD:
                        raise IntegrityError(f"{path}: the first member is {info.name!r}, not {HEAD}")
                    continue
                name = info.name
                check_member_path(name)
                if not info.isreg():
                    kind = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE:
                            "a directory", tarfile.CHRTYPE: "a device", tarfile.BLKTYPE: "a device",
                            tarfile.FIFOTYPE: "a fifo"}.get(info.type, "not a plain file")
                    raise IntegrityError(f"member {name}: is {kind}; a bundle holds plain files only")
                if name not in expected:
                    raise IntegrityError(f"member {name}: not listed in bundle.json")
                if name in seen:
                    raise IntegrityError(f"member {name}: appears twice")
                seen.add(name)
                size, sha256 = expected[name]
                if info.size != size:
                    raise IntegrityError(f"member {name}: {info.size} bytes in the archive, bundle.json says {size}")
                reader = MemberReader(tar.extractfile(info), name, size, sha256)
                yield reader
                reader.finish()
            while stream.read(CHUNK):  # the archive's end blocks, and nothing after them
                pass
        while raw.read(CHUNK):
            pass
        raw.close()
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{path}: damaged compressed data after {raw.bytes_read} bytes ({exc})") from None
    except tarfile.TarError as exc:
        raise IntegrityError(f"{path}: damaged archive after {raw.bytes_read} bytes ({exc})") from None
    except EOFError:
        raise IntegrityError(f"{path}: the bundle ends early (truncated after {raw.bytes_read} bytes)") from None
    missing = [name for name in expected if name not in seen]
    if missing:
        raise IntegrityError(f"member {missing[0]}: listed in bundle.json but not in the bundle")


def free_space(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError as exc:
        raise DiskError(f"{folder}: cannot read free space: {exc.strerror}") from None
