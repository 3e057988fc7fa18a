"""Decoding a layer's compressed bytes (gzip, zstd, or a plain tar) in bounded pieces.

Both sides use it: the connected side while a layer downloads (layers.py), the air-gapped side to
turn a layer carried exactly as its registry serves it (compressed) into the tar a docker engine
loads, checked against its diff_id on the way. isal's gzip decoder is used when it is installed
(the connected side always has it), the standard library's zlib otherwise (the restorer).
"""

from __future__ import annotations

import functools
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator

import zstandard

from bundler.errors import IntegrityError


@functools.cache
def gzip_module() -> object:
    """isal's zlib where it is installed (the connected side always has it), else the standard one (the
    restorer carries no isal: zlib decodes the same streams, more slowly). Imported on first use."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


class Undecodable(IntegrityError):
    """Bytes that do not decode as the gzip or zstd stream they start as."""


class Decoder:
    """gzip (several members allowed), zstd (several frames allowed) or plain tar, told apart by magic.

    The decompressed bytes go to ``emit`` in pieces of at most PIECE as they are made, so a layer
    that inflates a thousandfold (gzip) or forty thousandfold (zstd) still moves through bounded
    buffers: ``emit`` blocks while the writer is behind. A stream that does not decode raises
    Undecodable (the connected side counts it against the endpoint that sent it, like wrong bytes).
    """

    GZIP, ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
    PIECE = 1 << 20

    def __init__(self, emit: Callable[[bytes], None], limit: int | None = None) -> None:
        self._out = _Pieces(emit, limit)
        self._kind: str | None = None
        self._head = b""
        self._obj = None

    def _new(self) -> object:
        if self._kind == "gzip":
            return gzip_module().decompressobj(31)
        return zstandard.ZstdDecompressor().stream_writer(self._out, write_size=self.PIECE)

    def feed(self, data: bytes) -> None:
        try:
            self._feed(data)
        except (gzip_module().error, zstandard.ZstdError) as exc:
            raise Undecodable(f"the layer is not valid {self._kind}: {exc}") from None

    def _feed(self, data: bytes) -> None:
        if self._kind is None:
            self._head += data
            if len(self._head) < 4:
                return
            data, self._head = self._head, b""
            self._kind = ("gzip" if data.startswith(self.GZIP) else "zstd" if data.startswith(self.ZSTD)
                          else "tar")
            if self._kind != "tar":
                self._obj = self._new()
        if self._kind == "tar":
            self._out.write(data)
        elif self._kind == "zstd":
            self._obj.write(data)   # one frame after another; pieces reach emit as they are made
        else:
            while data:
                piece = self._obj.decompress(data, self.PIECE)
                data = self._obj.unconsumed_tail
                if piece:
                    self._out.write(piece)
                if self._obj.eof:
                    data = self._obj.unused_data + data
                    if data:
                        self._obj = self._new()

    def finish(self) -> None:
        """The end of the layer: a gzip member cut short is an error here; a zstd frame cut short
        gives fewer bytes than the diff_id names, which the caller's check catches."""
        if self._kind is None:  # fewer than 4 bytes in all
            if self._head:
                self._out.write(self._head)
        elif self._kind == "gzip" and not self._obj.eof:
            raise Undecodable("the layer's gzip stream ends before its end marker")

    def allow(self, limit: int | None) -> None:
        """Raise Inflated once more than ``limit`` decompressed bytes in all would go to ``emit``."""
        self._out.limit = limit


class Inflated(Exception):
    """A layer inflated past the limit its decoder was given."""


class _Pieces:
    """Where decompressed pieces go (zstd's stream writer writes here too), counted and limited."""

    def __init__(self, emit: Callable[[bytes], None], limit: int | None) -> None:
        self.emit, self.limit = emit, limit
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise Inflated()
        self.emit(bytes(data))
        return len(data)


class LayerCheck:
    """A compressed layer's raw bytes as they are decoded, counted and hashed against its diff_id.

    For the air-gapped side: a layer carried exactly as its registry serves it is decoded on its way
    into docker (or beside containerd's import), and must unpack to the diff_id its config names,
    to the byte count bundle.json gives, and no further: a layer that inflates past it is refused
    as soon as it does.
    """

    def __init__(self, name: str, diff_id: str, size: int, emit: Callable[[bytes], None] | None = None) -> None:
        self.name, self.diff_id, self.size = name, diff_id, size
        self._emit, self.count = emit, 0
        self._hasher = hashlib.sha256()
        self._decoder = Decoder(self._take, limit=size)

    def _take(self, data: bytes) -> None:
        self._hasher.update(data)
        self.count += len(data)
        if self._emit is not None:
            self._emit(data)

    def feed(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
        except Inflated:
            raise IntegrityError(f"member {self.name}: unpacks to more than the {self.size} bytes bundle.json "
                                 "gives its layer") from None
        except Undecodable as exc:
            raise IntegrityError(f"member {self.name}: {exc}") from None

    def finish(self) -> None:
        try:
            self._decoder.finish()
        except Undecodable as exc:
            raise IntegrityError(f"member {self.name}: {exc}") from None
        found = "sha256:" + self._hasher.hexdigest()
        if self.count != self.size or found != self.diff_id:
            raise IntegrityError(f"member {self.name}: unpacks to {self.count} bytes, sha256 {found[:19]}.., not "
                                 f"the layer {self.diff_id[:19]}.. of {self.size} bytes its image names")


def checked_beside(chunks: Iterable[bytes], check: LayerCheck) -> Iterator[bytes]:
    """``chunks`` as they are, while ``check`` decodes them on a thread of its own (a second core, so
    that decoding overlaps reading the bundle); its verdict is raised once the chunks are through."""
    pending: queue.Queue = queue.Queue(maxsize=8)
    failed: list[BaseException] = []

    def work() -> None:
        while (chunk := pending.get()) is not None:
            if failed:
                continue   # keep taking chunks, so that the reader never waits on a full queue
            try:
                check.feed(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised by the reader
                failed.append(exc)
        if not failed:
            try:
                check.finish()
            except BaseException as exc:  # noqa: BLE001 - raised by the reader
                failed.append(exc)

    worker = threading.Thread(target=work, name="layer-check", daemon=True)
    worker.start()
    try:
        for chunk in chunks:
            if failed:
                break
            pending.put(chunk)
            yield chunk
    finally:
        pending.put(None)
        worker.join()
    if failed:
        raise failed[0]
