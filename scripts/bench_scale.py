"""The real size of a GPU stack (run by ``scripts/bench.py --only scale [--scale 1G,4G,20G]``).

For each size, one image of that many bytes of raw layers (at most 2 GiB a layer, as the large
layers of CUDA images are) is generated and pushed, gzip, into a local registry; then bundler
builds it (images only, default level, cold cache) and restores it into the bench's own dockerd
(``restore --images-only``). Printed per size: build and restore time, both per GiB (linear when
the per-GiB figures agree), the peak RSS of each command's process tree, and the build's peak disk
(its output folder, bundle and cache, sampled every 0.2 s) against what it leaves (bundle + cache).

The layers mix what CUDA images hold: members of 32 MiB, one in three random bytes (compiled code
that compresses little) and two in three real files from this machine (libraries, text, headers,
Python). The bytes come from two pools of 512 MiB each, random and real, read at moving offsets:
the same bytes recur 480 MiB apart in a layer, beyond the 128 MiB that any bundler window
reaches, so to bundler they are as new as fresh bytes (a deduplicating tool with a larger window
would see the repeats).
Nothing is kept on this side: each layer is generated while it is gzipped and streamed into the
registry, whose copy is the only one; the registry, the build and docker's images are removed
before the next size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import requests
from bench import GB, MB, SCALE_SOURCES, _files, clean_env, du, human, measure
from isal import isal_zlib

from testbed import services

LAYER_MAX = 2 * GB
PIECE = 32 * MB
POOL = 512 * MB
SLICE = MB
RECORD = 10240
BUILD_ROOM = 1.6     # x the raw size: the registry's gzip (0.55), the bundle and the cache (0.5 each)
RESTORE_ROOM = 2.1   # docker's load unpacks the archive to a temporary folder, then into its layers
MARGIN = 5 * GB      # left to whatever else shares the disk


def parse_sizes(text: str) -> list[int]:
    """``1G,4G,20G`` (binary units) as bytes."""
    sizes = []
    for part in text.split(","):
        part = part.strip().upper()
        unit = {"G": GB, "M": MB}.get(part[-1:], 1)
        sizes.append(int(float(part.rstrip("GM")) * unit))
    return sizes


def random_pool() -> bytes:
    return b"".join(os.urandom(MB) for _ in range(POOL // MB))


def real_pool() -> bytes:
    """Up to POOL bytes of real files, read in the order the workload's layers take them."""
    parts, used = [], 0
    for path in _files(SCALE_SOURCES):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data[:POOL - used])
        used += len(parts[-1])
        if used >= POOL:
            break
    if used < POOL // 2:
        raise SystemExit(f"bench: only {human(used)} of real files under {SCALE_SOURCES}")
    return b"".join(parts)


def layer_tar(size: int, seed: int, pools: tuple[bytes, bytes]) -> Iterator[memoryview]:
    """An uncompressed layer of about ``size`` bytes: members of PIECE bytes, random and real in turn."""
    written, piece = 0, 0
    while written + 2 * 512 + RECORD < size:
        pool = pools[0 if piece % 3 == 0 else 1]   # one piece in three random
        length = min(PIECE, size - written - 2 * 512 - RECORD)
        start = (seed * 7919 * MB + piece * PIECE) % (len(pool) - PIECE)
        name = (f"usr/local/cuda/lib64/libscale{seed}_{piece}.so" if piece % 3 == 0
                else f"usr/share/scale{seed}/part{piece}.txt")
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = length, 0o644, 0
        header = info.tobuf(format=tarfile.GNU_FORMAT)
        yield memoryview(header)
        data = memoryview(pool)[start:start + length]
        for offset in range(0, length, SLICE):
            yield data[offset:offset + SLICE]
        pad = -length % 512
        if pad:
            yield memoryview(bytes(pad))
        written += len(header) + length + pad
        piece += 1
    end = 2 * 512 + (-(written + 2 * 512) % RECORD)
    yield memoryview(bytes(end))


