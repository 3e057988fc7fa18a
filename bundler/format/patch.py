"""A layer patch: a rebuilt layer as ranges of a layer the site holds and the bytes it lacks.

The format (``fastcdc`` in bundle.json, made by chunking.py on the connected side)::

    b"BUNDLERPATCH1\\n"
    records:  b"C" offset:u64 length:u32    copy ``length`` bytes of the base layer from ``offset``
              b"L" length:u32 bytes          ``length`` bytes of its own
              b"E"                           the end

Applying reads the patch as it streams and the base layer by offset from a file, in pieces of at
most CHUNK bytes: memory stays bounded however large either layer is. The result is written to a
file and must hash to the layer's diff_id, at the size bundle.json gives, before anything uses it.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO

from bundler.errors import IntegrityError
from bundler.files import CHUNK, disk_error

MAGIC = b"BUNDLERPATCH1\n"
COPY, LITERAL, END = b"C", b"L", b"E"
_COPY = struct.Struct(">QI")
_LITERAL = struct.Struct(">I")
MAX_RECORD = (1 << 32) - 1


def copy_record(offset: int, length: int) -> bytes:
    return COPY + _COPY.pack(offset, length)


def literal_header(length: int) -> bytes:
    return LITERAL + _LITERAL.pack(length)


def _exactly(source: BinaryIO, size: int, name: str) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise IntegrityError(f"{name}: the patch ends inside a record")
    return data


def apply_patch(patch: BinaryIO, base: Path, *, base_size: int, out: Path | None, size: int, diff_id: str,
                name: str) -> None:
    """Rebuild a layer into ``out`` (or only check it, when None) from ``patch`` (a stream) and the
    ``base`` layer file; raises IntegrityError naming ``name`` unless the result is ``size`` bytes
    hashing to ``diff_id``."""
    hasher, written = hashlib.sha256(), 0
    if _exactly(patch, len(MAGIC), name) != MAGIC:
        raise IntegrityError(f"{name}: not a layer patch")
    try:
        with open(base, "rb") as source, open(out or os.devnull, "wb") as target:
            def emit(data: bytes) -> None:
                nonlocal written
                written += len(data)
                if written > size:
                    raise IntegrityError(f"{name}: rebuilds more than the {size} bytes of layer {diff_id[:19]}..")
                hasher.update(data)
                target.write(data)

            while True:
                tag = _exactly(patch, 1, name)
                if tag == END:
                    break
                if tag == COPY:
                    offset, length = _COPY.unpack(_exactly(patch, _COPY.size, name))
                    if offset + length > base_size:
                        raise IntegrityError(f"{name}: copies past the end of the base layer")
                    source.seek(offset)
                    while length:
                        piece = source.read(min(length, CHUNK))
                        if not piece:
                            raise IntegrityError(f"{name}: the base layer {base} is shorter than bundle.json says")
                        emit(piece)
                        length -= len(piece)
                elif tag == LITERAL:
                    (length,) = _LITERAL.unpack(_exactly(patch, _LITERAL.size, name))
                    while length:
                        piece = _exactly(patch, min(length, CHUNK), name)
                        emit(piece)
                        length -= len(piece)
                else:
                    raise IntegrityError(f"{name}: unknown patch record {tag!r}")
    except OSError as exc:
        _remove(out)
        raise disk_error(exc, f"rebuilding layer {diff_id} into {out}") from None
    except BaseException:
        _remove(out)
        raise
    found = "sha256:" + hasher.hexdigest()
    if written != size or found != diff_id:
        _remove(out)
        raise IntegrityError(f"{name}: rebuilds {written} bytes hashing to {found[:19]}.., not layer {diff_id[:19]}.. "
                             f"of {size} bytes")


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
