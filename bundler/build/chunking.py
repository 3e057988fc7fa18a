"""Making a layer patch (patch.py) on the connected side: content-defined chunks (FastCDC) of the
rebuilt layer's tar that the base layer holds become copies, the rest literal bytes.

Why chunks, and not zstd's dictionary ("patch-from") compression against the base: scripts/bench.py
--only delta measured both (BENCHMARKS.md). Patch-from needs the whole base layer in memory as its
window, which a multi-GB layer does not allow; chunking keeps one index entry per chunk of the base,
and the chunk size grows with the base so that the index never holds more than MAX_CHUNKS entries:
memory stays bounded however large the base is. The literal bytes are compressed by the bundle's
own zstd stream like any member.

A layer's chunks are found once: while it is fetched (``ChunkWriter``, fed the gunzipped bytes on a
thread of its own) they are written to an index file in the cache, keyed by the layer's diff_id and
committed only once the layer matched it. A delta then reads the base's index instead of chunking
the base again, and the rebuilt layer's index to know where its chunks are, reading the layer's
own bytes only for the chunks the base lacks. An index file is checked (its sha256, its diff_id,
its sizes) before it is used; one that fails is made again from the layer.
"""

from __future__ import annotations

import hashlib
import queue
import struct
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
    for chunk in _chunker(average).cut_stream(source):
        if stop is not None and stop.is_set():
            raise Stopped()
        offsets.setdefault(_key(chunk.data), chunk.offset)
    return BaseIndex(average, offsets)


def make_patch(base: BaseIndex, layer: BinaryIO, out: BinaryIO, *, stop: threading.Event | None = None,
               limit: int | None = None) -> PatchStats:
    """Write the patch that rebuilds ``layer`` (a stream of the new layer's tar) from the base layer
    ``base`` indexes; raise NotWorthIt as soon as more than ``limit`` literal bytes would be needed."""
    chunks = ((_key(c.data), c.length, c.data) for c in _chunker(base.average).cut_stream(layer))
    return _write_patch(chunks, base.offsets, out, stop=stop, limit=limit)


def make_patch_from_index(base: BaseIndex, chunks: Iterable[tuple[bytes, int]], layer: BinaryIO, out: BinaryIO, *,
                          stop: threading.Event | None = None, limit: int | None = None) -> PatchStats:
    """``make_patch`` for a layer whose chunks (key, length: ``chunks``, as ``read_index`` gives them)
    are known already: ``layer`` is only read through, its bytes kept where the base lacks them."""
    return _write_patch(_cut_by(chunks, layer), base.offsets, out, stop=stop, limit=limit)


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

class ChunkWriter:
    """A layer's chunk index, made from its bytes as they arrive (``feed``) and written to ``path`` as
    it goes (memory stays flat however large the layer is). Chunking and its hashes run on a thread
    of their own, mostly outside the GIL (FastCDC's cut and blake2b of a chunk of 2 KiB or more), so
    that they take the core the fetch leaves. ``finish`` ties the file to the layer's diff_id."""

    def __init__(self, path: Path, average: int = AVERAGE_CHUNK) -> None:
        self.path, self.average = path, average
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._reader = _QueueReader(self._queue)
        self._hasher = hashlib.sha256()
        self._error: BaseException | None = None
        self.size = self.count = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed by finish or abandon
        self._write(INDEX_MAGIC)
        self._thread = threading.Thread(target=self._run, name="layer-chunker", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        self._hasher.update(data)
        self._file.write(data)

    def _run(self) -> None:
        records = bytearray()
        try:
            for chunk in _chunker(self.average).cut_stream(self._reader):
                records += _RECORD.pack(_key(chunk.data), chunk.length)
                self.count += 1
                self.size += chunk.length
                if len(records) >= CHUNK:
                    self._write(records)
                    records.clear()
            self._write(records)
        except BaseException as exc:  # noqa: BLE001 - handed to finish; the fetch must never wait on a dead thread
            self._error = exc
            self._reader.drain()

    def feed(self, data: bytes) -> None:
        if self._error is None:
            self._queue.put(data)

    def finish(self, diff_id: str) -> None:
        """Wait for every chunk, write the trailer and close; raises what went wrong (OSError)."""
        self._end()
        try:
            if self._error is not None:
                raise self._error
            self._write(_TRAILER.pack(self.size, self.count, self.average, bytes.fromhex(Digest(diff_id).hex),
                                      b"\0" * 32)[:-32])
            self._file.write(self._hasher.digest())
        finally:
            self._file.close()

    def abandon(self) -> None:
        self._end()
        self._file.close()

    def _end(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _QueueReader:
    """The bytes put on a queue as a stream for the chunker (``readinto``), until a None."""

    def __init__(self, source: queue.Queue) -> None:
        self._source, self._pending, self._at, self._ended = source, memoryview(b""), 0, False

    def readinto(self, buffer: memoryview) -> int:
        while self._at == len(self._pending):
            if self._ended:
                return 0
            item = self._source.get()
            if item is None:
                self._ended = True
                return 0
            self._pending, self._at = memoryview(item), 0
        n = min(len(buffer), len(self._pending) - self._at)
        buffer[:n] = self._pending[self._at:self._at + n]
        self._at += n
        return n

    def drain(self) -> None:
        while not self._ended:
            self._ended = self._source.get() is None


def index_file(source: BinaryIO, path: Path, diff_id: str, stop: threading.Event | None = None) -> None:
    """Chunk a layer's bytes (``source``, already known to hash to ``diff_id``) into an index file."""
    writer = ChunkWriter(path)
    try:
        while data := source.read(CHUNK):
            if stop is not None and stop.is_set():
                raise Stopped()
            writer.feed(data)
    except BaseException:
        writer.abandon()
        raise
    writer.finish(diff_id)


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


def base_from_index(path: Path, average: int) -> BaseIndex:
    """The BaseIndex of a layer from its index file (``check_index`` it first)."""
    offsets: dict[bytes, int] = {}
    offset = 0
    for key, length in read_index(path):
        offsets.setdefault(key, offset)
        offset += length
    return BaseIndex(average, offsets)
