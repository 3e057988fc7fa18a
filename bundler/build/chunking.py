"""Making a layer patch (patch.py) on the connected side: content-defined chunks (FastCDC) of the
rebuilt layer's tar that the base layer holds become copies, the rest literal bytes.

Why chunks, and not zstd's dictionary ("patch-from") compression against the base: scripts/bench.py
--only delta measured both (BENCHMARKS.md). Patch-from needs the whole base layer in memory as its
window, which a multi-GB layer does not allow; chunking keeps one index entry per chunk of the base,
and the chunk size grows with the base so that the index never holds more than MAX_CHUNKS entries:
memory stays bounded however large the base is. The literal bytes are compressed by the bundle's
own zstd stream like any member.

A layer's chunks are found once: while it is fetched (``ChunkWriter``, a process fed the gunzipped
bytes through a pipe) they are written to an index file in the cache, keyed by the layer's diff_id
and committed only once the layer matched it. A delta's fetch gives that process the base's index
too, and the patch comes out of the same pass. Otherwise (the base's index was missing or damaged)
the delta reads the base's index (made again from the cached layer when it fails its checks: its
sha256, its diff_id, its sizes) and the rebuilt layer's, and reads the rebuilt layer's own bytes
only to take the chunks the base lacks. Indexes are made at AVERAGE_CHUNK; a base larger than
MAX_CHUNKS of them (512 MiB) is indexed by runs of its chunks (``_grouped``), and the rebuilt layer
cut into runs alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

from bundler.digest import Digest
from bundler.files import CHUNK
from bundler.format.patch import MAGIC, MAX_RECORD, copy_record, literal_header
from bundler.parallel import Stopped

AVERAGE_CHUNK = 2 << 10          # scripts/bench.py --only delta: a changed file costs its chunk and a neighbour's;
                                 # 2 KiB carried 2.0x the changed files compressed, 8 KiB 3.8x, 16 KiB 5.6x
MAX_CHUNKS = 1 << 18             # entries of the base's index at most (about 40 MiB): larger bases get larger chunks
WORTH_IT = 0.5                   # a patch must come to less than this share of the layer, or the layer goes whole
LITERAL_RUN = 4 << 20            # literal bytes are held back at most this long, to be written as one record
INDEX_KEY = f"fastcdc1-{AVERAGE_CHUNK}-blake2b16"   # names how index files were made: others are not read

INDEX_MAGIC = b"BUNDLERCHUNKS1\n"
_RECORD = struct.Struct(">16sI")            # a chunk's key and length, in the layer's order
_TRAILER = struct.Struct(">QQI32s32s")      # layer size, chunks, average, diff_id, sha256 of all before it


@dataclass(frozen=True)
class PatchStats:
    size: int                    # the patch's bytes
    copied: int                  # layer bytes taken from the base
    literal: int                 # layer bytes carried


def average_chunk(base_size: int) -> int:
    size = AVERAGE_CHUNK
    while base_size // size > MAX_CHUNKS:
        size *= 2
    return size


def _grouped(chunks: Iterable[tuple[bytes, int, object]], average: int) -> Iterator[tuple[bytes, int, object]]:
    """Chunks of AVERAGE_CHUNK as chunks of ``average`` (a power of two times it): runs of them, each
    ending after a chunk whose key is 0 modulo the ratio (or at 8 times the ratio of them). The keys
    are hashes of the content, so a base and its rebuild are cut alike, as FastCDC cuts them; and
    one index of a layer, made at AVERAGE_CHUNK while it was fetched, serves a base of any size
    with MAX_CHUNKS entries at most. A run's key is the hash of its chunks' keys; its bytes (None
    where the chunks have none) are joined only when asked for."""
    ratio = average // AVERAGE_CHUNK
    if ratio <= 1:
        yield from chunks
        return
    keys, pieces, length = bytearray(), [], 0
    for key, size, data in chunks:
        keys += key
        length += size
        if data is not None:
            pieces.append(bytes(data))    # the chunker reuses its buffer
        if int.from_bytes(key[:4], "big") % ratio == 0 or len(keys) >= 16 * 8 * ratio:
            yield _key(keys), length, b"".join(pieces) if pieces else None
            keys, pieces, length = bytearray(), [], 0
    if keys:
        yield _key(keys), length, b"".join(pieces) if pieces else None


def _chunker(average: int) -> FastCDC:
    return FastCDC(average, min_size=average // 4, max_size=average * 8)


def _key(data: memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class NotWorthIt(Exception):
    """The layer shares too little with the base: more literal bytes than the caller allowed."""


@dataclass
class BaseIndex:
    """Where each chunk of a base layer is, by its hash; built from a stream in one pass."""

    average: int
    offsets: dict[bytes, int]


def index_base(source: BinaryIO, size: int, stop: threading.Event | None = None) -> BaseIndex:
    """Chunk the base layer (``size`` bytes, read from ``source`` as a stream: memory stays flat)."""
    average = average_chunk(size)
    offsets: dict[bytes, int] = {}
    offset = 0
    for key, length, _ in _grouped(((_key(c.data), c.length, None) for c in _chunker(AVERAGE_CHUNK).cut_stream(source)),
                                   average):
        if stop is not None and stop.is_set():
            raise Stopped()
        offsets.setdefault(key, offset)
        offset += length
    return BaseIndex(average, offsets)


def make_patch(base: BaseIndex, layer: BinaryIO, out: BinaryIO, *, stop: threading.Event | None = None,
               limit: int | None = None) -> PatchStats:
    """Write the patch that rebuilds ``layer`` (a stream of the new layer's tar) from the base layer
    ``base`` indexes; raise NotWorthIt as soon as more than ``limit`` literal bytes would be needed."""
    chunks = ((_key(c.data), c.length, c.data) for c in _chunker(AVERAGE_CHUNK).cut_stream(layer))
    return _write_patch(_grouped(chunks, base.average), base.offsets, out, stop=stop, limit=limit)


def make_patch_from_index(base: BaseIndex, chunks: Iterable[tuple[bytes, int]], layer: BinaryIO, out: BinaryIO, *,
                          stop: threading.Event | None = None, limit: int | None = None) -> PatchStats:
    """``make_patch`` for a layer whose chunks (key, length: ``chunks``, as ``read_index`` gives them)
    are known already: ``layer`` is only read through, its bytes kept where the base lacks them."""
    return _write_patch(_grouped(_cut_by(chunks, layer), base.average), base.offsets, out, stop=stop, limit=limit)


def _cut_by(chunks: Iterable[tuple[bytes, int]], layer: BinaryIO) -> Iterator[tuple[bytes, int, memoryview]]:
    """(key, length, bytes) of each chunk, the bytes read from ``layer`` in pieces of CHUNK."""
    block, at = memoryview(b""), 0
    for key, length in chunks:
        if at + length <= len(block):
            data = block[at:at + length]
            at += length
        else:
            joined = bytearray(block[at:])
            while len(joined) < length:
                more = layer.read(max(CHUNK, length - len(joined)))
                if not more:
                    raise ValueError("the layer is shorter than its chunk index")
                joined += more
            block, at = memoryview(bytes(joined)), length
            data = block[:length]
        yield key, length, data
    if at != len(block) or layer.read(1):
        raise ValueError("the layer is longer than its chunk index")


def _write_patch(chunks: Iterable[tuple[bytes, int, object]], index: dict[bytes, int], out: BinaryIO, *,
                 stop: threading.Event | None, limit: int | None) -> PatchStats:
    size = len(MAGIC)
    out.write(MAGIC)
    copied = literal = 0
    for kind, offset, data in _runs(chunks, index, stop):
        if kind == "copy":
            record = copy_record(offset, data)
            copied += data
            out.write(record)
            size += len(record)
        else:
            header = literal_header(len(data))
            out.write(header)
            out.write(data)
            literal += len(data)
            size += len(header) + len(data)
            if limit is not None and literal > limit:
                raise NotWorthIt()
    out.write(b"E")
    return PatchStats(size + 1, copied, literal)


def _runs(chunks: Iterable[tuple[bytes, int, object]], index: dict[bytes, int], stop: threading.Event | None
          ) -> Iterator[tuple[str, int, object]]:
    """Copies (adjacent ones merged: ``("copy", offset, length)``) and literal bytes (``("literal", 0, bytes)``)
    of ``chunks`` (key, length, bytes)."""
    run_offset = run_length = 0
    pending = bytearray()
    for key, length, data in chunks:
        if stop is not None and stop.is_set():
            raise Stopped()
        found = index.get(key)
        if found is None:
            if run_length:
                yield "copy", run_offset, run_length
                run_length = 0
            pending += data
            if len(pending) >= LITERAL_RUN:
                yield "literal", 0, bytes(pending)
                pending.clear()
            continue
        if pending:
            yield "literal", 0, bytes(pending)
            pending.clear()
        if run_length and run_offset + run_length == found and run_length + length <= MAX_RECORD:
            run_length += length
        else:
            if run_length:
                yield "copy", run_offset, run_length
            run_offset, run_length = found, length
    if run_length:
        yield "copy", run_offset, run_length
    if pending:
        yield "literal", 0, bytes(pending)


# ---- index files: a layer's chunks, found once ---------------------------------------------------

@dataclass(frozen=True)
class BaseFile:
    """A base layer's chunk index in the cache, for a patch made while the rebuilt layer arrives."""

    index: Path
    diff_id: str
    size: int


@dataclass(frozen=True)
class Chunked:
    """What chunking a layer gave: its size, and the patch against the base when one was asked for
    and the base's index held (``patch_sha256`` None otherwise)."""

    size: int
    patch_size: int = 0
    patch_sha256: str | None = None
    literal: int = 0


class ChunkWriter:
    """A layer's chunk index (and, given a base, its patch), made from its bytes as they arrive
    (``feed``) by a process of its own: chunking and hashing take the core the fetch leaves, and
    never wait on this process's GIL (a thread did: FastCDC's cut releases it for each 2 KiB chunk,
    and taking it back behind the fetch's threads made chunking 3 to 10 times slower). The bytes
    go through a pipe; the index and the patch are written to files as they are made, so memory
    stays flat however large the layer is. ``finish`` ties the index to the layer's diff_id."""

    def __init__(self, path: Path, *, base: BaseFile | None = None, patch: Path | None = None) -> None:
        self.path, self.patch = path, patch if base is not None else None
        job = {"index": str(path), "patch": str(patch) if self.patch else None,
               "base": {"index": str(base.index), "diff_id": base.diff_id, "size": base.size} if base else None}
        # the modules this process sees, however it was started (an editable install, a zipapp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen([sys.executable, "-m", "bundler.build.chunking", json.dumps(job)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         bufsize=0, env=env)
        with contextlib.suppress(OSError):   # fewer, larger writes; the default pipe holds 64 KiB
            fcntl.fcntl(self._process.stdin, PIPE_SIZE_SET, CHUNK)
        self._broken = False

    def feed(self, data: bytes) -> None:
        if not self._broken:
            view = memoryview(data)
            try:
                while view:
                    view = view[self._process.stdin.write(view):]
            except BrokenPipeError:   # the process failed: finish says why
                self._broken = True

    def finish(self, diff_id: str) -> Chunked:
        """Wait for the last chunk and seal the index; OSError naming what failed."""
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        out, err = self._process.stdout.read(), self._process.stderr.read()
        self._process.stdout.close()
        self._process.stderr.close()
        if self._process.wait() != 0:
            raise OSError(f"chunking failed: {err.decode(errors='replace').strip().splitlines()[-1:] or '?'}")
        found = json.loads(out)
        _seal(self.path, size=found["size"], count=found["count"], diff_id=diff_id)
        return Chunked(found["size"], found["patch_size"], found["patch_sha256"], found["literal"])

    def abandon(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        self._process.wait()
        self.path.unlink(missing_ok=True)
        if self.patch is not None:
            self.patch.unlink(missing_ok=True)


PIPE_SIZE_SET = 1031    # fcntl F_SETPIPE_SZ (Linux)


def _chunk_into(source: BinaryIO, index: BinaryIO, *, base: BaseIndex | None = None, patch: BinaryIO | None = None,
                stop: threading.Event | None = None) -> dict:
    """Write the index records of ``source`` (and its patch against ``base``) in one pass."""
    count = size = 0
    records = bytearray()

    def chunks() -> Iterator[tuple[bytes, int, object]]:
        nonlocal count, size
        for chunk in _chunker(AVERAGE_CHUNK).cut_stream(source):
            if stop is not None and stop.is_set():
                raise Stopped()
            key = _key(chunk.data)
            records.extend(_RECORD.pack(key, chunk.length))
            count, size = count + 1, size + chunk.length
            if len(records) >= CHUNK:
                index.write(records)
                records.clear()
            yield key, chunk.length, chunk.data

    index.write(INDEX_MAGIC)
    found = {"patch_size": 0, "patch_sha256": None, "literal": 0}
    if base is not None and patch is not None:
        hashed = _HashedWriter(patch)
        stats = _write_patch(_grouped(chunks(), base.average), base.offsets, hashed, stop=stop, limit=None)
        found.update(patch_size=stats.size, patch_sha256=hashed.hasher.hexdigest(), literal=stats.literal)
    else:
        for _ in chunks():
            pass
    index.write(records)
    return {**found, "size": size, "count": count}


class _HashedWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hasher = out, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.out.write(data)


def _seal(path: Path, *, size: int, count: int, diff_id: str) -> None:
    """Append the trailer that ties an index file to its layer (and the sha256 of all before it)."""
    hasher = hashlib.sha256()
    with open(path, "r+b") as handle:
        while data := handle.read(CHUNK):
            hasher.update(data)
        trailer = _TRAILER.pack(size, count, AVERAGE_CHUNK, bytes.fromhex(Digest(diff_id).hex), b"")[:-32]
        hasher.update(trailer)
        handle.write(trailer + hasher.digest())


def index_file(source: BinaryIO, path: Path, diff_id: str, stop: threading.Event | None = None) -> None:
    """Chunk a layer's bytes (``source``, already known to hash to ``diff_id``) into an index file."""
    with open(path, "wb") as index:
        found = _chunk_into(source, index, stop=stop)
    _seal(path, size=found["size"], count=found["count"], diff_id=diff_id)


def check_index(path: Path, diff_id: str, size: int) -> int | None:
    """The average chunk size of the index file at ``path``, if it is whole and was made from the layer
    ``diff_id`` of ``size`` bytes; None if it is missing, damaged, cut short or made from another layer."""
    hasher, total = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            length = handle.seek(0, 2)
            records, odd = divmod(length - len(INDEX_MAGIC) - _TRAILER.size, _RECORD.size)
            if records < 0 or odd:
                return None
            handle.seek(length - _TRAILER.size)
            layer_size, count, average, made_from, sha = _TRAILER.unpack(handle.read(_TRAILER.size))
            if (layer_size, count, made_from) != (size, records, bytes.fromhex(Digest(diff_id).hex)) or not average:
                return None
            handle.seek(0)
            if handle.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
                return None
            hasher.update(INDEX_MAGIC)
            left = records * _RECORD.size
            while left:
                data = handle.read(min(left, CHUNK - CHUNK % _RECORD.size))
                if not data or len(data) % _RECORD.size:
                    return None
                hasher.update(data)
                total += sum(n for _, n in _RECORD.iter_unpack(data))
                left -= len(data)
            hasher.update(handle.read(_TRAILER.size - 32))
    except OSError:
        return None
    return average if total == size and hasher.digest() == sha else None


def read_index(path: Path) -> Iterator[tuple[bytes, int]]:
    """The (key, length) of each chunk of an index file, in the layer's order (``check_index`` it first)."""
    with open(path, "rb") as handle:
        left = (handle.seek(0, 2) - len(INDEX_MAGIC) - _TRAILER.size) // _RECORD.size * _RECORD.size
        handle.seek(len(INDEX_MAGIC))
        while left:
            data = handle.read(min(left, CHUNK - CHUNK % _RECORD.size))
            left -= len(data)
            yield from _RECORD.iter_unpack(data)


def base_from_index(path: Path, size: int) -> BaseIndex:
    """The BaseIndex of a layer of ``size`` bytes from its index file (``check_index`` it first)."""
    average = average_chunk(size)
    offsets: dict[bytes, int] = {}
    offset = 0
    for key, length, _ in _grouped(((key, length, None) for key, length in read_index(path)), average):
        offsets.setdefault(key, offset)
        offset += length
    return BaseIndex(average, offsets)


def _main(job: dict) -> None:
    """The chunking process of ChunkWriter: the layer's bytes on stdin, what it found on stdout."""
    base = None
    if job["base"] is not None:
        given = job["base"]
        if check_index(Path(given["index"]), given["diff_id"], given["size"]) == AVERAGE_CHUNK:
            base = base_from_index(Path(given["index"]), given["size"])
    with open(job["index"], "wb") as index, \
            open(job["patch"], "wb") if base is not None else contextlib.nullcontext() as patch:
        found = _chunk_into(sys.stdin.buffer.raw, index, base=base, patch=patch)
    sys.stdout.write(json.dumps(found))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
