"""Making a layer patch (patch.py) on the connected side: content-defined chunks (FastCDC) of the
rebuilt layer's tar that the base layer holds become copies, the rest literal bytes.

Why chunks, and not zstd's dictionary ("patch-from") compression against the base: scripts/bench.py
--only delta measured both (BENCHMARKS.md). Patch-from needs the whole base layer in memory as its
window, which a multi-GB layer does not allow; chunking keeps one index entry per chunk of the base,
and the chunk size grows with the base so that the index never holds more than MAX_CHUNKS entries:
memory stays bounded however large the base is. The literal bytes are compressed by the bundle's
own zstd stream like any member.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

from bundler.format.patch import MAGIC, MAX_RECORD, copy_record, literal_header
from bundler.parallel import Stopped

AVERAGE_CHUNK = 2 << 10          # scripts/bench.py --only delta: a changed file costs its chunk and a neighbour's;
                                 # 2 KiB carried 2.0x the changed files compressed, 8 KiB 3.8x, 16 KiB 5.6x
MAX_CHUNKS = 1 << 18             # entries of the base's index at most (about 40 MiB): larger bases get larger chunks
WORTH_IT = 0.5                   # a patch must come to less than this share of the layer, or the layer goes whole
LITERAL_RUN = 4 << 20            # literal bytes are held back at most this long, to be written as one record


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
    chunker, index = _chunker(base.average), base.offsets
    size = len(MAGIC)
    out.write(MAGIC)
    copied = literal = 0
    for kind, offset, data in _runs(chunker.cut_stream(layer), index, stop):
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


def _runs(chunks: Iterator[object], index: dict[bytes, int], stop: threading.Event | None
          ) -> Iterator[tuple[str, int, object]]:
    """Copies (adjacent ones merged: ``("copy", offset, length)``) and literal bytes (``("literal", 0, bytes)``)."""
    run_offset = run_length = 0
    pending = bytearray()
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise Stopped()
        found = index.get(_key(chunk.data))
        if found is None:
            if run_length:
                yield "copy", run_offset, run_length
                run_length = 0
            pending += chunk.data
            if len(pending) >= LITERAL_RUN:
                yield "literal", 0, bytes(pending)
                pending.clear()
            continue
        if pending:
            yield "literal", 0, bytes(pending)
            pending.clear()
        if run_length and run_offset + run_length == found and run_length + chunk.length <= MAX_RECORD:
            run_length += chunk.length
        else:
            if run_length:
                yield "copy", run_offset, run_length
            run_offset, run_length = found, chunk.length
    if run_length:
        yield "copy", run_offset, run_length
    if pending:
        yield "literal", 0, bytes(pending)
