"""Damaged and hostile bundles: verify exits 3 every time, and restore loads and installs nothing."""

from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

import pytest
import zstandard

from bundler import cli
from bundler.format.archive import read_head
from testbed import bundles

SEED = 20261123


def damaged_copies(source: Path, folder: Path, flips: int, cuts: int, seed: int) -> list[tuple[str, Path]]:
    """Copies of ``source`` with one byte flipped, or cut short, at seeded random offsets."""
    rng = random.Random(seed)
    data = source.read_bytes()
    cases = []
    for number in range(flips + cuts):
        damaged = bytearray(data)
        offset = rng.randrange(len(data))
        if number < flips:
            damaged[offset] ^= 1 << rng.randrange(8)
            label = f"flip bit at {offset}"
        else:
            damaged = damaged[:offset]
            label = f"cut at {offset}"
        path = folder / f"case{number:03d}.tar.zst"
        path.write_bytes(bytes(damaged))
        cases.append((label, path))
    return cases


def decodes_unchanged(path: Path, original: bytes) -> bool:
    """Whether zstd itself decodes the damaged file to exactly the original's content.

    A few bits of the zstd format change nothing that is decoded (a flip there leaves every member
    byte for byte as it was, and the checksums agree): such a copy is not damaged content.
    """
    result = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
    return result.returncode == 0 and result.stdout == original


def test_corruption_sweep_verify_exits_3_every_time(built_bundle, tmp_path, capsys):
    original = subprocess.run(["zstd", "-dc", str(built_bundle)], capture_output=True, check=True).stdout
    cases = damaged_copies(built_bundle, tmp_path, flips=45, cuts=15, seed=SEED)
    failures, harmless = [], 0
    for label, path in cases:
        code = cli.main(["verify", str(path)])
        err = capsys.readouterr().err
        if code == 0 and decodes_unchanged(path, original):
            harmless += 1
            continue
        if code != 3 or err.count("\n") != 1 or "Traceback" in err:
            failures.append(f"{label}: exit {code}: {err.strip()}")
    print(f"corruption sweep: {len(cases)} damaged copies of a {built_bundle.stat().st_size} byte bundle; "
          f"{len(cases) - harmless} exit 3, {harmless} decode to the original content unchanged")
    assert harmless <= 3, "too many flips went unnoticed to be format slack"
    assert not failures, "\n".join(failures)


def test_corruption_sweep_of_one_volume_of_a_split_bundle(testbed_profile, tmp_path, capsys):
    out = tmp_path / "split.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "--split", "1M", "-q"]) == 0
    volumes = sorted(tmp_path.glob("split.tar.zst.[0-9][0-9][0-9]"))
    rng = random.Random(SEED + 1)
    failures = []
    for number in range(20):
        victim = volumes[rng.randrange(len(volumes))]
        original = victim.read_bytes()
        offset = rng.randrange(len(original))
        damaged = bytearray(original)
        if number % 4 == 3:
            damaged = damaged[:offset]
        else:
            damaged[offset] ^= 0x10
        victim.write_bytes(bytes(damaged))
        try:
            code = cli.main(["verify", str(volumes[0])])
            err = capsys.readouterr().err
            if code != 3:
                failures.append(f"{victim.name} at {offset}: exit {code}: {err.strip()}")
            elif victim.name not in err and "member" not in err:
                failures.append(f"{victim.name} at {offset}: the error names neither the volume nor a member: {err}")
        finally:
            victim.write_bytes(original)
    assert not failures, "\n".join(failures)


def test_corruption_sweep_restore_loads_no_image_and_installs_no_wheel(dockerd, built_bundle, python310, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    head, _ = read_head(built_bundle)
    ids = [image["id"] for image in head["images"]]
    for image_id in ids:
        dockerd.docker("rmi", "-f", image_id, check=False)
    dest = tmp_path / "dest"
    venv = dest / "venv"
    subprocess.run([str(python310), "-m", "venv", str(venv)], check=True)  # made once; restore reuses it
    site = next(venv.glob("lib/python3.10/site-packages"))
    before = sorted(p.name for p in site.iterdir())
    cases = damaged_copies(built_bundle, tmp_path, flips=40, cuts=10, seed=SEED + 2)
    failures = []
    for label, path in cases:
        code = cli.main(["restore", str(path), "--dest", str(dest), "--python", str(python310)])
        err = capsys.readouterr().err
        loaded = [i for i in ids if dockerd.docker("image", "inspect", i, check=False).returncode == 0]
        installed = sorted(p.name for p in site.iterdir())
        if code != 3:
            failures.append(f"{label}: exit {code}: {err.strip()}")
        if loaded:
            failures.append(f"{label}: loaded {loaded}")
            for image_id in loaded:
                dockerd.docker("rmi", "-f", image_id, check=False)
        if installed != before:
            failures.append(f"{label}: site-packages changed: {sorted(set(installed) ^ set(before))}")
        left = list((dest / "wheels").glob("*")) if (dest / "wheels").exists() else []
        if (venv / ".bundler-restored").exists() or left:
            failures.append(f"{label}: the restored marker or wheels were left in {dest}: {left}")
    print(f"restore sweep: {len(cases)} damaged bundles, none loaded or installed anything")
    assert not failures, "\n".join(failures)


def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path, python310, capsys):
    # bundle.json says a wheel of 1 TiB; the archive agrees; the data would be zeros that compress to nothing
    huge = 1 << 40
    listed = [{"path": "requirements.lock", "size": 1, "sha256": "0" * 64},
              {"path": "wheels/bomb-1.0-py3-none-any.whl", "size": huge, "sha256": "0" * 64}]
    bundle = bundles.craft(tmp_path / "bomb.tar.zst", [bundles.regular("requirements.lock", b"x")], listed=listed,
                           head_extra={"wheels": [{"name": "bomb", "version": "1.0", "sha256": "0" * 64,
                                                   "filename": "bomb-1.0-py3-none-any.whl", "size": huge,
                                                   "built": False}]})
    dest = tmp_path / "dest"
    code = cli.main(["restore", str(bundle), "--wheels-only", "--dest", str(dest), "--python", str(python310)])
    err = capsys.readouterr().err
    assert code == 1 and "needs about" in err and "is free" in err
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_a_head_bomb_is_refused(tmp_path, capsys):
    import io
    import tarfile

    import zstandard
    head = b'{"format": 1' + b" " * (80 << 20) + b"}"
    info = tarfile.TarInfo("bundle.json")
    info.size = len(head)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(info, io.BytesIO(head))
    path = tmp_path / "headbomb.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    assert path.stat().st_size < 100_000
    assert cli.main(["inspect", str(path)]) == 3
    assert "larger than" in capsys.readouterr().err


