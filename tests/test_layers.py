"""The layer decoder: bounded pieces however far a layer inflates, and streams that do not decode
reported as the sending endpoint's fault."""

from __future__ import annotations

import gzip
import os
import tracemalloc

import pytest
import zstandard

from bundler.build.images.layers import LayerDecoder as Decoder
from bundler.net.endpoints import MISMATCH, EndpointError


def zeros_zstd(total: int) -> bytes:
    """``total`` zero bytes as two zstd frames, made without holding them."""
    frames = b""
    for part in (total // 2, total - total // 2):
        compress = zstandard.ZstdCompressor(level=3).compressobj()
        block = b"\0" * (16 << 20)
        frames += b"".join(compress.compress(block) for _ in range(part // len(block))) + compress.flush()
    return frames


def decode(chunks: list[bytes]) -> tuple[int, int, int]:
    """Total bytes, largest piece, peak Python memory while decoding."""
    sizes: list[int] = []
    decoder = Decoder(lambda piece: sizes.append(len(piece)))
    tracemalloc.start()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return sum(sizes), max(sizes), peak


def test_a_zstd_bomb_comes_out_in_bounded_pieces():
    bomb = zeros_zstd(512 << 20)
    assert len(bomb) < 64 << 10          # 512 MiB in a few KiB: the whole bomb arrives in one chunk
    total, largest, peak = decode([bomb])
    assert total == 512 << 20
    assert largest <= Decoder.PIECE
    assert peak < 8 << 20, f"decoding held {peak} bytes"


def test_a_gzip_bomb_comes_out_in_bounded_pieces():
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    total, largest, peak = decode([bomb[:1000], bomb[1000:]])
    assert total == 64 << 20 and largest <= Decoder.PIECE
    assert peak < 8 << 20, f"decoding held {peak} bytes"


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_stream_that_does_not_decode_is_a_mismatch(kind):
    data = os.urandom(200_000) + b"layer" * 20_000
    packed = bytearray(gzip.compress(data) if kind == "gzip" else zstandard.ZstdCompressor(write_checksum=True)
                       .compress(data))
    packed[len(packed) // 2] ^= 0xFF
    decoder = Decoder(lambda piece: None)
    with pytest.raises(EndpointError) as caught:
        decoder.feed(bytes(packed))
        decoder.finish()
    assert caught.value.kind == MISMATCH and f"not valid {kind}" in str(caught.value)


def test_a_gzip_stream_cut_short_is_a_mismatch():
    packed = gzip.compress(os.urandom(100_000))
    decoder = Decoder(lambda piece: None)
    decoder.feed(packed[:-100])
    with pytest.raises(EndpointError, match="ends before its end marker"):
        decoder.finish()


def test_several_gzip_members_and_plain_tar_pass_whole():
    data = os.urandom(300_000)
    for packed in (gzip.compress(data[:100_000]) + gzip.compress(data[100_000:]), data):
        out: list[bytes] = []
        decoder = Decoder(out.append)
        for i in range(0, len(packed), 7_000):
            decoder.feed(packed[i:i + 7_000])
        decoder.finish()
        assert b"".join(out) == data


def test_a_finished_layer_frees_its_compressor_without_the_garbage_collector(tmp_path):
    # each compressor holds a 64 MiB window: one kept alive by a reference cycle until the collector
    # happens to run put 100 MiB on the peak RSS of a three-image pull
    import gc
    import hashlib
    import threading
    import weakref

    from bundler.build.cache import Cache
    from bundler.build.images.layers import LayerFrames, LayerSink
    from bundler.oci.registry import Descriptor

    raw = os.urandom(50_000) + b"layer" * 50_000
    packed = gzip.compress(raw)
    blob = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + hashlib.sha256(packed).hexdigest(),
                      len(packed))
    gc.disable()
    try:
        sink = LayerSink(LayerFrames(Cache(tmp_path / "cache"), 3), blob, "sha256:" + hashlib.sha256(raw).hexdigest(),
                         threading.Event())
        sink.download(iter([packed[:9_000], packed[9_000:]]), lambda n: None)
        assert sink.finish() == len(raw)
        sink.close()
        writer = weakref.ref(sink.out)
        del sink
        assert writer() is None, "the layer writer outlived its sink"
    finally:
        gc.enable()


def sink_for(tmp_path, packed: bytes, raw_digest: str, digest: str | None = None, *, deferred: bool = False):
    import hashlib
    import threading

    from bundler.build.cache import Cache
    from bundler.build.images.layers import LayerFrames, LayerSink
    from bundler.oci.registry import Descriptor

    blob = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd",
                      digest or "sha256:" + hashlib.sha256(packed).hexdigest(), len(packed))
    return LayerSink(LayerFrames(Cache(tmp_path / "cache"), 3), blob, raw_digest, threading.Event(),
                     deferred=deferred)


def test_a_mirrors_bomb_is_not_decoded_past_the_limit_before_its_digest_fails(tmp_path, monkeypatch):
    from bundler.build.images import layers
    monkeypatch.setattr(layers, "BOMB_FLOOR", 16 << 20)
    bomb = zeros_zstd(4 << 30)   # 4 GiB of zeros in a few KiB, sent in place of a layer of that size
    sink = sink_for(tmp_path, bomb, "sha256:" + "0" * 64, digest="sha256:" + "1" * 64)
    sink.download(iter([bomb]), lambda n: None)
    assert sink.held_back and sink.out.size == 0
    with pytest.raises(EndpointError) as caught:
        sink.finish()
    assert caught.value.kind == MISMATCH and "arrived as" in str(caught.value)
    sink.close()


def test_a_real_layer_that_inflates_far_is_decoded_once_its_digest_matched(tmp_path, monkeypatch):
    import hashlib

    from bundler.build.images import layers
    monkeypatch.setattr(layers, "BOMB_FLOOR", 16 << 20)
    zeros = zeros_zstd(256 << 20)
    raw = hashlib.sha256()
    block = b"\0" * (16 << 20)
    for _ in range(16):
        raw.update(block)
    sink = sink_for(tmp_path, zeros, "sha256:" + raw.hexdigest())
    sink.download(iter([zeros[:100], zeros[100:]]), lambda n: None)
    assert sink.held_back
    assert sink.finish() == 256 << 20
    sink.close()


def test_a_layer_that_waits_for_the_compressor_keeps_no_raw_copy_and_is_framed_once_it_is_free(tmp_path):
    import hashlib
    import threading

    raw = os.urandom(3 << 20) + b"text of a header file\n" * 100_000
    packed = gzip.compress(raw, compresslevel=1)
    sink = sink_for(tmp_path, packed, "sha256:" + hashlib.sha256(raw).hexdigest(), deferred=True)
    sink.download(iter([packed[:100_000], packed[100_000:]]), lambda n: None)
    # downloaded: the compressed bytes wait in the partial file, nothing was decoded or written raw
    assert sink.partial_path.stat().st_size == len(packed)
    assert sink.out.size == 0 and sink.out_path.stat().st_size == 0
    done: list[int] = []
    with sink.frames.slot():   # another layer holds the compressor: finish waits for it
        waiter = threading.Thread(target=lambda: done.append(sink.finish()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not done
    waiter.join(30)
    assert done == [len(raw)]
    framed = sink.cache.frame_path(sink.frames.key, sink.diff_id)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(framed.read_bytes()) == raw
    assert not sink.partial_path.exists()
    sink.close()


def test_a_deferred_layer_with_a_wrong_digest_is_never_decoded(tmp_path):
    raw = b"layer bytes\n" * 10_000
    packed = gzip.compress(raw)
    sink = sink_for(tmp_path, packed, "sha256:" + "0" * 64, digest="sha256:" + "1" * 64, deferred=True)
    sink.download(iter([packed]), lambda n: None)
    with pytest.raises(EndpointError) as caught:
        sink.finish()
    assert caught.value.kind == MISMATCH and "arrived as" in str(caught.value)
    assert sink.out.size == 0 and not sink.partial_path.exists()
    sink.close()


def test_a_layer_waiting_for_the_compressor_stops_with_the_run(tmp_path):
    import gzip as gz
    import hashlib
    import threading
    import time

    from bundler.parallel import Stopped

    raw = b"layer bytes\n" * 10_000
    packed = gz.compress(raw)
    sink = sink_for(tmp_path, packed, "sha256:" + hashlib.sha256(raw).hexdigest(), deferred=True)
    sink.download(iter([packed]), lambda n: None)
    caught: list[BaseException] = []

    def finish() -> None:
        try:
            sink.finish()
        except BaseException as exc:  # noqa: BLE001 - checked below
            caught.append(exc)
    with sink.frames.slot():   # held by another layer that will not let go in time
        waiter = threading.Thread(target=finish)
        waiter.start()
        time.sleep(0.3)
        started = time.monotonic()
        sink.stop.set()
        waiter.join(5)
        assert not waiter.is_alive() and time.monotonic() - started < 1.0
    assert len(caught) == 1 and isinstance(caught[0], Stopped)
    sink.close()
