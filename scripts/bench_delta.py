"""Update bundles against full ones (run by ``scripts/bench.py --only delta``).

bench.py's workload (a 1.2 GiB base layer, three top layers of 270 MiB, 12 real wheels). Three
updates, each as a full bundle and as a delta (``build --since`` the earlier bundle), both built
from a cache that holds only what the earlier build fetched, then restored into a site that holds
the earlier bundle (docker and a venv):

- add an image: v1 is img1, v2 adds img2 (the same base): the delta against img2's own top layer
  as bundler compresses it;
- add two requirements: v1 pins all wheels but two, v2 all: the delta's wheels against what the
  lock added;
- rebuild: v2 is img1 with 1 % of its top layer's files changed (a new diff_id): the delta against
  v2's full bundle and against the changed files compressed. Built a third way too: as a delta from
  a cache without chunk indexes (what an older bundler left): both layers are chunked after the fetch.

Then the two ways to carry a rebuilt layer's changes, on that layer: content-defined chunks
(bundler's patch, several chunk sizes) and zstd's ``--patch-from`` with the old layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from bench import CACHE, MB, WHEELS, Bench, Sample, du, gzip_layer, human, measure
from isal import isal_zlib

from bundler.format.archive import load_head

REBUILT = "img1r"
EXTRA: dict[str, int] = {}   # reference sizes for the report
CHANGED_SHARE = 100          # one file in this many is changed
ADDED = ("opencv-python-headless", "grpcio")   # the two requirements an update adds (nothing else needs them)


def run(bench: Bench, runs: int) -> None:
    layout = CACHE / "main"
    rebuilt, changed_bytes = rebuilt_image(layout)
    rebuilt_ref = f"{bench.registry.host}/bench/img1:2"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2",
                    f"oci:{rebuilt}:{REBUILT}", f"docker://{rebuilt_ref}"], check=True)
    img1, img2 = bench.refs[0], bench.refs[1]
    scenarios = {
        "add an image": (bench.profile([img1], wheels=False, name="v1-image"),
                         bench.profile([img1, img2], wheels=False, name="v2-image")),
        "add two requirements": (wheels_profile(bench, [w for w in WHEELS if not w.startswith(ADDED)], "v1-wheels"),
                                 wheels_profile(bench, WHEELS, "v2-wheels")),
        "rebuild": (bench.profile([img1], wheels=False, name="v1-rebuild"),
                    bench.profile([rebuilt_ref], wheels=False, name="v2-rebuild")),
    }
    for _ in range(runs):
        for name, (v1, v2) in scenarios.items():
            scenario(bench, name, v1, v2)
    methods(bench, rebuilt)
    report(bench, runs, changed_bytes)


def wheels_profile(bench: Bench, requirements: list[str], name: str) -> Path:
    path = bench.work / f"{name}.yaml"
    lines = [f"name: {name}", "target:", "  platform: linux/amd64", '  python: "3.10"', "python:", "  requirements:"]
    lines += [f"    - {r}" for r in requirements] + ["mirrors:", f"  pypi: [{bench.index.url}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def scenario(bench: Bench, name: str, v1: Path, v2: Path) -> None:
    out = bench.fresh(f"delta-{name.replace(' ', '-')}")
    cache = out / "cache-v1"
    build = [sys.executable, "-m", "bundler", "build", "--no-restorer", "--cache"]
    measure([*build, str(cache), str(v1), "-o", str(out / "v1.tar.zst"), "-q"], bench.env)
    kinds = [("full", []), ("delta", ["--since", str(out / "v1.tar.zst")])]
    if name == "rebuild":
        kinds.append(("delta, no index", ["--since", str(out / "v1.tar.zst")]))
    for kind, extra in kinds:
        shutil.copytree(cache, out / f"cache-{kind}")   # each starts from what the v1 build left
        if kind == "delta, no index":
            shutil.rmtree(out / f"cache-{kind}" / "chunks")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, rss = measure([*build, str(out / f"cache-{kind}"), str(v2), "-o", str(out / f"{kind}.tar.zst"),
                                "-q", *extra], bench.env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)   # CPU seconds: what the machine's other load
        bench.cpu.setdefault(f"delta: {name}: build, {kind}", []).append(   # changes least
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        bench.add(f"delta: {name}: build, {kind}", Sample(seconds, rss, 0, du(out / f"{kind}.tar.zst")))
        shutil.rmtree(out / f"cache-{kind}")
    only = ["--wheels-only", "--python", str(bench.python310)] if "requirements" in name else ["--images-only"]
    for kind in ("full", "delta"):
        bench.docker_reset()
        dest = out / f"site-{kind}"
        restore = [sys.executable, "-m", "bundler", "restore", "--dest", str(dest), "-q", *only]
        measure([*restore, str(out / "v1.tar.zst")], bench.env)
        seconds, rss = measure([*restore, str(out / f"{kind}.tar.zst")], bench.env)
        bench.add(f"delta: {name}: restore, {kind}", Sample(seconds, rss))
        shutil.rmtree(dest, ignore_errors=True)
    head, full = load_head(out / "delta.tar.zst"), load_head(out / "full.tar.zst")
    carried = {m.path for m in head.members}
    bench.notes.append(f"{name}: the delta carries {sorted(m.rsplit('/', 1)[-1][:40] for m in carried if m.startswith('wheels/'))}"
                       if "requirements" in name else
                       f"{name}: the delta carries {len([m for m in carried if '/blobs/' in m or '/patches/' in m])} "
                       f"blobs and {len(head.delta.patches)} patches; needs {len(head.delta.layers)} layers")
    if "requirements" in name:
        old = {w.sha256 for w in load_head(out / "v1.tar.zst").wheels}
        added = sorted(w.filename for w in full.wheels if w.sha256 not in old)
        bench.notes.append(f"{name}: the lock added {added}")
    if name == "add an image":   # img2's own layer, as bundler compresses it for any bundle
        top = next(i for i in full.images if i.tags[0].endswith("img2:1")).layer_digests[-1]
        EXTRA["own layers compressed"] = compressed_layer(top)
    shutil.rmtree(out / "cache-v1", ignore_errors=True)


def compressed_layer(diff_id: str) -> int:
    """A layer of the workload as bundler's frame compresses it (zstd -3, long distance, 64 MiB window)."""
    from bundler.build.images.layers import frame_compressor
    raw = raw_layer(CACHE / "main", diff_id)
    size = 0
    with open(raw, "rb") as source:
        compress = frame_compressor(3).compressobj()
        while chunk := source.read(MB):
            size += len(compress.compress(chunk))
        size += len(compress.flush())
    raw.unlink()
    return size