def test_a_bundle_from_a_newer_format_is_named(tmp_path, capsys):
    bundle = bundles.craft(tmp_path / "future.tar.zst", [], listed=[], head_extra={"format": 99})
    assert cli.main(["inspect", str(bundle)]) == 2
    assert "format 99 is newer" in capsys.readouterr().err


GOLDEN = Path(__file__).parent / "golden" / "format1-bundler-0.1.0.tar.zst"


def _frames(bundle: Path) -> tuple[bytes, bytes]:
    """The bundle's first frame (bundle.json) as it is in the file, and the rest of its tar, decompressed."""
    data = bundle.read_bytes()
    decoder = zstandard.ZstdDecompressor().decompressobj()
    decoder.decompress(data)
    first = data[:len(data) - len(decoder.unused_data)]
    rest = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(decoder.unused_data), read_across_frames=True).read()
    return first, rest


@pytest.mark.parametrize("where", ["in the last frame", "in a frame of its own"])
def test_bytes_after_the_archives_end_are_damage(where, tmp_path, capsys):
    first, rest = _frames(GOLDEN)
    head_tar = len(zstandard.ZstdDecompressor().decompressobj().decompress(first))
    compress = zstandard.ZstdCompressor(write_checksum=True).compress
    trailing = b"\x01appended"
    bundle = tmp_path / "trailing.tar.zst"
    if where == "in the last frame":    # the tar itself, recompressed with bytes after its end padding
        bundle.write_bytes(first + compress(rest + trailing))
    else:                               # a well-formed zstd frame of garbage after the whole bundle
        bundle.write_bytes(GOLDEN.read_bytes() + compress(trailing))
    offset = head_tar + len(rest)
    assert cli.main(["verify", str(bundle)]) == 3
    err = capsys.readouterr().err
    assert err == f"bundler: error: {bundle}: data after the archive's end, at byte {offset} of its tar stream\n", err
    index = tmp_path / "index"
    code = cli.main(["restore", str(bundle), "--wheels-only", "--dest", str(tmp_path / "dest"), "--index-dir",
                     str(index)])
    assert code == 3 and "data after the archive's end" in capsys.readouterr().err
    assert not index.exists() and not list((tmp_path / "dest").rglob("*.whl"))


def test_a_non_zero_byte_inside_the_end_padding_is_damage(tmp_path, capsys):
    first, rest = _frames(GOLDEN)
    padded = bytearray(rest)
    padded[-1] = 0x20          # the last byte of the zeros that pad the tar to its record
    bundle = tmp_path / "padding.tar.zst"
    bundle.write_bytes(first + zstandard.ZstdCompressor().compress(bytes(padded)))
    assert cli.main(["verify", str(bundle)]) == 3
    assert "data after the archive's end" in capsys.readouterr().err


def test_a_bundle_that_tar_itself_wrote_is_accepted_with_its_zero_padding(tmp_path, capsys):
    """GNU tar pads the archive to its record (20 blocks, or what -b says) with zeros: not damage."""
    out = tmp_path / "out"
    out.mkdir()
    whole = subprocess.run(["zstd", "-dc", str(GOLDEN)], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=whole, check=True)
    head, _ = read_head(GOLDEN)
    members = ["bundle.json", *(m["path"] for m in head["members"])]
    for blocking in ("20", "64"):
        bundle = tmp_path / f"tar-b{blocking}.tar.zst"
        tar = subprocess.run(["tar", "--format=pax", "-b", blocking, "-cf", "-", "-C", str(out), *members],
                             capture_output=True, check=True).stdout
        assert len(tar) % (int(blocking) * 512) == 0 and tar.endswith(bytes(1024))
        bundle.write_bytes(zstandard.ZstdCompressor().compress(tar))
        assert cli.main(["verify", str(bundle)]) == 0, capsys.readouterr().err
