"""bundler against the manual pipeline and skopeo, side by side in one run, as ratios.

    .venv/bin/python scripts/bench.py                 # the full comparison (about 15 minutes here)
    .venv/bin/python scripts/bench.py --runs 1 --skip-scale

Workload (generated here from real files, cached in ~/.cache/bundler-bench): three images of about
2 GB uncompressed in all that share a 1.2 GB base layer (as CUDA images do), gzip-compressed in a
local registry, and 200+ MB of real wheels from PyPI (downloaded once) in a local PEP 503 index.

Compared, each --runs times (median reported): build (a) the manual pipeline: docker pull through
a real dockerd, docker save | zstd -T0 -3, pip download + tar | zstd; (b) skopeo copy + tar | zstd
(with the same pip download); (c) bundler build. Restore: zstd -dc | docker load + venv + pip
install --no-index, against bundler restore. Then the limits (raw zstd, and the CPU seconds that
cannot be avoided) and the scale rows. Peak RSS is the peak of the summed RSS of the process tree
(daemons excluded); extra disk is what the run leaves in its folders (for the manual pipeline,
docker's data root included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from isal import igzip, isal_zlib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from testbed import services  # noqa: E402

CACHE = Path(os.environ.get("BUNDLER_BENCH_CACHE", Path.home() / ".cache" / "bundler-bench"))
GZIP_LEVEL = 3   # isal level 3: 10x zlib's speed, 11% larger than gzip -6; registries hold gzip of any level
CORES = os.cpu_count() or 1
BASE_SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/llvm-14", "/usr/local/cuda-13.0", "/usr/lib/jvm"]
TOP_SOURCES = [["/root/.pyenv/versions/3.12.1"], ["/root/.pyenv/versions/3.13.0"], ["/usr/lib/gcc", "/usr/include"]]
SCALE_SOURCES = BASE_SOURCES + ["/root/.pyenv/versions", "/usr/lib/google-cloud-sdk", "/usr/share", "/usr/bin",
                                "/opt/pypi"]
WHEELS = ["pyarrow==17.0.0", "scipy==1.13.1", "opencv-python-headless==4.10.0.84", "pandas==2.2.2",
          "numpy==1.26.4", "jaxlib==0.4.30", "grpcio==1.64.1"]
MB = 1 << 20
GB = 1 << 30


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    return env


# ---- workload ----------------------------------------------------------------------------------

def _files(sources: list[str]) -> list[Path]:
    found = []
    for source in sources:
        root = Path(source)
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def write_layer(folder: Path, sources: list[str], budget: int, skip: set[Path] | None = None) -> dict:
    """A layer of real files (up to ``budget`` bytes), as an uncompressed tar and its gzip; digests streamed."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, used = folder / "layer.tar", 0
    taken: set[Path] = set()
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(sources):
            if skip and path in skip:
                continue
            try:
                size = path.stat().st_size
                if used + size > budget:
                    continue
                info = tar.gettarinfo(str(path), arcname=str(path).lstrip("/"))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            except OSError:
                continue
            used += size
            taken.add(path)
            if used >= budget * 0.995:
                break
    diff, compressed = hashlib.sha256(), hashlib.sha256()
    gz = folder / "layer.tar.gz"
    with open(raw, "rb") as source, open(gz, "wb") as out:
        encoder = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        while chunk := source.read(MB):
            diff.update(chunk)
            data = encoder.compress(chunk)
            compressed.update(data)
            out.write(data)
        data = encoder.flush()
        compressed.update(data)
        out.write(data)
    raw.unlink()
    return {"diff_id": f"sha256:{diff.hexdigest()}", "digest": f"sha256:{compressed.hexdigest()}",
            "size": gz.stat().st_size, "uncompressed": used, "path": str(gz), "files": taken}


class Workload:
    """OCI layouts built once from real files, then pushed to a registry for each bench run."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def build(self, name: str, images: dict[str, list[tuple[str, list[str], int]]]) -> Path:
        """An OCI layout with one image per tag, built once from real files and cached."""
        layout = self.root / name
        done = layout / "index.json"
        if done.exists():
            return layout
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        built: dict[str, dict] = {}
        used: set[Path] = set()
        refs = []
        for tag, layers in images.items():
            descriptors = []
            for key, sources, budget in layers:
                if key not in built:
                    print(f"bench: writing layer {key} ({budget // MB} MiB of real files)", flush=True)
                    layer = write_layer(self.root / "tmp" / key, sources, budget, skip=used)
                    used |= layer.pop("files")
                    os.replace(layer["path"], blobs / layer["digest"].split(":")[1])
                    built[key] = layer
                descriptors.append(built[key])
            config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                                 "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in descriptors]}},
                                sort_keys=True).encode()
            config_digest = hashlib.sha256(config).hexdigest()
            (blobs / config_digest).write_bytes(config)
            manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": f"sha256:{config_digest}", "size": len(config)},
                                   "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                               "digest": d["digest"], "size": d["size"]} for d in descriptors]},
                                  sort_keys=True).encode()
            manifest_digest = hashlib.sha256(manifest).hexdigest()
            (blobs / manifest_digest).write_bytes(manifest)
            refs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "digest": f"sha256:{manifest_digest}", "size": len(manifest),
                         "annotations": {"org.opencontainers.image.ref.name": tag}})
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        done.write_text(json.dumps({"schemaVersion": 2, "manifests": refs}))
        return layout


def push(layout: Path, tag: str, destination: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2",
                    f"oci:{layout}:{tag}", f"docker://{destination}"], check=True)


def main_images() -> dict[str, list[tuple[str, list[str], int]]]:
    base = ("base", BASE_SOURCES, int(1.2 * GB))
    return {f"img{i + 1}": [base, (f"top{i + 1}", TOP_SOURCES[i], 270 * MB)] for i in range(3)}


def scale_images(gigabytes: int) -> dict[str, list[tuple[str, list[str], int]]]:
    layers = [(f"s{gigabytes}-{i}", SCALE_SOURCES, 512 * MB) for i in range(gigabytes * 2)]
    return {"scale": layers}
