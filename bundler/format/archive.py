"""The bundle file: a pax tar compressed with zstd, optionally cut into volumes.

Writing streams the members once, in order, through one multi-threaded zstd stream; the first
member (bundle.json) gets a zstd frame of its own so that ``inspect`` reads only kilobytes.
Reading streams too, and hands out each member through a reader that checks its size and sha256
against bundle.json; nothing but plain files with safe relative names is accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bundler.errors import InputError, IntegrityError
from bundler.files import CHUNK
from bundler.format.head import Head, MemberEntry
from bundler.format.paths import HEAD, SIGNATURE_FRAME, unsafe_path

BLOCK = 512
RECORD = 20 * BLOCK
MAX_HEAD = 64 << 20               # bundle.json larger than this is not ours
MAX_SIGNATURE_FRAME = MAX_HEAD + (1 << 20)   # a signature and the head it signs


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def check_member_path(path: str) -> None:
    """Refuse absolute paths, ``..``, empty components, backslashes and control characters."""
    problem = unsafe_path(path)
    if problem:
        raise IntegrityError(f"member {path!r}: unsafe path in the bundle ({problem})")


def tar_header(path: str, size: int, mtime: int = 0) -> bytes:
    """One pax header for a plain file: fixed mode and owners, so the same input gives the same bytes."""
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """The zeros that round a member up to whole tar blocks."""
    return b"\0" * (-size % BLOCK)


class TarWriter:
    """A tar stream written piece by piece into ``write``: what docker and containerd are fed."""

    def __init__(self, write) -> None:  # noqa: ANN001
        self._write = write

    def add(self, name: str, size: int, chunks: Iterator[bytes]) -> None:
        self._write(tar_header(name, size))
        written = 0
        for chunk in chunks:
            self._write(chunk)
            written += len(chunk)
        self._write(b"\0" * (-written % BLOCK))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add(name, len(data), iter([data]))

    def end(self) -> None:
        self._write(b"\0" * (2 * BLOCK))


# ---- reading -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Volumes:
    """The files of one bundle, in order, with their checksums when it was split."""

    paths: list[Path]
    checksums: dict[str, str] | None = None
    base: Path | None = None         # the bundle's own name: OUT for OUT.001, OUT.002, ... (the restorer is OUT.pyz)


def locate(path: Path) -> Volumes:
    """``x.tar.zst``, or a split bundle named by its base or by any of its volumes."""
    if not path.name:
        raise InputError(f"{str(path)!r}: not a bundle file name")
    base = path
    if re.fullmatch(r".*\.\d{3}", path.name) and not path.with_name(path.name + ".001").exists():
        base = path.with_name(path.name[:-4])
    checksums_file = base.with_name(base.name + ".sha256")
    if base.is_file() and not checksums_file.exists():
        return Volumes([base], base=base)
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
        return Volumes(listed, checksums, base)
    for number, volume in enumerate(present, 1):
        expected = base.with_name(f"{base.name}.{number:03d}")
        if volume != expected:
            raise IntegrityError(f"{expected}: volume {number:03d} is missing")
    _check_volume_sizes(present)
    return Volumes(present, base=base)


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
        self._index, self._handle, self._hasher = -1, None, None
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
        # only volumes with checksums (OUT.sha256) are hashed: an unsplit bundle's bytes are checked
        # member by member, and hashing the file again would cost half a second per GiB for nothing
        self._hasher = hashlib.sha256() if self.volumes.checksums is not None else None
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
                if self._hasher is not None:
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


@dataclass(frozen=True)
class Front:
    """What the start of a bundle holds: bundle.json's bytes (the first frame) and, when it was
    signed, the signature frame that follows (format.SIGNATURE_FRAME); kilobytes, whatever the
    bundle's size."""

    head: bytes                   # bundle.json exactly as it is in the file
    signature: bytes | None       # the signature frame's content, if there is one
    next_frame: int               # where the frame after these starts (the SBOM's, in bundles that carry one)
    bytes_read: int

    def decoded(self, path: Path) -> dict:
        """bundle.json decoded, not yet checked."""
        try:
            head = json.loads(self.head)
        except ValueError as exc:
            raise IntegrityError(f"{path}: unreadable {HEAD} ({exc})") from None
        if not isinstance(head, dict):
            raise IntegrityError(f"{path}: {HEAD} is not a JSON object")
        return head


def read_front(path: Path) -> Front:
    """bundle.json from the first frame, and the signature frame after it if there is one."""
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
        after = bytearray(decoder.unused_data)
        first_frame = reader.bytes_read - len(after)
        signature, next_frame = _signature_frame(path, reader, after, start=first_frame)
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
            head = tar.extractfile(first).read()
    except tarfile.TarError as exc:
        raise IntegrityError(f"{path}: unreadable {HEAD} ({exc})") from None
    return Front(head, signature, next_frame, bytes_read=reader.bytes_read)