def raw_layer(layout: Path, diff_id: str) -> Path:
    """The workload's layer with this diff_id, gunzipped to a file."""
    for manifest in json.loads((layout / "index.json").read_text())["manifests"]:
        data = json.loads((layout / "blobs" / "sha256" / manifest["digest"].split(":")[1]).read_bytes())
        config = json.loads((layout / "blobs" / "sha256" / data["config"]["digest"].split(":")[1]).read_bytes())
        for layer, found in zip(data["layers"], config["rootfs"]["diff_ids"]):
            if found == diff_id:
                target = layout.parent / f"raw-{diff_id[7:19]}.tar"
                decoder = isal_zlib.decompressobj(31)
                with open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1], "rb") as handle, \
                        open(target, "wb") as out:
                    while chunk := handle.read(MB):
                        out.write(decoder.decompress(chunk))
                return target
    raise SystemExit(f"bench: no layer {diff_id} in {layout}")


def rebuilt_image(layout: Path) -> tuple[Path, int]:
    """img1 with one file in CHANGED_SHARE of its top layer replaced by another real file of the same
    kind (a package upgrade), as a layout of its own; and the changed files' bytes."""
    target = CACHE / "delta-rebuilt"
    if (target / "index.json").exists():
        return target, json.loads((target / "changed.json").read_text())["bytes"]
    manifest = next(m for m in json.loads((layout / "index.json").read_text())["manifests"]
                    if m["annotations"]["org.opencontainers.image.ref.name"] == "img1")
    data = json.loads((layout / "blobs" / "sha256" / manifest["digest"].split(":")[1]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / data["config"]["digest"].split(":")[1]).read_bytes())
    top = raw_layer(layout, config["rootfs"]["diff_ids"][-1])
    blobs = target / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    donors = sorted(p for p in Path("/root/.pyenv/versions/3.11.7").rglob("*") if p.is_file() and not p.is_symlink())
    new, changed, files = target / "layer.tar", 0, 0
    with tarfile.open(top) as old, tarfile.open(new, "w", format=tarfile.PAX_FORMAT) as out:
        for number, info in enumerate(old):
            source = old.extractfile(info) if info.isreg() else None
            payload = source.read() if source is not None else None
            if payload is not None and number % CHANGED_SHARE == 0 and donors:
                payload = donors[number % len(donors)].read_bytes()[:max(len(payload), 1) * 2]
                info.size = len(payload)
                changed += len(payload)
                files += 1
            out.addfile(info, io.BytesIO(payload) if payload is not None else None)
    top.unlink()
    diff_id, digest, size = _gzip(new, blobs)
    layers = data["layers"][:-1] + [{"mediaType": data["layers"][-1]["mediaType"], "digest": digest, "size": size}]
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:-1] + [diff_id]
    raw_config = json.dumps(config, sort_keys=True).encode()
    for layer in data["layers"][:-1]:
        shutil.copyfile(layout / "blobs" / "sha256" / layer["digest"].split(":")[1],
                        blobs / layer["digest"].split(":")[1])
    (blobs / hashlib.sha256(raw_config).hexdigest()).write_bytes(raw_config)
    data = {**data, "layers": layers, "config": {**data["config"], "digest": "sha256:" +
                                                  hashlib.sha256(raw_config).hexdigest(), "size": len(raw_config)}}
    raw_manifest = json.dumps(data, sort_keys=True).encode()
    (blobs / hashlib.sha256(raw_manifest).hexdigest()).write_bytes(raw_manifest)
    (target / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (target / "changed.json").write_text(json.dumps({"bytes": changed, "files": files}))
    (target / "changed.tar").unlink(missing_ok=True)
    (target / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": data["mediaType"], "digest": "sha256:" + hashlib.sha256(raw_manifest).hexdigest(),
        "size": len(raw_manifest), "annotations": {"org.opencontainers.image.ref.name": REBUILT}}]}))
    return target, changed