class Pusher:
    """Streams generated layers, gzipped on the way, into a registry; then the config and manifest."""

    def __init__(self, registry: services.Registry, repo: str) -> None:
        self.url, self.repo = registry.url, repo
        self.session = requests.Session()

    def _upload(self) -> str:
        response = self.session.post(f"{self.url}/v2/{self.repo}/blobs/uploads/")
        response.raise_for_status()
        return urljoin(self.url, response.headers["Location"])

    def layer(self, chunks: Iterator[memoryview]) -> dict:
        raw, compressed, counts = hashlib.sha256(), hashlib.sha256(), {"raw": 0, "size": 0}

        def body() -> Iterator[bytes]:
            encoder = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)   # gzip; registries hold any level
            for chunk in chunks:
                raw.update(chunk)
                counts["raw"] += len(chunk)
                data = encoder.compress(chunk)
                if data:
                    compressed.update(data)
                    counts["size"] += len(data)
                    yield data
            data = encoder.flush()
            compressed.update(data)
            counts["size"] += len(data)
            yield data

        response = self.session.patch(self._upload(), data=body(),
                                      headers={"Content-Type": "application/octet-stream"})
        response.raise_for_status()
        digest = f"sha256:{compressed.hexdigest()}"
        response = self.session.put(urljoin(self.url, response.headers["Location"]), params={"digest": digest})
        response.raise_for_status()
        return {"diff_id": f"sha256:{raw.hexdigest()}", "digest": digest, **counts}

    def blob(self, data: bytes) -> str:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        response = self.session.put(self._upload(), params={"digest": digest}, data=data,
                                    headers={"Content-Type": "application/octet-stream"})
        response.raise_for_status()
        return digest

    def image(self, layers: list[dict], tag: str) -> None:
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                             "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in layers]}},
                            sort_keys=True).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": self.blob(config), "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                "digest": d["digest"], "size": d["size"]} for d in layers]}
        response = self.session.put(f"{self.url}/v2/{self.repo}/manifests/{tag}", data=json.dumps(manifest),
                                    headers={"Content-Type": manifest["mediaType"]})
        response.raise_for_status()


class DiskPeak:
    """The peak of ``du(folder)``, sampled on a thread while a command runs."""

    def __init__(self, folder: Path, every: float = 0.2) -> None:
        self.folder, self.every, self.peak = folder, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):   # a file renamed or removed between listing and stat
                self.peak = max(self.peak, du(self.folder))
            self._stop.wait(self.every)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, du(self.folder))


