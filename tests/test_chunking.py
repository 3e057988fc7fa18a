"""Chunk indexes (build/chunking.py): a layer's chunks found once, while it is fetched, kept in the
cache and checked before a delta reads them; the patch made from them, or while the rebuilt layer
arrives, is the patch made by chunking both layers again, byte for byte.

The last two tests build through the test bed's registry: an index that is damaged, or that was
made from another layer, is made again from the layer, and the delta is the same.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
from pathlib import Path

import pytest

from bundler import cli
from bundler.build.chunking import (
    AVERAGE_CHUNK,
    INDEX_KEY,
    BaseFile,
    ChunkWriter,
    base_from_index,
    check_index,
    index_base,
    index_file,
    make_patch,
    make_patch_from_index,
    read_index,
)
from bundler.format.archive import load_head
from bundler.format.patch import apply_patch


def _diff_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def layers() -> tuple[bytes, bytes]:
    """A base of 3 MiB (text-like runs and random runs) and a rebuild of it: some runs replaced, one
    inserted, one dropped."""
    rng = random.Random(28)
    runs = [rng.randbytes(rng.randrange(1000, 40000)) if n % 2 else
            b"".join(b"line %d of file %d\n" % (i, n) for i in range(rng.randrange(50, 2000))) for n in range(200)]
    new = list(runs)
    for n in range(0, 200, 37):
        new[n] = rng.randbytes(len(runs[n]))
    new.insert(101, rng.randbytes(5000))
    del new[150]
    return b"".join(runs), b"".join(new)


def _index(data: bytes, folder: Path, name: str) -> Path:
    path = folder / name
    index_file(io.BytesIO(data), path, _diff_id(data))
    return path


def test_an_index_fed_in_any_pieces_is_the_index_of_the_whole_stream(layers, tmp_path):
    base, _ = layers
    whole = _index(base, tmp_path, "whole")
    pieces = ChunkWriter(tmp_path / "pieces")
    at, sizes = 0, [1, 1000, 70001, 3, 1 << 20]
    while at < len(base):
        size = sizes[at % len(sizes)]
        pieces.feed(base[at:at + size])
        at += size
    pieces.finish(_diff_id(base))
    assert (tmp_path / "pieces").read_bytes() == whole.read_bytes()
    assert check_index(whole, _diff_id(base), len(base)) == AVERAGE_CHUNK
    assert base_from_index(whole, len(base)).offsets == index_base(io.BytesIO(base), len(base)).offsets
    assert sum(length for _, length in read_index(whole)) == len(base)


def test_the_patch_from_two_indexes_is_the_patch_from_chunking_both_again(layers, tmp_path):
    base, new = layers
    base_file = tmp_path / "base"
    base_file.write_bytes(base)
    again, indexed = io.BytesIO(), io.BytesIO()
    make_patch(index_base(io.BytesIO(base), len(base)), io.BytesIO(new), again)
    stats = make_patch_from_index(base_from_index(_index(base, tmp_path, "b"), len(base)),
                                  read_index(_index(new, tmp_path, "n")), io.BytesIO(new), indexed)
    assert indexed.getvalue() == again.getvalue()
    assert stats.copied > len(new) * 0.7 and stats.literal and stats.copied + stats.literal == len(new)
    writer = ChunkWriter(tmp_path / "while", base=BaseFile(tmp_path / "b", _diff_id(base), len(base)),
                         patch=tmp_path / "patch")
    for at in range(0, len(new), 65536):   # as a fetch feeds it
        writer.feed(new[at:at + 65536])
    made = writer.finish(_diff_id(new))
    assert (tmp_path / "patch").read_bytes() == again.getvalue()
    assert (made.size, made.patch_size, made.literal) == (len(new), len(again.getvalue()), stats.literal)
    assert made.patch_sha256 == hashlib.sha256(again.getvalue()).hexdigest()
    assert (tmp_path / "while").read_bytes() == (tmp_path / "n").read_bytes()
    out = tmp_path / "rebuilt"
    apply_patch(io.BytesIO(indexed.getvalue()), base_file, base_size=len(base), out=out, size=len(new),
                diff_id=_diff_id(new), name="patch")
    assert out.read_bytes() == new


def test_a_layer_of_another_length_than_its_index_is_refused(layers, tmp_path):
    base, new = layers
    index = base_from_index(_index(base, tmp_path, "b"), len(base))
    chunks = _index(new, tmp_path, "n")
    for layer in (new[:-1], new + b"x"):
        with pytest.raises(ValueError):
            make_patch_from_index(index, read_index(chunks), io.BytesIO(layer), io.BytesIO())


def test_an_index_is_used_only_whole_and_for_the_layer_it_was_made_from(layers, tmp_path):
    base, new = layers
    path = _index(base, tmp_path, "b")
    good = path.read_bytes()
    assert check_index(path, _diff_id(base), len(base)) == AVERAGE_CHUNK
    assert check_index(path, _diff_id(new), len(base)) is None           # another layer's
    assert check_index(path, _diff_id(base), len(base) + 1) is None      # another size
    assert check_index(tmp_path / "absent", _diff_id(base), len(base)) is None
    for damaged in (good[:-1], good[:-20], good[:len(good) // 2], b"",
                    good[:1000] + bytes([good[1000] ^ 1]) + good[1001:],     # a record's key
                    good[:-40] + bytes([good[-40] ^ 1]) + good[-39:]):       # the trailer's diff_id
        path.write_bytes(damaged)
        assert check_index(path, _diff_id(base), len(base)) is None


# ---- through a real build ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def v1_cache(delta_updates, tmp_path_factory) -> dict:
    """A cache that built v1 of the delta test bed's image, and the layer a v2 delta patches against."""
    folder = tmp_path_factory.mktemp("chunks")
    cache, bundle = folder / "cache", folder / "v1.tar.zst"
    assert cli.main(["build", "--no-restorer", str(delta_updates["v1"]), "--cache", str(cache), "-o", str(bundle),
                     "-q"]) == 0
    image = load_head(bundle).images[0]
    return {"cache": cache, "bundle": bundle, "layers": image.layer_digests, "sizes": image.layer_sizes}