def _gzip(raw: Path, blobs: Path) -> tuple[str, str, int]:
    gz = blobs / "tmp.gz"
    diff_id, digest = gzip_layer(raw, gz)
    shutil.move(raw, raw.with_name("new-layer.tar"))   # kept for the methods' comparison
    size = gz.stat().st_size
    gz.rename(blobs / digest.split(":")[1])
    return diff_id, digest, size


def methods(bench: Bench, rebuilt: Path) -> None:
    """Content-defined chunks (bundler's patch, at several chunk sizes) against zstd --patch-from, on
    the rebuilt top layer against the old one: the compressed size each carries, its time and memory."""
    layout = CACHE / "main"
    manifest = next(m for m in json.loads((layout / "index.json").read_text())["manifests"]
                    if m["annotations"]["org.opencontainers.image.ref.name"] == "img1")
    data = json.loads((layout / "blobs" / "sha256" / manifest["digest"].split(":")[1]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / data["config"]["digest"].split(":")[1]).read_bytes())
    old = raw_layer(layout, config["rootfs"]["diff_ids"][-1])
    new = rebuilt / "new-layer.tar"
    out = bench.fresh("delta-methods")
    for average in (2, 8, 16, 64):
        code = ("import sys, zstandard; from pathlib import Path; import bundler.build.chunking as c; "
                f"c.AVERAGE_CHUNK = {average} << 10; base = Path(sys.argv[1]); "
                "index = c.index_base(open(base, 'rb'), base.stat().st_size); "
                "out = open(sys.argv[3], 'wb'); c.make_patch(index, open(sys.argv[2], 'rb'), out); "
                "out.close(); data = open(sys.argv[3], 'rb').read(); "
                "print(len(zstandard.ZstdCompressor(level=3).compress(data)))")
        seconds, rss = measure([sys.executable, "-c", code, str(old), str(new), str(out / "patch")], bench.env)
        size = int(subprocess.run([sys.executable, "-c", code, str(old), str(new), str(out / "patch")],
                                  capture_output=True, text=True, check=True, env=bench.env).stdout)
        bench.add(f"delta: method: chunks of {average} KiB (FastCDC), then zstd -3", Sample(seconds, rss, 0, size))
    for level in (3, 19):
        seconds, rss = measure(["zstd", f"-{level}", "-q", "-f", "--long=31", f"--patch-from={old}", str(new), "-o",
                                str(out / "patch.zst")], bench.env)
        bench.add(f"delta: method: zstd -{level} --patch-from (the old layer as its window)",
                  Sample(seconds, rss, 0, (out / "patch.zst").stat().st_size))
    EXTRA["changed files, zstd -3"] = changed_compressed(old, new, out)
    old.unlink()