def _signature_frame(path: Path, reader: VolumeReader, after: bytearray, *, start: int) -> tuple[bytes | None, int]:
    """The content of the skippable frame at ``start`` if it is bundler's signature frame, and
    where the next frame starts. ``after`` holds the bytes already read from ``start`` on."""
    def fill(count: int) -> bool:
        while len(after) < count:
            chunk = reader.read(max(count - len(after), 64 << 10))
            if not chunk:
                return False
            after.extend(chunk)
        return True

    if not fill(8) or struct.unpack("<I", after[:4])[0] != SIGNATURE_FRAME:
        return None, start
    size = struct.unpack("<I", after[4:8])[0]
    if size > MAX_SIGNATURE_FRAME:
        raise IntegrityError(f"{path}: the signature frame claims {size} bytes; not a bundle's")
    if not fill(8 + size):
        raise IntegrityError(f"{path}: the file ends inside its signature frame (truncated)")
    return bytes(after[8:8 + size]), start + 8 + size


def read_head(path: Path) -> tuple[dict, int]:
    """bundle.json, decoded but not yet checked, from the first frame only; and the number of file
    bytes read (kilobytes, whatever the bundle's size)."""
    front = read_front(path)
    return front.decoded(path), front.bytes_read


def load_head(path: Path) -> Head:
    """The bundle's head, every key checked (see format.Head.from_json)."""
    data, _ = read_head(path)
    return Head.from_json(data, str(path))


def read_first_member(path: Path, front: Front, entry: MemberEntry) -> bytes | None:
    """The member ``entry`` when it is alone in the frame after the head (and the signature), as
    bundler writes the SBOM: that frame only is read, and its bytes are checked against ``entry``.
    None when that frame holds something else (a bundle written otherwise)."""
    reader = VolumeReader(Volumes(locate(path).paths))
    try:
        skip = front.next_frame
        while skip:
            chunk = reader.read(min(skip, CHUNK))
            if not chunk:
                return None
            skip -= len(chunk)
        decoder = zstandard.ZstdDecompressor().decompressobj()
        data = bytearray()
        limit = entry.size + 2 * RECORD
        while not decoder.eof:
            chunk = reader.read(64 << 10)
            if not chunk:
                return None
            data += decoder.decompress(chunk)
            if len(data) > limit:
                return None
    except zstandard.ZstdError:
        return None
    finally:
        reader.close()
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != entry.path or not first.isfile():
                return None
            content = tar.extractfile(first).read()
    except tarfile.TarError:
        return None
    if len(content) != entry.size or hashlib.sha256(content).hexdigest() != entry.sha256:
        raise IntegrityError(f"member {entry.path}: does not match bundle.json ({len(content)} bytes, sha256 "
                             f"{hashlib.sha256(content).hexdigest()[:16]}..)")
    return content


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

    def __init__(self, source: io.RawIOBase, name: str, size: int, sha256: str) -> None:
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
        scratch = bytearray(CHUNK)
        while self.readinto(scratch):
            pass
        if self._read != self.size:
            raise IntegrityError(f"member {self.name}: {self._read} bytes, bundle.json says {self.size}")
        if self._hasher.hexdigest() != self.sha256:
            raise IntegrityError(f"member {self.name}: sha256 {self._hasher.hexdigest()[:16]}.. does not match "
                                 f"bundle.json ({self.sha256[:16]}..)")


def _check_streamed_head(path: Path, source: _EntryData, size: int, *, sha256: str) -> None:
    if size > MAX_HEAD:
        raise IntegrityError(f"{path}: the head is larger than {MAX_HEAD} bytes; not a bundle")
    hasher = hashlib.sha256()
    while chunk := source.read(CHUNK):
        hasher.update(chunk)
    if hasher.hexdigest() != sha256:
        raise IntegrityError(f"{path}: {HEAD} changed while the bundle was being read")


# ---- the tar stream, read without tarfile ------------------------------------------------------------
# tarfile's stream mode copies every piece several times over (its buffer joins and slices), on every
# verify and restore of gigabytes: this reader parses the few header forms a bundle holds (ustar, pax,
# GNU long names) and reads each member's bytes straight into the caller's buffer.

_ZERO_BLOCK = bytes(BLOCK)
_POSIX_MAGIC = b"ustar\x0000"
_MAX_EXTENDED = 1 << 20           # a pax or GNU long-name header larger than this is not ours
_REGULAR = (b"0", b"\x00", b"7")
_KINDS = {b"1": "a hard link", b"2": "a symlink", b"3": "a device", b"4": "a device", b"5": "a directory",
          b"6": "a fifo"}


class _TarError(tarfile.TarError):
    """A header that is not one of a tar's."""


@dataclass(frozen=True)
class _Header:
    name: str
    kind: bytes
    size: int

    def is_file(self) -> bool:
        return self.kind in _REGULAR


class _EntryData(io.RawIOBase):
    """One entry's bytes, read from the decompressed stream into the caller's buffer (no copy)."""

    def __init__(self, stream: io.RawIOBase, size: int) -> None:
        self._stream, self._left = stream, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        n = self._stream.readinto(view[:self._left] if len(view) > self._left else view)
        if not n:
            raise EOFError("unexpected end of data")
        self._left -= n
        return n

    def skip(self) -> None:
        """Read past what the caller left."""
        scratch = bytearray(min(CHUNK, self._left))
        while self._left:
            self.readinto(scratch)


