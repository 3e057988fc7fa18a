"""A layer's bytes into the cache: gunzipped as they download, checked against both digests,
compressed into the zstd frame the bundle will carry, and resumable after an interruption.

Used by images.py for layers from a registry, and for layers taken from a local docker engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from bundler.build.cache import Cache
from bundler.build.chunking import INDEX_KEY, BaseFile, ChunkWriter
from bundler.build.delta import keep_patch
from bundler.build.images.layerscan import SCAN_VERSION, LayerScan
from bundler.build.pack import MAX_WORKERS
from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.files import CHUNK, disk_error, removed_on_failure
from bundler.format.decode import Decoder, Inflated, Undecodable
from bundler.net.endpoints import MISMATCH, RESET, EndpointError
from bundler.oci.registry import Descriptor
from bundler.parallel import Stopped


class LayerWriter:
    """sha256 and write (and zstd, when given a compressor) on a thread of their own, so that one
    large layer uses every core: the download thread receives and gunzips, this one hashes and
    compresses (with zstd's own workers). The queue bounds memory."""

    def __init__(self, path: Path | None, compress: zstandard.ZstdCompressionObj | None,
                 chunks: ChunkWriter | None = None) -> None:
        self.scan = LayerScan()   # what the SBOM lists, found in the same pass
        self.chunks = chunks      # the layer's chunk index (chunking.py), found beside the rest
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._hasher, self._frame_hasher = hashlib.sha256(), hashlib.sha256()
        self._compress = compress
        self.size = 0
        self._error: OSError | None = None
        # no path: the raw bytes are only hashed (the layer is kept as its registry sent it)
        self._file = open(path, "wb") if path is not None else None  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._run, name="layer-writer", daemon=True)
        self._thread.start()

    def _out(self, data: bytes) -> None:
        if data and self._file is not None:
            self._frame_hasher.update(data)
            self._file.write(data)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    if self.chunks is not None:
                        self.chunks.feed(item)
                    self._hasher.update(item)
                    self.size += len(item)
                    self._out(self._compress.compress(item) if self._compress else item)
                    self.scan.feed(item)
                except OSError as exc:
                    self._error = exc
        try:
            if self._error is None and self._compress is not None:
                self._out(self._compress.flush())
        except OSError as exc:
            self._error = exc
        try:
            if self._file is not None:
                self._file.close()   # flushes: a full disk shows here too
        except OSError as exc:
            self._error = self._error or exc

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> tuple[str, str]:
        """Wait for every byte; the sha256 of the raw bytes, and of what was written (the frame)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hasher.hexdigest(), self._frame_hasher.hexdigest()

    def abandon(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.chunks is not None:
            self.chunks.abandon()
            self.chunks.path.unlink(missing_ok=True)


BOMB_RATIO = 200        # decompressed bytes per compressed byte beyond which decoding waits for the digest
BOMB_FLOOR = 256 << 20  # nor before this much has come out


STOP_POLL = 0.1         # seconds between looks at the stop event while waiting for the compressor

FRAME, WHOLE, HASH = "frame", "whole", "hash"   # what becomes of a layer's raw bytes (LayerSink)


class LayerDecoder(Decoder):
    """A layer that does not decode is a mismatch of the endpoint that sent it, like wrong bytes."""

    def feed(self, data: bytes) -> None:
        try:
            super().feed(data)
        except Undecodable as exc:
            raise EndpointError(MISMATCH, str(exc)) from None

    def finish(self) -> None:
        try:
            super().finish()
        except Undecodable as exc:
            raise EndpointError(MISMATCH, str(exc)) from None


class LayerSink:
    """Compressed bytes in, a verified layer in the cache out; resumable.

    The raw (uncompressed) bytes are always checked against the diff_id; ``raw`` says what else:
    FRAME compresses them into the zstd frame the bundle carries, WHOLE keeps them as they are (a
    layer a delta may carry as a patch: framed only if the patch is not worth it), HASH keeps
    nothing. ``keep_blob``
    keeps the compressed bytes too, exactly as the registry sent them, under their own digest (an
    image carried exact). The compressed bytes go to ``partial/<digest>`` so that an interrupted
    download can be resumed: the partial file is replayed through the decoder, then the rest is
    asked for with Range.

    A ``deferred`` frame is one whose download found the compressor busy: it only downloads (into
    the partial file, as every download does) and is decoded from that file, checked and framed in
    ``finish``, once it holds the compressor. So no layer waits on disk as raw bytes: what a build
    holds beyond its frames is the compressed bytes of the layers in flight, never a raw copy of
    them (a CUDA layer's raw bytes are 2 to 4 times its gzip).
    """

    def __init__(self, frames: LayerFrames, blob: Descriptor, diff_id: str, stop: threading.Event,
                 raw: str = FRAME, keep_blob: bool = False, *, deferred: bool = False,
                 base: BaseFile | None = None) -> None:
        self.frames, self.blob, self.diff_id, self.stop = frames, blob, diff_id, stop
        self.raw, self.keep_blob, self.deferred, self.base = raw, keep_blob, deferred and raw == FRAME, base
        self.cache = frames.cache
        self.partial_path = self.cache.partial(blob.digest)
        self.out_path = self.cache.temp(diff_id) if raw != HASH else None
        self._reset_state()

    def _reset_state(self) -> None:
        self.offset = 0
        self.held_back = self.deferred  # decoding waits for the digest (see _take), or for the compressor
        self.compressed = hashlib.sha256()
        self._new_output()

    def _new_output(self, *, holding: bool | None = None) -> None:
        """A writer for the raw bytes: framing them when this sink holds the compressor (a streaming
        sink does from the start, a deferred one only in ``finish``), keeping them WHOLE, or hashing
        them only. Bytes that are kept are chunked on the way (chunking.py: a delta's base, or its
        rebuilt layer, later); given the base of a delta, its patch is made in the same pass."""
        framing = self.raw == FRAME and (not self.deferred if holding is None else holding)
        keeping = framing or self.raw == WHOLE
        chunks = ChunkWriter(self.cache.temp(f"chunks-{self.diff_id}"), base=self.base,
                             patch=self.cache.temp("patch") if self.base else None) if keeping else None
        self.out = LayerWriter(self.out_path if keeping else None, self.frames.compressobj() if framing else None,
                               chunks)
        # the writer's own method, not a closure over self: a cycle would keep the compressor (and
        # its 64 MiB window) alive until the garbage collector ran
        self.decoder = LayerDecoder(self.out.write)

    def restart(self) -> None:
        self.out.abandon()
        self.partial_path.unlink(missing_ok=True)
        self._reset_state()

    def _take(self, chunk: bytes) -> None:
        if self.stop.is_set():
            raise Stopped()
        self.compressed.update(chunk)
        self.offset += len(chunk)
        if self.offset > self.blob.size:
            raise EndpointError(MISMATCH, f"sent more than the {self.blob.size} bytes of {self.blob.digest[:19]}..")
        if self.held_back:
            return
        # Real layers inflate 2 to 10 times. One that goes far beyond is decoded only once its digest
        # has matched, from the partial file: a mirror's decompression bomb then costs a download,
        # not hours of CPU, and a real layer of zeros is only decoded later.
        self.decoder.allow(max(BOMB_RATIO * self.offset, BOMB_FLOOR))
        try:
            self.decoder.feed(chunk)
        except Inflated:
            self.held_back = True
            self.out.abandon()
            self._new_output()

    def _decode_partial(self) -> None:
        """The whole layer from the partial file, its digest checked already."""
        try:
            with open(self.partial_path, "rb") as partial:
                while chunk := partial.read(CHUNK):
                    if self.stop.is_set():
                        raise Stopped()
                    self.decoder.feed(chunk)
        except OSError as exc:
            raise disk_error(exc, f"reading layer {self.blob.digest} from the cache {self.cache.root}") from None

    def replay(self) -> int:
        """Feed what an earlier, interrupted download left; returns how many bytes that was."""
        try:
            with open(self.partial_path, "rb") as partial:
                while chunk := partial.read(CHUNK):
                    self._take(chunk)
        except FileNotFoundError:
            return 0
        except EndpointError:
            self.restart()
        return self.offset

    def download(self, chunks: Iterator[bytes], on_bytes: Callable[[int], None]) -> None:
        try:
            with open(self.partial_path, "ab") as partial:
                for chunk in chunks:
                    self._take(chunk)
                    partial.write(chunk)
                    on_bytes(len(chunk))
        except EndpointError as exc:
            if exc.kind == MISMATCH:   # what came so far is suspect too: the next endpoint starts afresh
                self.restart()
            raise
        except OSError as exc:
            raise disk_error(exc, f"writing layer {self.blob.digest} to the cache {self.cache.root}") from None

    def finish(self) -> int:
        """Check both digests and commit; a mismatch discards everything for a fresh start."""
        if self.offset < self.blob.size:
            raise EndpointError(RESET, f"body ended after {self.offset} of {self.blob.size} bytes")
        compressed = Digest.from_hex(self.compressed.hexdigest())
        if compressed != self.blob.digest:
            self.restart()
            raise EndpointError(MISMATCH, f"layer {self.blob.digest[:19]}.. arrived as {compressed[:19]}..")
        try:
            with self.frames.slot(stop=self.stop) if self.deferred else contextlib.nullcontext():
                if self.deferred:
                    self.out.abandon()
                    self._new_output(holding=True)
                try:
                    if self.held_back:
                        self._decode_partial()
                    self.decoder.finish()
                except EndpointError:
                    self.restart()
                    raise
                raw, frame = self.out.finish()
        except OSError as exc:
            raise disk_error(exc, f"writing layer {self.blob.digest} to the cache {self.cache.root}") from None
        uncompressed = Digest.from_hex(raw)
        if uncompressed != self.diff_id:
            self.restart()
            raise IntegrityError(f"layer {self.blob.digest} matches its digest but unpacks to {uncompressed}, "
                                 f"not the diff_id {self.diff_id} its image config names")
        if self.raw == FRAME:
            self.cache.commit_frame(self.out_path, self.frames.key, self.diff_id, size=self.out.size,
                                    frame_sha256=frame)
        elif self.raw == WHOLE:
            self.cache.commit(self.out_path, self.diff_id)
        if self.out.chunks is not None:
            self._commit_chunks(self.out.chunks)
        self.frames.keep_findings(self.diff_id, self.out.scan)
        if self.keep_blob:
            self.cache.commit(self.partial_path, self.blob.digest)
            self.frames.blob_checked(self.blob.digest, self.diff_id, self.out.size)
        else:
            self.partial_path.unlink(missing_ok=True)
        return self.out.size

    def _commit_chunks(self, chunks: ChunkWriter) -> None:
        try:
            made = chunks.finish(self.diff_id)
        except OSError as exc:
            chunks.abandon()
            raise disk_error(exc, f"writing the chunk index of layer {self.diff_id} to the cache "
                                  f"{self.cache.root}") from None
        self.cache.commit_chunks(chunks.path, INDEX_KEY, self.diff_id)
        if self.base is not None and chunks.patch is not None:
            keep_patch(self.cache, chunks.patch, layer=self.diff_id, base=self.base.diff_id,
                       base_size=self.base.size, made=made)
        self.out.chunks = None

    def close(self) -> None:
        self.out.abandon()
        if self.out_path is not None:
            self.out_path.unlink(missing_ok=True)


WINDOW_LOG = 26          # 64 MiB, with long-distance matching: 2% larger than 128 MiB for half the memory of
                         # every compressor and decompressor; any zstd -d reads it
SMALL_BUNDLE_LEVEL = 9   # from this level on (the small bundle) size counts more than memory: a window of
SMALL_BUNDLE_WINDOW_LOG = 27   # 128 MiB, 2.2% smaller at level 9 for 70 MiB more; the largest that a stock
                               # `zstd -d` (and python-zstandard's default) decodes without --long or --memory
JOB_SIZE = 8 << 20       # per worker: zstd's default job (4 windows, 512 MiB here) would cost GBs of memory
OVERLAP_LOG = 7          # each job sees the last half window of the one before: 0.7% larger output at most


def frame_compressor(level: int, workers: int | None = None) -> zstandard.ZstdCompressor:
    """zstd with ``workers`` threads (default: one per core, at most MAX_WORKERS). With at least one
    worker the output does not depend on how many there are, so bundles are byte-identical across
    machines."""
    workers = workers if workers is not None else min(MAX_WORKERS, os.cpu_count() or 1)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=window_log(level), enable_ldm=1, write_checksum=1, threads=max(1, workers),
        job_size=JOB_SIZE, overlap_log=OVERLAP_LOG)
    return zstandard.ZstdCompressor(compression_params=params)


def window_log(level: int) -> int:
    """The window of a layer's frame at ``level``: never beyond what a decoder takes without flags."""
    return SMALL_BUNDLE_WINDOW_LOG if level >= SMALL_BUNDLE_LEVEL else WINDOW_LOG


def frame_key(level: int) -> str:
    """Names the parameters a cached frame was made with: frames made otherwise are not reused."""
    return f"zstd{zstandard.ZSTD_VERSION[0]}-l{level}-w{window_log(level)}-ldm-j{JOB_SIZE >> 20}-o{OVERLAP_LOG}"


class LayerFrames:
    """The cache's zstd frames of layers at one level, and the one owner of what guards them.

    A layer gunzipped as it downloads is compressed in the same pass, so that packing only copies
    its frame: the bundle's zstd runs while the network and gunzip do, and a rebuild from a warm
    cache copies instead of compressing again. Two things guard the frames: each layer's lock
    across processes (``layer``: two builds sharing the cache make a frame once, and never see one
    half made), and the compressor ``slot`` in this process (one compressor at a time, using every
    core, keeps memory bounded at one window; a layer that finds it busy waits as its download, the
    partial file, and is framed from it when it is free).
    """

    def __init__(self, cache: Cache, level: int) -> None:
        self.cache, self.level = cache, level
        self.key = frame_key(level)
        self._slot = threading.Semaphore(1)

    def compressobj(self) -> zstandard.ZstdCompressionObj:
        """The next frame's compressor, for the holder of ``slot``."""
        return frame_compressor(self.level).compressobj()

    @contextlib.contextmanager
    def layer(self, diff_id: str) -> Iterator[None]:
        with self.cache.lock(f"layer-{Digest(diff_id).hex}"):
            yield

    @contextlib.contextmanager
    def slot(self, wait: bool = True, stop: threading.Event | None = None) -> Iterator[bool]:
        """The compressor, if it is free (or once it is, when ``wait``): yields whether it was taken.
        Waiting ends with Stopped once ``stop`` is set: the run is over, and its caller waits for
        every worker only a moment (parallel.GRACE)."""
        if wait and stop is not None:
            while not (taken := self._slot.acquire(timeout=STOP_POLL)):
                if stop.is_set():
                    raise Stopped()
        else:
            taken = self._slot.acquire(blocking=wait)
        try:
            yield taken
        finally:
            if taken:
                self._slot.release()

    def has(self, diff_id: str) -> bool:
        return self.cache.frame(self.key, diff_id) is not None

    def blob_checked(self, digest: str, diff_id: str, size: int) -> None:
        """Note that the cached compressed blob ``digest`` unpacks to ``diff_id`` (``size`` bytes)."""
        self.cache.set_meta("layer", digest, {"diff_id": diff_id, "size": size})

    def has_blob(self, digest: str, diff_id: str) -> int | None:
        """The raw size of a layer cached as its compressed blob, once checked against ``diff_id``."""
        meta = self.cache.meta("layer", digest)
        if meta is None or meta.get("diff_id") != diff_id or not self.cache.has(digest):
            return None
        return int(meta["size"])

    def size(self, diff_id: str) -> int | None:
        """The layer's size if the cache holds it (as a frame made with these parameters, or whole)."""
        meta = self.cache.frame(self.key, diff_id)
        if meta is not None:
            return int(meta["size"])
        return self.cache.size(diff_id) if self.cache.has(diff_id) else None

    def from_whole(self, diff_id: str, stop: threading.Event | None = None) -> None:
        """Compress a whole layer of the cache into its frame (when the slot is free), then drop the whole copy."""
        with self.slot(), open(self.cache.path(diff_id), "rb") as source:
            self._make(diff_id, source, stop, checked=diff_id in self.cache.fresh)
        self.cache.path(diff_id).unlink(missing_ok=True)

    def from_other(self, diff_id: str, stop: threading.Event | None = None) -> bool:
        """Make this level's frame from a frame of another level, if the cache has one: no download."""
        for key in self.cache.frame_keys(diff_id):
            if key != self.key:
                with self.slot(), zstandard.ZstdDecompressor().stream_reader(
                        open(self.cache.frame_path(key, diff_id), "rb"), closefd=True) as source:
                    self._make(diff_id, source, stop)
                return True
        return False

    def _make(self, diff_id: str, source: object, stop: threading.Event | None, checked: bool = False) -> None:
        """Compress ``source`` (the layer's raw bytes) into a cached frame, checking them against the
        diff_id unless they were ``checked`` on their way into the cache by this process."""
        cache = self.cache
        raw = None if checked else hashlib.sha256()
        compress, framed, size = self.compressobj(), hashlib.sha256(), 0
        scan = LayerScan() if cache.meta(SCAN_VERSION, diff_id) is None else None
        with removed_on_failure(cache.temp(diff_id), f"compressing layer {diff_id} in the cache {cache.root}") as tmp:
            with open(tmp, "wb") as out:
                while chunk := source.read(CHUNK):
                    if stop is not None and stop.is_set():
                        raise Stopped()
                    if raw is not None:
                        raw.update(chunk)
                    if scan is not None:
                        scan.feed(chunk)
                    size += len(chunk)
                    data = compress.compress(chunk)
                    framed.update(data)
                    out.write(data)
                data = compress.flush()
                framed.update(data)
                out.write(data)
            if raw is not None and Digest.from_hex(raw.hexdigest()) != diff_id:
                raise IntegrityError(f"layer {diff_id} in the cache {cache.root} is damaged (it unpacks to "
                                     f"sha256:{raw.hexdigest()}); remove the cache folder and build again")
        cache.commit_frame(tmp, self.key, diff_id, size=size, frame_sha256=framed.hexdigest())
        if scan is not None:
            self.keep_findings(diff_id, scan)

    def keep_findings(self, diff_id: str, scan: LayerScan) -> None:
        """What the scan found in a layer whose bytes matched ``diff_id``, kept in the cache beside it."""
        self.cache.set_meta(SCAN_VERSION, diff_id, scan.findings())

    def findings(self, diff_id: str, stop: threading.Event | None = None) -> dict:
        """What a cached layer holds (layerscan.py): kept when it was first decoded, or found now by
        decoding its frame, for a cache that an earlier bundler filled."""
        found = self.cache.meta(SCAN_VERSION, diff_id)
        if found is not None:
            return found
        scan = LayerScan()
        meta = self.cache.frame(self.key, diff_id)
        path = self.cache.frame_path(self.key, diff_id) if meta is not None else self.cache.path(diff_id)
        raw = hashlib.sha256()
        with self.layer(diff_id), open(path, "rb") as handle:
            source = zstandard.ZstdDecompressor().stream_reader(handle) if meta is not None else handle
            while chunk := source.read(CHUNK):
                if stop is not None and stop.is_set():
                    raise Stopped()
                raw.update(chunk)
                scan.feed(chunk)
        if Digest.from_hex(raw.hexdigest()) != diff_id:
            raise IntegrityError(f"layer {diff_id} in the cache {self.cache.root} is damaged (it unpacks to "
                                 f"sha256:{raw.hexdigest()}); remove the cache folder and build again")
        self.keep_findings(diff_id, scan)
        return scan.findings()