def changed_compressed(old: Path, new: Path, out: Path) -> int:
    """The files the rebuild changed, concatenated and compressed with zstd -3: what carrying only them costs."""
    with tarfile.open(old) as handle:
        before = {i.name: i.size for i in handle if i.isreg()}
    changed = out / "changed.bin"
    with tarfile.open(new) as handle, open(changed, "wb") as target:
        for info in handle:
            if info.isreg() and before.get(info.name) != info.size:
                target.write(handle.extractfile(info).read())
    return int(subprocess.run(f"zstd -3 -q -c {changed} | wc -c", shell=True, capture_output=True, text=True,
                              check=True).stdout)


def _seconds(row: object) -> str:
    return ", ".join(f"{s.seconds:.1f}" for s in row.samples)


def size(value: float) -> str:
    return human(value) if value >= 10 * MB else f"{value / 1024:,.0f} KiB"


def report(bench: Bench, runs: int, changed_bytes: int) -> None:
    rows = bench.rows
    print("\n" + "=" * 100)
    print(f"update bundles: a delta against the full bundle, median of {runs} run(s)")
    print(f"{'':40} {'full':>10} {'delta':>10} {'delta/full':>11} {'build s':>16} {'restore s':>16} {'peak RSS':>10}")
    for name in ("add an image", "add two requirements", "rebuild"):
        b_full, b_delta = rows[f"delta: {name}: build, full"], rows[f"delta: {name}: build, delta"]
        r_full, r_delta = rows[f"delta: {name}: restore, full"], rows[f"delta: {name}: restore, delta"]
        size_full, size_delta = b_full.median("output"), b_delta.median("output")
        rss = max(r.median("rss") for r in (b_full, b_delta, r_full, r_delta))
        print(f"{name:40} {size(size_full):>10} {size(size_delta):>10} {size_delta / size_full:11.3f} "
              f"{b_full.median('seconds'):6.1f} / {b_delta.median('seconds'):5.1f}  "
              f"{r_full.median('seconds'):6.1f} / {r_delta.median('seconds'):5.1f} {human(rss):>10}")
    own = EXTRA.get("own layers compressed")
    if own:
        delta = rows["delta: add an image: build, delta"].median("output")
        print(f"add an image: delta / img2's own layer compressed ({size(own)}) = {delta / own:.3f} (goal <= 1.05)")
    changed = EXTRA.get("changed files, zstd -3")
    delta = rows["delta: rebuild: build, delta"].median("output")
    full = rows["delta: rebuild: build, full"].median("output")
    print(f"rebuild: delta / v2's full bundle = {delta / full:.4f} (goal <= 0.10); delta / the changed files "
          f"compressed ({size(changed)}, {size(changed_bytes)} raw) = {delta / changed:.2f} (aim 2)")
    build = {kind: rows[f"delta: rebuild: build, {kind}"] for kind in ("full", "delta", "delta, no index")}
    restore = {kind: rows[f"delta: rebuild: restore, {kind}"].median("seconds") for kind in ("full", "delta")}
    print(f"rebuild: build, delta / full = {build['delta'].median('seconds') / build['full'].median('seconds'):.2f} "
          f"(goal <= 1.0; runs: {_seconds(build['delta'])} against {_seconds(build['full'])}); from a cache without "
          f"chunk indexes {build['delta, no index'].median('seconds'):.1f} s ({_seconds(build['delta, no index'])})")
    print(f"rebuild: restore, delta / full = {restore['delta'] / restore['full']:.2f} (goal <= 1.0)")
    print("CPU seconds of each build (its processes, user + system), median:")
    for name in ("add an image", "add two requirements", "rebuild"):
        found = {kind: statistics.median(bench.cpu[f"delta: {name}: build, {kind}"])
                 for kind in ("full", "delta", "delta, no index") if f"delta: {name}: build, {kind}" in bench.cpu}
        print(f"  {name:38} " + ", ".join(f"{kind} {value:.1f}" for kind, value in found.items()))
    print("methods on the rebuilt layer (compressed size carried, time, peak RSS):")
    for name, row in rows.items():
        if name.startswith("delta: method: "):
            print(f"  {name[15:]:60} {size(row.median('output')):>10} {row.median('seconds'):6.1f} s "
                  f"{human(row.median('rss')):>10}")
    for note in bench.notes:
        print(f"  {note}")


if __name__ == "__main__":
    raise SystemExit("run it as: scripts/bench.py --only delta")