def layer_sizes(size: int) -> list[int]:
    count = -(-size // LAYER_MAX)
    return [size // count + (1 if i < size % count else 0) for i in range(count)]


def run(work: Path, sizes: list[int]) -> None:
    env = clean_env()
    print(f"bench: scale: reading a pool of {human(POOL)} of real files and {human(POOL)} of random bytes",
          flush=True)
    pools = (random_pool(), real_pool())
    dockerd = services.Dockerd(Path(tempfile.mkdtemp(prefix="bench-docker-", dir=work))).start()
    env["DOCKER_HOST"] = dockerd.host
    rows = []
    try:
        for size in sizes:
            free = shutil.disk_usage(work).free
            if free < BUILD_ROOM * size + MARGIN:
                print(f"bench: scale: skipping {size / GB:g} GiB: {human(free)} free, about "
                      f"{human(BUILD_ROOM * size + MARGIN)} needed", flush=True)
                continue
            rows.append(one_size(work, size, pools, dockerd, env))
    finally:
        dockerd.stop()
        shutil.rmtree(dockerd.root, ignore_errors=True)
    report(rows)


def one_size(work: Path, size: int, pools: tuple[bytes, bytes], dockerd: services.Dockerd,
             env: dict[str, str]) -> dict:
    name = f"{size // GB}g" if size % GB == 0 else f"{size // MB}m"
    registry = services.Registry(work / f"registry-{name}").start()
    out = work / f"scale-{name}"
    try:
        started = time.monotonic()
        pusher = Pusher(registry, f"bench/scale{name}")
        layers = [pusher.layer(layer_tar(part, seed, pools)) for seed, part in enumerate(layer_sizes(size), 1)]
        pusher.image(layers, "1")
        raw = sum(d["raw"] for d in layers)
        print(f"bench: scale {name}: {len(layers)} layers, {human(raw)} raw, {human(sum(d['size'] for d in layers))} "
              f"gzip, pushed in {time.monotonic() - started:.0f} s", flush=True)
        profile = work / f"scale-{name}.yaml"
        profile.write_text("\n".join([f"name: scale{name}", "target:", "  platform: linux/amd64", '  python: "3.10"',
                                      "images:", f"  - {registry.host}/bench/scale{name}:1", "mirrors:",
                                      "  registries:", f"    {registry.host}: [official]", ""]))
        out.mkdir(parents=True)
        with DiskPeak(out) as disk:
            build_s, build_rss = measure([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile),
                                          "-o", str(out / "b.tar.zst"), "--cache", str(out / "cache"), "-q"], env)
        bundle, cache = du(out / "b.tar.zst"), du(out / "cache")
        print(f"bench: scale {name}: build {build_s:.1f} s, peak RSS {human(build_rss)}, bundle {human(bundle)}, "
              f"cache {human(cache)}, peak disk {human(disk.peak)}", flush=True)
        # what the restore does not need goes first: docker's copies of 20 GiB need the room
        shutil.rmtree(out / "cache")
        registry.stop()
        shutil.rmtree(registry.root, ignore_errors=True)
        free = shutil.disk_usage(work).free
        if free < RESTORE_ROOM * size + MARGIN:
            print(f"bench: scale {name}: no restore: {human(free)} free, about {human(RESTORE_ROOM * size + MARGIN)} needed",
                  flush=True)
            return {"name": name, "raw": raw, "layers": len(layers), "build": build_s, "build_rss": build_rss,
                    "restore": None, "restore_rss": 0, "bundle": bundle, "cache": cache, "disk": disk.peak}
        restore_s, restore_rss = measure([sys.executable, "-m", "bundler", "restore", str(out / "b.tar.zst"),
                                          "--images-only", "-q"], env)
        print(f"bench: scale {name}: restore into docker {restore_s:.1f} s, peak RSS {human(restore_rss)}",
              flush=True)
        return {"name": name, "raw": raw, "layers": len(layers), "build": build_s, "build_rss": build_rss,
                "restore": restore_s, "restore_rss": restore_rss, "bundle": bundle, "cache": cache,
                "disk": disk.peak}
    finally:
        registry.stop()
        shutil.rmtree(registry.root, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        ids = dockerd.docker("images", "-aq", check=False).stdout.decode().split()
        if ids:
            dockerd.docker("rmi", "-f", *ids, check=False)
        dockerd.docker("image", "prune", "-af", check=False)


def report(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n" + "=" * 100)
    print(f"the real size: one image, layers <= {LAYER_MAX // GB} GiB, 1/3 random, 2/3 real files; "
          f"build (cold cache, default level), restore --images-only into docker; {os.cpu_count()} cores")
    print(f"{'raw':>10} {'layers':>6} {'build':>8} {'s/GiB':>6} {'restore':>8} {'s/GiB':>6} {'RSS build':>10} "
          f"{'RSS rest.':>10} {'bundle':>10} {'cache':>10} {'peak disk':>10} {'/(b+c)':>7}")
    for r in rows:
        gib = r["raw"] / GB
        restored = (f"{r['restore']:7.1f}s {r['restore'] / gib:6.2f}" if r["restore"] is not None
                    else f"{'-':>8} {'-':>6}")
        print(f"{human(r['raw']):>10} {r['layers']:>6} {r['build']:7.1f}s {r['build'] / gib:6.2f} "
              f"{restored} {human(r['build_rss']):>10} "
              f"{human(r['restore_rss']):>10} {human(r['bundle']):>10} {human(r['cache']):>10} "
              f"{human(r['disk']):>10} {r['disk'] / (r['bundle'] + r['cache']):7.3f}")
    build = [r["build"] / (r["raw"] / GB) for r in rows]
    restore = [r["restore"] / (r["raw"] / GB) for r in rows if r["restore"] is not None] or [0.0]
    rss = max(max(r["build_rss"], r["restore_rss"]) for r in rows)
    disk = max(r["disk"] / (r["bundle"] + r["cache"]) for r in rows)
    print(f"  time per GiB, largest / smallest: build {max(build) / min(build):.2f}, restore "
          f"{max(restore) / max(min(restore), 1e-9):.2f}   [<= 1.10]")
    print(f"  peak RSS, any size: {human(rss)}   [<= 300 MB]  {'met' if rss <= 300e6 else 'MISSED'}")
    print(f"  build's peak disk / (bundle + cache), worst: {disk:.3f}   [<= 1.0]  {'met' if disk <= 1.0 else 'MISSED'}")
