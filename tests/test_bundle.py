"""The bundle: build, inspect, verify, volumes; reproducible, atomic, and honest about damage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest
import zstandard

from bundler import cli
from bundler.build.pack import FAT32_MAX, parse_size
from bundler.errors import InputError
from bundler.format.archive import read_head
from conftest import bundler_cmd


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_holds_images_lock_and_wheels(built_bundle, capsys, pushed):
    code, out, err = run(capsys, "inspect", str(built_bundle), "--json")
    assert code == 0, err
    head = json.loads(out)
    assert head["target"] == {"platform": "linux/amd64", "python": "3.10", "glibc": "2.31"}
    assert sorted(i["tags"][0] for i in head["images"]) == sorted([pushed["app"], pushed["app2"]])
    assert sorted(w["name"] for w in head["wheels"]) == ["alpha", "beta", "native"]
    # the plain tools read it: zstd -dc | tar, member by member, against bundle.json
    raw = subprocess.run(["zstd", "-dc", str(built_bundle)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        assert names[0] == "bundle.json"
        listed = json.loads(tar.extractfile("bundle.json").read())["members"]
        assert names[1:] == [m["path"] for m in listed]
        # the layers come first, from the bottom up (the shared ones once): a restore into docker
        # registers each image's lower layers while the ones above still stream
        depths = [layer for height in range(3) for image in head["images"]
                  for layer in image["layer_digests"][height:height + 1]]
        bottom_up = [f"images/blobs/sha256/{d.removeprefix('sha256:')}" for d in dict.fromkeys(depths)]
        first = names.index(bottom_up[0])    # after the head and the SBOM
        assert names[first:first + len(bottom_up)] == bottom_up and first <= 2, names
        for member in listed:
            data = tar.extractfile(member["path"]).read()
            assert hashlib.sha256(data).hexdigest() == member["sha256"]
        lock = tar.extractfile("requirements.lock").read().decode()
        assert "alpha==1.0" in lock and "--hash=sha256:" in lock
        assert {"images/index.json", "images/manifest.json", "images/oci-layout"} <= set(names)
    code, out, _ = run(capsys, "verify", str(built_bundle))
    assert code == 0 and "match bundle.json" in out


def test_human_inspect(built_bundle, capsys):
    code, out, _ = run(capsys, "inspect", str(built_bundle))
    assert code == 0
    assert "profile   testbed" in out and "target    linux/amd64, CPython 3.10" in out
    assert "alpha 1.0" in out and "native-1.0-cp310-cp310-manylinux" in out


def test_human_inspect_aligns_a_check_script_under_its_label(built_bundle):
    from dataclasses import replace

    from bundler.cli.inspect import render_inspect
    from bundler.restore.inspection import inspect
    found = inspect(built_bundle)
    profile = replace(found.head.profile, check="python -c '\nimport alpha\nprint(alpha.NAME)\n'\n")
    lines = render_inspect(replace(found, head=replace(found.head, profile=profile)))
    start = lines.index("check     python -c '")
    assert lines[start + 1:start + 4] == ["          import alpha", "          print(alpha.NAME)", "          '"]
    assert lines[start + 4].startswith("members ")


def test_inspect_reads_only_the_head(built_bundle):
    head, read = read_head(built_bundle)
    assert head["format"] == 1
    assert built_bundle.stat().st_size > 1_000_000
    assert read <= 128 << 10, f"inspect read {read} bytes"


def test_same_lock_gives_a_byte_identical_bundle(testbed_profile, tmp_path, capsys):
    lock = tmp_path / "testbed.lock"
    assert run(capsys, "lock", str(testbed_profile), "-o", str(lock))[0] == 0
    first, second = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(first))[0] == 0
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(second), "--jobs", "1",
               "--cache", str(tmp_path / "fresh-cache"))[0] == 0
    assert first.read_bytes() == second.read_bytes()


def test_a_lock_for_another_profile_is_refused(testbed_profile, tmp_path, capsys):
    lock = tmp_path / "x.lock"
    assert run(capsys, "lock", str(testbed_profile), "-o", str(lock))[0] == 0
    lock.write_text(lock.read_text().replace("profile: testbed", "profile: other"))
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(tmp_path / "o"))
    assert code == 2 and "the lock is for profile 'other'" in err


def test_refuses_to_overwrite_without_force(built_bundle, testbed_profile, tmp_path, capsys):
    out = tmp_path / "b.tar.zst"
    out.write_bytes(b"precious")
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out))
    assert code == 2 and "already exists (use --force" in err
    assert out.read_bytes() == b"precious"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "--force", "-q")[0] == 0
    assert run(capsys, "verify", str(out))[0] == 0


def test_split_volumes_verify_and_damage_is_named(testbed_profile, tmp_path, capsys):
    out = tmp_path / "s.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "--split", "1M", "-q")[0] == 0
    volumes = sorted(tmp_path.glob("s.tar.zst.[0-9][0-9][0-9]"))
    assert len(volumes) >= 2 and all(v.stat().st_size == 1 << 20 for v in volumes[:-1])
    assert not out.exists() and (tmp_path / "s.tar.zst.sha256").exists()
    assert run(capsys, "verify", str(out))[0] == 0
    assert run(capsys, "verify", str(volumes[0]))[0] == 0
    code, text, _ = run(capsys, "inspect", str(volumes[0]))
    assert code == 0 and f"{len(volumes)} volumes" in text
    # sha256sum -c reads the checksum file as it is
    check = subprocess.run(["sha256sum", "-c", "s.tar.zst.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def damaged(action) -> str:
        saved = {v: v.read_bytes() for v in volumes}
        try:
            action()
            code, _, err = run(capsys, "verify", str(out))
            assert code == 3, err
            return err
        finally:
            for v in tmp_path.glob("s.tar.zst.[0-9][0-9][0-9]"):
                if v not in saved:
                    v.unlink()
            for v, data in saved.items():
                v.write_bytes(data)

    assert f"{volumes[1].name}: volume 002 of {len(volumes)} is missing" in damaged(lambda: volumes[1].unlink())
    truncated = damaged(lambda: volumes[0].write_bytes(volumes[0].read_bytes()[:1000]))
    assert f"{volumes[0].name}: volume is 1000 bytes" in truncated and "truncated" in truncated
    extra = tmp_path / f"s.tar.zst.{len(volumes) + 1:03d}"
    assert f"{extra.name}: extra volume" in damaged(lambda: extra.write_bytes(b"x"))

    def swap() -> None:
        a, b = volumes[0].read_bytes(), volumes[1].read_bytes()
        volumes[0].write_bytes(b)
        volumes[1].write_bytes(a)
    assert f"{volumes[0].name}: volume does not match its checksum" in damaged(swap)


@pytest.mark.parametrize("where", [0.05, 0.3, 0.6, 0.95])
def test_a_flipped_byte_makes_verify_exit_3(built_bundle, tmp_path, capsys, where):
    copy = tmp_path / "c.tar.zst"
    data = bytearray(built_bundle.read_bytes())
    position = int(len(data) * where)
    data[position] ^= 0x01
    copy.write_bytes(bytes(data))
    code, _, err = run(capsys, "verify", str(copy))
    assert code == 3, err
    assert err.startswith("bundler: error: ") and err.count("\n") == 1


def test_no_output_after_a_failure(testbed_profile, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    text = testbed_profile.read_text()
    host = text.split("registries:\n    ")[1].split(":")[0] + ":" + text.split("registries:\n    ")[1].split(":")[1]
    broken.write_text(text.replace(f"{host}: [official]", f"{host}: [http://127.0.0.1:9]"))
    out = tmp_path / "never.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(broken), "-o", str(out))
    assert code == 1 and "every endpoint failed" in err
    assert list(tmp_path.iterdir()) == [broken]


def test_no_output_after_sigint_while_packing(testbed_profile, tmp_path, built_bundle):
    out = tmp_path / "int.tar.zst"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(bundler_cmd("build", "--no-restorer", str(testbed_profile), "-o", str(out), "--level", "19", "-q"),
                               env=env, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "int.tar.zst.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert partial.exists(), "the build finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not out.exists() and not partial.exists()


@pytest.mark.parametrize("text,size", [("4G", 4 << 30), ("700M", 700 << 20), ("fat32", FAT32_MAX),
                                       ("1048576", 1 << 20), ("1.5G", 3 << 29), ("2GiB", 2 << 30)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4X", "", "-1M", "100K", "G"])
def test_bad_sizes(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_head_is_its_own_zstd_frame(built_bundle):
    data = built_bundle.read_bytes()
    decoder = zstandard.ZstdDecompressor().decompressobj()
    first = decoder.decompress(data)
    assert decoder.eof and decoder.unused_data  # the frame ends, and more follows
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["bundle.json"]


def test_a_cache_file_damaged_on_disk_stops_the_build(testbed_profile, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "a.tar.zst"), "--cache", str(cache))[0] == 0
    largest = max((cache / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    out = tmp_path / "b.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(cache))
    assert code == 3 and "changed on disk" in err and largest.name[:12] in err
    assert not out.exists() and not list(tmp_path.glob("b.tar.zst*"))


def test_a_wheels_only_lock_builds_with_images_resolved_at_build_time(testbed_profile, tmp_path, capsys):
    lock = tmp_path / "wheels.lock"
    assert run(capsys, "lock", str(testbed_profile), "--wheels-only", "-o", str(lock))[0] == 0
    out = tmp_path / "full.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(out))
    assert code == 0 and "pins no images; resolved them now" in err
    code, text, _ = run(capsys, "inspect", str(out), "--json")
    assert len(json.loads(text)["images"]) == 2


def test_a_cached_frame_damaged_on_disk_stops_the_build(testbed_profile, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "a.tar.zst"), "--cache", str(cache))[0] == 0
    frame = max((cache / "frames").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0x01
    frame.write_bytes(bytes(data))
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "b.tar.zst"), "--cache", str(cache))
    assert code == 3 and "changed on disk" in err and "frame sha256" in err
    assert not list(tmp_path.glob("b.tar.zst*"))


def test_a_rebuild_from_a_warm_cache_copies_the_frames_and_is_identical(testbed_profile, tmp_path, capsys):
    lock, cache = tmp_path / "l.lock", tmp_path / "cache"
    assert run(capsys, "lock", str(testbed_profile), "-o", str(lock))[0] == 0
    first, second = tmp_path / "1.tar.zst", tmp_path / "2.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(first), "--cache", str(cache))[0] == 0
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(second), "--cache", str(cache))[0] == 0
    assert first.read_bytes() == second.read_bytes()
    # and a different level makes its own frames from the cached ones: every endpoint refuses, yet it builds
    nowhere = tmp_path / "nowhere.yaml"
    host = json.loads(run(capsys, "inspect", str(first), "--json")[1])["images"][0]["name"].split("/")[0]
    nowhere.write_text(f"registries:\n  {host}: [http://127.0.0.1:9]\npypi: [http://127.0.0.1:9/simple]\n")
    third = tmp_path / "3.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(third), "--cache",
                       str(cache), "--level", "9", "--mirrors", str(nowhere))
    assert code == 0, err
    assert run(capsys, "verify", str(third))[0] == 0
    assert third.read_bytes() != first.read_bytes()


def test_two_cold_builds_without_a_lock_are_byte_identical(registry, sample_layout, index, tmp_path, capsys,
                                                           monkeypatch):
    """Nothing comes from the clock: with no lock and no SOURCE_DATE_EPOCH the bundle is dated by the
    newest image it holds (or 1980-01-01 when nothing carries a date)."""
    from conftest import write_profile
    from testbed import images as tb_images
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    sample_layout.add("dated", [tb_images.ImageSpec([tb_images.layer_tar({"etc/d.txt": "dated\n"})],
                                                    created="2024-05-01T12:00:00.123456789Z")])
    ref = f"{registry.host}/team/dated:1.0"
    sample_layout.push("dated", ref)
    profile = write_profile(tmp_path, registry.host, [ref], index.url, ["alpha==1.0"])
    outputs = []
    for n in (1, 2):
        out = tmp_path / f"{n}.tar.zst"
        code, _, err = run(capsys, "build", "--no-restorer", str(profile), "-o", str(out), "--cache", str(tmp_path / f"cache{n}"))
        assert code == 0, err
        outputs.append(out)
        time.sleep(1.1)   # a clock that leaked into the bundle would show a different second
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    head, _ = read_head(outputs[0])
    assert head["created"] == 1714564800   # the image's date
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(
            outputs[0].read_bytes()[:65536]))) as tar:
        assert tar.next().mtime == 1714564800

    wheels_only = tmp_path / "w.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(profile), "-o", str(wheels_only), "--wheels-only")[0] == 0
    assert read_head(wheels_only)[0]["created"] == 315532800
    assert "no date" in run(capsys, "inspect", str(wheels_only))[1]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = tmp_path / "s.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(profile), "-o", str(dated), "--wheels-only")[0] == 0
    assert read_head(dated)[0]["created"] == 1700000000


def test_when_the_images_fail_the_build_says_so_at_once(registry, pushed, index, faulty, tmp_path):
    """The image side fails in a moment while a wheel download would take half a minute: the error
    comes at once, not after the wheels."""
    from conftest import write_profile
    profile = write_profile(tmp_path, registry.host, [pushed["app"]], index.url, ["alpha==1.0"])
    lock = tmp_path / "l.lock"
    assert subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock)), capture_output=True).returncode == 0
    gone = faulty(registry.url, "flip", min_size=1 << 16)   # manifests and configs pass: the layers fail
    slow = faulty(index.url.removesuffix("/simple"), "slow", delay=30)
    text = profile.read_text().replace(f"{registry.host}: [official]", f"{registry.host}: [{gone.url}]")
    profile.write_text(text.replace(index.url, slow.url + "/simple"))
    started = time.monotonic()
    result = subprocess.run(bundler_cmd("build", "--no-restorer", str(profile), "--lock", str(lock), "-o",
                                        str(tmp_path / "x.tar.zst"), "--cache", str(tmp_path / "cache")),
                            capture_output=True, text=True)
    took = time.monotonic() - started
    assert result.returncode == 3 and "every endpoint failed" in result.stderr, result.stderr
    assert any("/files/" in r for r in slow.requests), "the wheel download had started"
    assert took < 15, f"the build waited {took:.0f} s for a wheel nobody needed any more"
    assert not list(tmp_path.glob("x.tar.zst*"))


def test_a_level_9_bundle_decodes_with_a_stock_zstd_and_no_flags(testbed_profile, tmp_path, capsys):
    """--level 9 frames its layers with the largest window a decoder takes without --long or
    --memory (128 MiB): larger would make `zstd -dc` and python-zstandard's defaults refuse the
    bundle on a machine without bundler."""
    out, cache = tmp_path / "small.tar.zst", tmp_path / "cache"
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(cache),
                       "--level", "9")
    assert code == 0, err
    frames = [p for p in (cache / "frames").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"]
    assert frames, "no layer frame in the cache"
    windows = {zstandard.get_frame_parameters(p.read_bytes()[:18]).window_size for p in frames}
    assert windows == {128 << 20}, windows   # the frames do declare the window this test is about
    listed = subprocess.run(["bash", "-o", "pipefail", "-c", f"zstd -dc '{out}' | tar -t"], capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert names[0] == "bundle.json" and any(name.startswith("images/") for name in names), names
    with open(out, "rb") as handle:   # python-zstandard with its default max_window_size reads every frame
        reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
        assert sum(len(chunk) for chunk in iter(lambda: reader.read(1 << 20), b"")) > 0