def _delta(delta_updates, v1_cache, cache: Path, out: Path) -> tuple:
    assert cli.main(["build", "--no-restorer", str(delta_updates["v2"]), "--cache", str(cache), "--since",
                     str(v1_cache["bundle"]), "-o", str(out), "-q"]) == 0
    head = load_head(out)
    (patch,) = head.delta.patches
    member = next(m for m in head.members if m.path == patch.member)
    return patch, member.sha256


def test_a_fetched_layer_leaves_its_index_and_a_delta_reads_it(delta_updates, delta_bundles, v1_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(v1_cache["cache"], cache)
    for diff_id, size in zip(v1_cache["layers"], v1_cache["sizes"]):
        path = cache / "chunks" / INDEX_KEY / diff_id.split(":")[1]
        assert check_index(path, diff_id, size) == AVERAGE_CHUNK
    patch, _ = _delta(delta_updates, v1_cache, cache, tmp_path / "d.tar.zst")
    assert patch.base == v1_cache["layers"][1]
    rebuilt = cache / "chunks" / INDEX_KEY / patch.layer.split(":")[1]
    assert check_index(rebuilt, patch.layer, patch.size) == AVERAGE_CHUNK   # the next update's base
    # the patched layer was kept whole, not compressed; a full build frames it then, and writes the
    # bundle a build from any other cache writes
    assert (cache / "blobs" / "sha256" / patch.layer.split(":")[1]).stat().st_size == patch.size
    assert cli.main(["build", "--no-restorer", str(delta_updates["v2"]), "--cache", str(cache), "-o",
                     str(tmp_path / "v2.tar.zst"), "-q"]) == 0
    assert (tmp_path / "v2.tar.zst").read_bytes() == delta_bundles["v2"].read_bytes()


@pytest.mark.parametrize("fault", ["damaged", "cut short", "another layer's"])
def test_a_bad_index_of_the_base_is_made_again_and_the_delta_is_the_same(delta_updates, v1_cache, tmp_path, fault):
    reference, wanted = _delta(delta_updates, v1_cache, _copy(v1_cache, tmp_path / "ref"), tmp_path / "ref.tar.zst")
    cache = _copy(v1_cache, tmp_path / "cache")
    base = reference.base
    path = cache / "chunks" / INDEX_KEY / base.split(":")[1]
    good = path.read_bytes()
    if fault == "damaged":
        path.write_bytes(good[:500] + bytes([good[500] ^ 0x40]) + good[501:])
    elif fault == "cut short":
        path.write_bytes(good[:len(good) // 2])
    else:   # a whole, valid index, but of the image's first layer
        shutil.copyfile(cache / "chunks" / INDEX_KEY / v1_cache["layers"][0].split(":")[1], path)
    assert check_index(path, base, reference.base_size) is None
    patch, sha256 = _delta(delta_updates, v1_cache, cache, tmp_path / "d.tar.zst")
    assert (patch, sha256) == (reference, wanted)
    assert path.read_bytes() == good     # made again from the layer


def _copy(v1_cache: dict, target: Path) -> Path:
    shutil.copytree(v1_cache["cache"], target)
    return target



def test_a_base_beyond_max_chunks_is_indexed_by_runs_of_chunks_and_patched_alike(layers, tmp_path, monkeypatch):
    """A base of more than MAX_CHUNKS chunks (512 MiB at 2 KiB; here, 3 MiB against 256) is looked up
    by runs of its chunks, from the same index file of 2 KiB chunks: memory stays bounded."""
    import bundler.build.chunking as chunking
    monkeypatch.setattr(chunking, "MAX_CHUNKS", 256)
    base, new = layers
    index = base_from_index(_index(base, tmp_path, "b"), len(base))
    assert index.average == 8 * AVERAGE_CHUNK and len(index.offsets) < 2 * 256
    assert index.offsets == index_base(io.BytesIO(base), len(base)).offsets
    again, indexed = io.BytesIO(), io.BytesIO()
    make_patch(index, io.BytesIO(new), again)
    stats = make_patch_from_index(index, read_index(_index(new, tmp_path, "n")), io.BytesIO(new), indexed)
    assert indexed.getvalue() == again.getvalue()
    assert stats.copied > len(new) * 0.5
    base_file, out = tmp_path / "base", tmp_path / "rebuilt"
    base_file.write_bytes(base)
    apply_patch(io.BytesIO(indexed.getvalue()), base_file, base_size=len(base), out=out, size=len(new),
                diff_id=_diff_id(new), name="patch")
    assert out.read_bytes() == new