def _read_exact(stream: io.RawIOBase, size: int) -> bytes:
    data = _EntryData(stream, size)
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        got += data.readinto(view[got:])
    return bytes(buffer)


def _string(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A header's number: octal text, or base-256 (GNU) for what octal cannot hold."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _TarError(f"a header's number is not octal: {text[:12]!r}") from None


def _pax(data: bytes) -> dict[str, str]:
    """``LENGTH KEY=VALUE\\n`` records."""
    records, at = {}, 0
    while at < len(data):
        space = data.find(b" ", at)
        if space < 0 or not data[at:space].isdigit() or int(data[at:space]) <= space - at:
            raise _TarError("a pax header's record is malformed")
        end = at + int(data[at:space])
        key, sep, value = data[space + 1:end - 1].partition(b"=")
        if not sep or data[end - 1:end] != b"\n":
            raise _TarError("a pax header's record is malformed")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        at = end
    return records


def _entries(stream: io.RawIOBase) -> Iterator[tuple[_Header, _EntryData]]:
    """Each entry of a tar stream up to its end blocks, extended headers (pax, GNU long names) applied."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = _read_exact(stream, BLOCK)
        if block == _ZERO_BLOCK:
            return
        stored = _number(block[148:156])
        rest = block[:148] + block[156:]
        if stored not in (256 + sum(rest), 256 + sum(b - 256 * (b > 127) for b in rest)):
            raise _TarError("a header's checksum does not match")
        size, kind = _number(block[124:136]), block[156:157]
        if size < 0:
            raise _TarError("a header's size is negative")
        if kind in (b"x", b"g", b"L", b"K"):
            if size > _MAX_EXTENDED:
                raise _TarError(f"an extended header of {size} bytes")
            data = _read_exact(stream, size)
            _read_exact(stream, -size % BLOCK)
            if kind == b"x":
                pax = _pax(data)
            elif kind == b"L":
                long_name = _string(data)
            continue
        name = _string(block[0:100])
        if block[257:265] == _POSIX_MAGIC and block[345:346] != b"\x00":
            name = _string(block[345:500]) + "/" + name
        name = pax.get("path") or long_name or name
        if "size" in pax:
            if not pax["size"].isdigit():
                raise _TarError("a pax header's size is not a number")
            size = int(pax["size"])
        if kind == b"\x00" and name.endswith("/"):
            kind = b"5"
        if kind == b"5":
            name = name.rstrip("/")
        pax, long_name = {}, None
        data = _EntryData(stream, size)
        yield _Header(name, kind, size), data
        data.skip()
        _read_exact(stream, -size % BLOCK)


def iter_members(path: Path, head: Head, head_sha256: str | None = None) -> Iterator[MemberReader]:
    """Every member after bundle.json, as a checked reader; the caller reads it, then calls finish().

    Refuses anything that is not a plain file listed in bundle.json with the same size, a member
    listed twice, and, at the end, a listed member that never came; checks every volume's
    checksum, and that nothing follows the archive. With ``head_sha256`` (of the head whose
    signature was checked), the bundle.json streamed here must be that one: a file changed since
    its head was read is refused.
    """
    expected = {m.path: (m.size, m.sha256) for m in head.members}
    split = head.split
    volumes = locate(path)
    raw = VolumeReader(volumes, split)
    seen: set[str] = set()
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)
        first = True
        for info, data in _entries(stream):
            if first:
                first = False
                if info.name != HEAD:
                    raise IntegrityError(f"{path}: the first member is {info.name!r}, not {HEAD}")
                if head_sha256 is not None:
                    _check_streamed_head(path, data, info.size, sha256=head_sha256)
                continue
            name = info.name
            check_member_path(name)
            if not info.is_file():
                kind = _KINDS.get(info.kind, "not a plain file")
                raise IntegrityError(f"member {name}: is {kind}; a bundle holds plain files only")
            if name not in expected:
                raise IntegrityError(f"member {name}: not listed in bundle.json")
            if name in seen:
                raise IntegrityError(f"member {name}: appears twice")
            seen.add(name)
            size, sha256 = expected[name]
            if info.size != size:
                raise IntegrityError(f"member {name}: {info.size} bytes in the archive, bundle.json says {size}")
            reader = MemberReader(data, name, size, sha256)
            yield reader
            reader.finish()
        _check_end(path, stream)
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


def _check_end(path: Path, stream: zstandard.ZstdDecompressionReader) -> None:
    """After the first end block: zeros only (the second end block, and what a tar writer pads its
    last record with, however large its records), to the end of the stream. Anything else was
    appended, or is damage that the members' checksums cannot see."""
    scratch = bytearray(CHUNK)
    while True:
        start = stream.tell()
        n = stream.readinto(scratch)
        if not n:
            return
        if scratch.count(0, 0, n) != n:
            at = start + n - len(scratch[:n].lstrip(b"\0"))
            raise IntegrityError(f"{path}: data after the archive's end, at byte {at} of its tar stream")
