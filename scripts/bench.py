"""bundler against the manual pipeline and skopeo, side by side in one run, as ratios.

    .venv/bin/python scripts/bench.py                 # the full comparison (about 25 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --runs 1 --skip-scale
    .venv/bin/python scripts/bench.py --only profile [--level 9]   # where one build's time goes (py-spy)
    .venv/bin/python scripts/bench.py --only exact                 # exact images against unpacked ones
    .venv/bin/python scripts/bench.py --only restorer              # the one-file restorer: size, making, start-up
    .venv/bin/python scripts/bench.py --only delta                 # update bundles against full ones
    .venv/bin/python scripts/bench.py --only sbom --runs 7         # what the SBOM adds to a cold build
    .venv/bin/python scripts/bench.py --only models                # a model repository against snapshot_download
    .venv/bin/python scripts/bench.py --only site --runs 1         # push, and 1-4 nodes restoring from the registry
    .venv/bin/python scripts/bench.py --only serve --runs 1        # bundler serve: first pull, 1-4 nodes, the index
    .venv/bin/python scripts/bench.py --only restore --runs 2      # restore into docker against docker load alone

Workload (generated here from real files, cached in ~/.cache/bundler-bench): three images of about
2 GB uncompressed in all that share a base layer of about 1 GB (as CUDA images do), gzip-compressed in a
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
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from isal import isal_zlib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from bundler.format.archive import read_head  # noqa: E402
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
    gz = folder / "layer.tar.gz"
    diff_id, digest = gzip_layer(raw, gz)
    raw.unlink()
    return {"diff_id": diff_id, "digest": digest, "size": gz.stat().st_size, "uncompressed": used, "path": str(gz),
            "files": taken}


def gzip_layer(raw: Path, gz: Path) -> tuple[str, str]:
    """Gzip a layer as registries hold it; its diff_id and its blob's digest."""
    diff, compressed = hashlib.sha256(), hashlib.sha256()
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
    return f"sha256:{diff.hexdigest()}", f"sha256:{compressed.hexdigest()}"


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


def download_wheels(folder: Path) -> list[Path]:
    """Real wheels for linux/amd64 CPython 3.10, from PyPI, once."""
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"bench: downloading {len(WHEELS)} wheels and their dependencies from PyPI (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
                        "3.10", "--implementation", "cp", "--abi", "cp310", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d",
                        str(folder), *WHEELS], check=True, env=clean_env())
        done.write_text("")
    return sorted(folder.glob("*.whl"))


# ---- measuring -----------------------------------------------------------------------------------

@dataclass
class Sample:
    seconds: float
    rss: int             # peak of the summed RSS of the process tree
    disk: int = 0        # what the run left in its folders
    output: int = 0      # the size of what it produced to carry


@dataclass
class Row:
    name: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(s, attribute) for s in self.samples)


def measure(command: list[str] | str, env: dict[str, str], shell: bool = False) -> tuple[float, int]:
    """Run ``command``; wall seconds and the peak RSS of it and its children, polled every 20 ms."""
    args = ["bash", "-o", "pipefail", "-ec", command] if shell else command
    started = time.monotonic()
    process = psutil.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    output = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.monotonic() - started
    reader.join()
    if process.returncode:
        text = (output[0] if output else b"").decode(errors="replace")
        raise SystemExit(f"bench: this failed ({process.returncode}):\n{command}\n{text[-3000:]}")
    return seconds, peak


def du(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            for item in path.rglob("*"):
                if item.is_file() and not item.is_symlink():
                    total += item.stat().st_size
    return total


def human(size: float) -> str:
    return f"{size / MB:,.0f} MiB"


# ---- the pipelines ---------------------------------------------------------------------------------

PIP_TARGET = ("--only-binary=:all: --python-version 3.10 --implementation cp --abi cp310 "
              "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64")


class Bench:
    def __init__(self, work: Path, runs: int, level_small: int) -> None:
        self.work, self.runs, self.level_small = work, runs, level_small
        self.env = clean_env()
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.cpu: dict[str, list[float]] = {}    # CPU seconds of a build's processes, where a row records them

    def add(self, name: str, sample: Sample) -> None:
        self.rows.setdefault(name, Row(name)).samples.append(sample)
        print(f"bench: {name}: {sample.seconds:.1f} s, peak RSS {human(sample.rss)}, disk {human(sample.disk)}, "
              f"output {human(sample.output)}", flush=True)

    def start(self, wheels: list[Path]) -> None:
        self.registry = services.Registry(self.work / "registry").start()
        layout = Workload(CACHE).build("main", main_images())
        self.refs = []
        for tag in ("img1", "img2", "img3"):
            ref = f"{self.registry.host}/bench/{tag}:1"
            push(layout, tag, ref)
            self.refs.append(ref)
        self.index = services.IndexServer(wheels[0].parent).start()
        self.dockerd = services.Dockerd(Path(tempfile.mkdtemp(prefix="bench-docker-"))).start()
        self.env["DOCKER_HOST"] = self.dockerd.host
        self.requirements = self.work / "requirements.txt"
        self.requirements.write_text("".join(f"{r}\n" for r in WHEELS))
        self.python310 = next(iter(sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))), None) \
            or shutil.which("python3.10")
        if not self.python310:
            raise SystemExit("bench: CPython 3.10 is needed for the restore half (pyenv or python3.10 on PATH)")

    def stop(self) -> None:
        for service in (getattr(self, "dockerd", None), getattr(self, "index", None), getattr(self, "registry", None)):
            if service is not None:
                service.stop()

    def profile(self, refs: list[str], wheels: bool = True, name: str = "bench") -> Path:
        lines = [f"name: {name}", "target:", "  platform: linux/amd64", '  python: "3.10"', "images:"]
        lines += [f"  - {ref}" for ref in refs]
        if wheels:
            lines += ["python:", "  requirements:"] + [f"    - {r}" for r in WHEELS]
        lines += ["mirrors:", "  registries:", f"    {self.registry.host}: [official]", f"  pypi: [{self.index.url}]"]
        path = self.work / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def docker_reset(self) -> None:
        ids = self.dockerd.docker("images", "-aq").stdout.decode().split()
        if ids:
            self.dockerd.docker("rmi", "-f", *ids, check=False)
        self.dockerd.docker("image", "prune", "-af", check=False)

    def fresh(self, name: str) -> Path:
        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    # -- build --
    def manual_build(self) -> Path:
        self.docker_reset()
        out = self.fresh("manual")
        data_root = self.dockerd.root / "data"
        before = du(data_root)
        script = (" && ".join(f"docker pull -q {r} >/dev/null" for r in self.refs)
                  + f" && docker save {' '.join(self.refs)} | zstd -T0 -3 -q -o {out}/images.tar.zst"
                  + f" && pip download -q {PIP_TARGET} --index-url {self.index.url} -d {out}/wheels "
                    f"-r {self.requirements}"
                  + f" && tar -C {out} -c wheels | zstd -T0 -3 -q -o {out}/wheels.tar.zst")
        seconds, rss = measure(script, self.env, shell=True)
        output = du(out / "images.tar.zst", out / "wheels.tar.zst")
        self.add("build: manual (docker pull, save | zstd, pip download)",
                 Sample(seconds, rss, du(out) + du(data_root) - before, output))
        return out

    def skopeo_build(self) -> None:
        out = self.fresh("skopeo")
        copies = " && ".join(f"skopeo copy -q --src-tls-verify=false docker://{r} oci:{out}/oci/img{i}:1"
                             for i, r in enumerate(self.refs, 1))
        script = (f"mkdir -p {out}/oci && {copies} && tar -C {out} -c oci | zstd -T0 -3 -q -o {out}/images.tar.zst"
                  f" && pip download -q {PIP_TARGET} --index-url {self.index.url} -d {out}/wheels "
                  f"-r {self.requirements}"
                  f" && tar -C {out} -c wheels | zstd -T0 -3 -q -o {out}/wheels.tar.zst")
        seconds, rss = measure(script, self.env, shell=True)
        self.add("build: skopeo copy + zstd, pip download", Sample(seconds, rss, du(out), du(
            out / "images.tar.zst", out / "wheels.tar.zst")))

    def bundler_build(self, label: str, profile: Path, level: int | None = None) -> Path:
        out = self.fresh(label.replace(" ", "-").replace(":", "").replace("/", ""))
        args = [sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o", str(out / "b.tar.zst"),
                "--cache", str(out / "cache"), "-q"]   # the restorer has rows of its own: --only restorer
        if level is not None:
            args += ["--level", str(level)]
        seconds, rss = measure(args, self.env)
        self.add(label, Sample(seconds, rss, du(out), du(out / "b.tar.zst")))
        return out

    # -- restore --
    def manual_restore(self, manual: Path) -> None:
        self.docker_reset()
        target = self.fresh("manual-restore")
        script = (f"zstd -dc {manual}/images.tar.zst | docker load -q >/dev/null"
                  f" && zstd -dc {manual}/wheels.tar.zst | tar -x -C {target}"
                  f" && {self.python310} -m venv {target}/venv"
                  f" && {target}/venv/bin/pip install -q --no-index --find-links {target}/wheels "
                  f"-r {self.requirements}")
        seconds, rss = measure(script, self.env, shell=True)
        self.add("restore: manual (zstd -dc | docker load, venv, pip install)", Sample(seconds, rss, du(target)))

    def bundler_restore(self, built: Path) -> None:
        self.docker_reset()
        target = self.fresh("bundler-restore")
        seconds, rss = measure([sys.executable, "-m", "bundler", "restore", str(built / "b.tar.zst"), "--dest",
                                str(target), "--python", str(self.python310), "-q"], self.env)
        self.add("restore: bundler", Sample(seconds, rss, du(target)))

    # -- pulling only (issue: images) --
    def pulls(self) -> None:
        out = self.fresh("pull-skopeo")
        copies = " && ".join(f"skopeo copy -q --src-tls-verify=false docker://{r} oci:{out}/oci:img{i}"
                             for i, r in enumerate(self.refs, 1))
        seconds, rss = measure(copies, self.env, shell=True)
        self.add("pull: skopeo copy (3 images, one OCI layout)", Sample(seconds, rss, du(out)))
        out = self.fresh("pull-skopeo-decompress")
        copies = " && ".join(f"skopeo copy -q --src-tls-verify=false --dest-decompress docker://{r} dir:{out}/img{i}"
                             for i, r in enumerate(self.refs, 1))
        seconds, rss = measure(copies, self.env, shell=True)
        self.add("pull: skopeo copy --dest-decompress (uncompressed layers)", Sample(seconds, rss, du(out)))
        out = self.fresh("pull-bundler")
        code = ("import sys; from pathlib import Path; from bundler.build.context import BuildContext; "
                "from bundler.build.profile import load_profile; from bundler.build.verb import lock; "
                "from bundler.build.images.pull import Registries, fetch_images; "
                "from bundler.build.images.layers import LayerFrames; "
                "from bundler.build.pack import DEFAULT_LEVEL; p = load_profile(sys.argv[1]); "
                "c = BuildContext.create(p, cache_dir=Path(sys.argv[2])); l = lock(p, c, ['images']); "
                "fetch_images(list(l.images), Registries(c.mirrors, c.fallback), LayerFrames(c.cache, DEFAULT_LEVEL), "
                "c.jobs)")
        seconds, rss = measure([sys.executable, "-c", code, str(self.profile(self.refs, wheels=False, name="pull")),
                                str(out / "cache")], self.env)
        self.add("pull: bundler (3 images into the cache, gunzipped and verified)", Sample(seconds, rss, du(out)))
        # (bundler's cache also holds each layer compressed for the bundle: work skopeo never does)

    # -- the SBOM's cost (issue: trust) --
    NO_SCAN = ("import sys\n"
               "import bundler.build.images.layers\n"
               "class NoScan:\n"
               "    def feed(self, data): pass\n"
               "    def findings(self): return {'files': {}, 'links': {}, 'whiteouts': [], 'opaque': []}\n"
               "bundler.build.images.layers.LayerScan = NoScan\n"
               "from bundler import cli\n"
               "raise SystemExit(cli.main(sys.argv[1:]))\n")

    def sbom_rows(self, profile: Path) -> None:
        """A cold build as it is, beside the same build with the layer scan stubbed out (the SBOM then
        lists images, layers and wheels only): what finding the packages costs. Alternated, so that
        the machine's other load falls on both alike."""
        for label, prefix in (("build: bundler, SBOM with every package (as shipped)", ["-m", "bundler"]),
                              ("build: bundler, layer scan stubbed out", ["-c", self.NO_SCAN])):
            out = self.fresh("sbom-" + label.split(",")[1].split()[0])
            args = [sys.executable, *prefix, "build", str(profile), "-o", str(out / "b.tar.zst"), "--cache",
                    str(out / "cache"), "-q"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, rss = measure(args, self.env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpu.setdefault(label, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            self.add(label, Sample(seconds, rss, du(out), du(out / "b.tar.zst")))
            if "shipped" in label:
                sbom = subprocess.run([sys.executable, "-m", "bundler", "sbom", str(out / "b.tar.zst"), "-q"],
                                      env=self.env, capture_output=True, check=True).stdout
                found = json.loads(sbom)
                count = sum(1 for image in found["components"] for c in image.get("components", [])
                            if c["type"] == "library")
                self.notes.append(f"SBOM: {len(sbom) // 1024} KiB, {count} packages found inside the images")

    @staticmethod
    def scan_throughput() -> str:
        """LayerScan alone over each of the workload's layers (gunzipped on the way, not counted)."""
        from bundler.build.images.layerscan import LayerScan
        lines = []
        for path in sorted(p for p in (CACHE / "main" / "blobs" / "sha256").iterdir() if p.stat().st_size > MB):
            decoder, scan, spent, size, files = isal_zlib.decompressobj(31), LayerScan(), 0.0, 0, 0
            with open(path, "rb") as handle:
                while chunk := handle.read(MB):
                    data = decoder.decompress(chunk)
                    started = time.process_time()
                    scan.feed(data)
                    spent += time.process_time() - started
                    size += len(data)
            with tarfile.open(path, "r:gz") as tar:
                files = sum(1 for _ in tar)
            lines.append(f"layer scan alone, layer {path.name[:12]}: {size / MB:,.0f} MiB, {files:,} entries, "
                         f"{spent:.2f} CPU s ({size / MB / max(spent, 1e-3):,.0f} MiB/s)")
        return "\n".join(lines)

    @staticmethod
    def sbom_render_time(images: int = 3, packages: int = 600, wheels: int = 100) -> str:
        """The SBOM of a CUDA-sized stack (the workload's images hold few packages): what rendering
        it with cyclonedx-python-lib costs."""
        from bundler.build.images.layerscan import ImageContents, Package
        from bundler.build.sbom import SbomInput, render
        from bundler.digest import Digest
        from bundler.format.head import WheelEntry
        from bundler.format.images import ImageEntry

        def digest(n: int) -> Digest:
            return Digest.from_hex(f"{n:064x}")
        entries = tuple(ImageEntry(f"img{i}", f"docker.io/team/img{i}:1", digest(i), index_digest=None, platform="linux/amd64", source="registry",
                                   id=digest(100 + i), tags=(f"team/img{i}:1",), size=1, layer_digests=(digest(200 + i),), layer_sizes=(1,), manifest=digest(300 + i), manifest_size=1)
                        for i in range(images))
        contents = tuple(ImageContents({"ID": "ubuntu", "VERSION_ID": "22.04"}, tuple(
            Package(kind="deb" if j < packages * 2 // 3 else "pypi", name=f"pkg{j}", version=f"1.{j}", arch="amd64", path="x")
            for j in range(packages))) for _ in range(images))
        pins = tuple(WheelEntry(f"w{j}", "1.0", f"w{j}-1.0-py3-none-any.whl", sha256="a" * 64, size=1, built=False) for j in range(wheels))
        started = time.process_time()
        text = render(SbomInput(profile="bench", description="", platform="linux/amd64", python="3.10", created=0,
                                lock_text=None, images=entries, contents=contents, wheels=pins, seed="bench"))
        return (f"rendering an SBOM of {images} images x {packages} packages and {wheels} wheels: "
                f"{time.process_time() - started:.2f} CPU s ({len(text) // 1024} KiB)")

    # -- where the time goes --
    def profile_build(self, level: int | None, spy: str) -> None:
        """One bundler build as it is (its fetch/pack split and the CPU it used: zstd's own workers
        included, which py-spy cannot see), then one under py-spy: what the Python threads were doing."""
        out = self.fresh("profile")
        build = [sys.executable, "-m", "bundler", "build", "--no-restorer", str(self.profile(self.refs)), "-o",
                 str(out / "b.tar.zst"), "--cache", str(out / "cache")] + (["--level", str(level)] if level is not None
                                                                          else [])
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        said = subprocess.run(build, env=self.env, capture_output=True, text=True, check=False)
        wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
        if said.returncode:
            raise SystemExit(f"bench: the profiled build failed:\n{(said.stdout + said.stderr)[-3000:]}")
        print("profile: " + next(line for line in (said.stdout + said.stderr).splitlines() if "wrote" in line))
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        print(f"  CPU: {user:.1f} s user + {system:.1f} s system over {wall:.1f} s wall: {(user + system) / wall:.2f} "
              f"of {CORES} cores busy (uv included; the local registry serving it is not)")
        shutil.rmtree(out)
        out.mkdir()
        raw = Path(tempfile.gettempdir()) / "bundler-build.pyspy"   # kept: collapsed stacks for a flame graph
        started = time.monotonic()
        subprocess.run([spy, "record", "--threads", "--native", "--format", "raw", "--rate", "100", "-o", str(raw),
                        "--", *build, "-q"], env=self.env, check=True, capture_output=True)
        print(f"profile: the same build under py-spy: {time.monotonic() - started:.1f} s wall "
              "(sampling with native frames slows it; compare shares, not seconds)")
        print_profile(raw)
        print(f"  (collapsed stacks in {raw}; flamegraph.pl or speedscope draw them)")

    # -- limits --
    def limits(self, level: int) -> dict:
        """Raw zstd on the same uncompressed bytes, and the CPU seconds nobody can avoid for them."""
        from bundler.build.images.layers import WINDOW_LOG
        gz = [p for p in (CACHE / "main" / "blobs" / "sha256").iterdir() if p.stat().st_size > MB]
        raw_dir = self.fresh("raw")
        started = time.process_time()
        raw_files = []
        for path in gz:   # gunzip, on one core, as bundler must do it; the output is the raw members
            decoder = isal_zlib.decompressobj(31)
            target = raw_dir / path.name
            with open(path, "rb") as handle, open(target, "wb") as out:
                while chunk := handle.read(MB):
                    out.write(decoder.decompress(chunk))
            raw_files.append(target)
        result: dict = {"gunzip": time.process_time() - started}
        raw_files += sorted(CACHE.glob("wheels/*.whl"))
        result["raw_bytes"] = sum(p.stat().st_size for p in raw_files)
        started = time.process_time()
        for path in gz + raw_files:
            hasher = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(MB):
                    hasher.update(chunk)
        result["sha256"] = time.process_time() - started
        listing = self.work / "members.txt"
        listing.write_text("".join(f"{p}\n" for p in raw_files))
        result["zstd"] = {}
        for flags in ("-3", f"-{level} --long={WINDOW_LOG}"):
            before = os.times()
            started = time.monotonic()
            size = subprocess.run(["bash", "-o", "pipefail", "-c", f"xargs -a {listing} cat | zstd -T0 {flags} -q -c | wc -c"],
                                  capture_output=True, text=True, check=True).stdout
            after = os.times()
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            result["zstd"][f"zstd {flags}"] = (time.monotonic() - started, int(size), cpu)
        shutil.rmtree(raw_dir, ignore_errors=True)
        return result

    # -- scale --
    def scale(self) -> list[tuple[str, Sample]]:
        rows = []
        for count in (1, 2, 3):
            out = self.bundler_build(f"scale: {count} image(s) sharing the base", self.profile(self.refs[:count],
                                     wheels=False, name=f"scale{count}"))
            unique = sum(m["size"] for m in read_head(out / "b.tar.zst")[0]["members"])
            rows.append((f"{count} image(s), {human(unique)} unique",
                         self.rows[f"scale: {count} image(s) sharing the base"].samples[-1]))
        for gigabytes in (1, 2, 4):
            layout = Workload(CACHE).build(f"scale-{gigabytes}g", scale_images(gigabytes))
            ref = f"{self.registry.host}/bench/scale{gigabytes}:1"
            push(layout, "scale", ref)
            label = f"scale: {gigabytes} GB image"
            self.bundler_build(label, self.profile([ref], wheels=False, name=f"scale{gigabytes}g"))
            rows.append((f"{gigabytes} GB image", self.rows[label].samples[-1]))
        return rows


PROFILE_KINDS = [  # (what, a marker in a sampled stack), first match wins
    ("gunzip (isal)", "isal_zlib"), ("sha256", "SHA256"), ("zstd", "backend_c"), ("zstd", "zstd"),
    ("copy into the bundle", "copy_file_range"), ("socket reads", "readinto"), ("file writes", "write (libc"),
    ("waiting (locks, queues)", "acquire_lock"), ("waiting (locks, queues)", "Condition.wait"),
    ("waiting (locks, queues)", "sem_wait"), ("waiting (sockets)", "poll"), ("waiting (sockets)", "select"),
]


def print_profile(raw: Path) -> None:
    """Summarise py-spy's collapsed stacks: each sample is put in the first kind whose marker its stack
    holds, per thread (named threads keep their name, numbered ones lose the number)."""
    table: dict[str, dict[str, int]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        head, _, rest = stack.partition(";")
        thread = head.partition(": ")[2].rstrip("0123456789_") or ("main" if "runpy" in rest else "other")
        kind = next((what for what, marker in PROFILE_KINDS if marker in rest), "python and the rest")
        row = table.setdefault(thread, {})
        row[kind] = row.get(kind, 0) + int(count)
    total = sum(sum(row.values()) for row in table.values())
    print(f"  samples by thread and kind (share of {total}):")
    for thread, row in sorted(table.items(), key=lambda kv: -sum(kv[1].values())):
        kinds = ", ".join(f"{what} {100 * n / total:.0f}%" for what, n in sorted(row.items(), key=lambda kv: -kv[1])
                          if 100 * n / total >= 0.5)
        print(f"    {thread:14} {100 * sum(row.values()) / total:4.0f}%  {kinds}")


def report(bench: Bench, limits: dict, scale: list[tuple[str, Sample]]) -> None:
    rows = bench.rows
    print("\n" + "=" * 100)
    print(f"bundler benchmark, {CORES} cores, median of {bench.runs} run(s); workload: 3 images, "
          f"{human(limits['raw_bytes'])} of members (layers + wheels) before compression")
    print(f"{'':68} {'time':>8} {'peak RSS':>10} {'disk':>10} {'output':>10}")
    for name, row in rows.items():
        if name.startswith("scale:"):
            continue
        print(f"{name:68} {row.median('seconds'):7.1f}s {human(row.median('rss')):>10} {human(row.median('disk')):>10} "
              f"{human(row.median('output')):>10}")

    def med(name: str, attribute: str = "seconds") -> float:
        return rows[name].median(attribute)

    manual, skopeo = "build: manual (docker pull, save | zstd, pip download)", "build: skopeo copy + zstd, pip download"
    default, small = "build: bundler (default level)", f"build: bundler --level {bench.level_small}"
    ours = next(name for name in limits["zstd"] if "--long" in name)
    zstd_cpu = limits["zstd"][ours][2]
    limit = (limits["gunzip"] + limits["sha256"] + zstd_cpu) / CORES
    checks = [
        ("build time, bundler / manual", med(default) / med(manual), 0.25),
        ("build time, bundler / skopeo", med(default) / med(skopeo), 0.6),
        ("build time, bundler / limit", med(default) / limit, 1.5),
        ("bundle size, bundler / manual", med(default, "output") / med(manual, "output"), 0.95),
        (f"small: bundle size, --level {bench.level_small} / manual", med(small, "output") / med(manual, "output"), 0.83),
        (f"small: build time, --level {bench.level_small} / manual", med(small) / med(manual), 0.5),
        ("restore time, bundler / manual", med("restore: bundler") / med(
            "restore: manual (zstd -dc | docker load, venv, pip install)"), 0.8),
        ("pull time, bundler / skopeo", med("pull: bundler (3 images into the cache, gunzipped and verified)") / med(
            "pull: skopeo copy (3 images, one OCI layout)"), 0.6),
        ("pull time, bundler / skopeo --dest-decompress", med(
            "pull: bundler (3 images into the cache, gunzipped and verified)") / med(
            "pull: skopeo copy --dest-decompress (uncompressed layers)"), 0.6),
    ]
    peak = max(s.rss for name, row in rows.items() if "bundler" in name for s in row.samples)
    print("\nratios (goal in brackets)")
    for name, ratio, goal in checks:
        print(f"  {name:52} {ratio:6.3f}   [<= {goal}]  {'met' if ratio <= goal else 'MISSED'}")
    print(f"  {'peak RSS of any bundler run':52} {human(peak):>6}   [< 300 MiB]  {'met' if peak < 300 * MB else 'MISSED'}")
    print("\nlimits on this machine, for the same uncompressed bytes")
    for name, (seconds, size, cpu) in limits["zstd"].items():
        print(f"  raw {name:28} {seconds:6.1f} s wall, {cpu:5.1f} CPU s, {human(size)}")
    print(f"  gunzip (isal, one core)          {limits['gunzip']:6.1f} CPU s")
    print(f"  sha256 (compressed + raw)        {limits['sha256']:6.1f} CPU s")
    print(f"  unavoidable CPU / {CORES} cores        {limit:6.1f} s; bundler build = {med(default) / limit:.2f}x of it")
    if scale:
        print("\nscale (bundler build, images only)")
        for label, sample in scale:
            print(f"  {label:40} {sample.seconds:6.1f} s  {human(sample.output):>10}  RSS {human(sample.rss)}")


def restorer_rows(work: Path, runs: int) -> None:
    """The one-file restorer: making it (cold cache, then cached), its size, and how long a bare CPython
    takes to start it (first run: shiv unpacks it under HOME; then warm), beside the installed bundler."""
    wheels = REPO / ".testbed-wheels" / "restorer"
    if not (wheels / ".complete").is_file():
        raise SystemExit("bench: --only restorer serves the wheels scripts/setup.sh downloads; run it first")
    index = services.IndexServer(wheels).start()
    try:
        mirrors = work / "mirrors.yaml"
        mirrors.write_text(f"pypi: [{index.url}]\n")
        env, out, cache = clean_env(), work / "restorer.pyz", work / "cache"
        make = [sys.executable, "-m", "bundler", "restorer", "-o", str(out), "--mirrors", str(mirrors), "--cache",
                str(cache), "--force", "-q"]
        for label in ("make (wheels fetched, unpacked, zipped)", "make again (from the cache)"):
            seconds, rss = measure(make, env)
            print(f"restorer: {label:44} {seconds:6.2f} s  peak RSS {human(rss)}")
        print(f"restorer: size {out.stat().st_size / MB:.1f} MiB, {len(zipfile.ZipFile(out).namelist())} files")
        golden = REPO / "tests" / "golden" / "format1-bundler-0.1.0.tar.zst"
        commands = [("installed bundler (.venv)", [sys.executable, "-m", "bundler"])]
        for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            python = next(iter(sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))), None)
            if python is None:
                raise SystemExit(f"bench: no CPython {version} under ~/.pyenv")
            commands.append((f"restorer, CPython {version}", [str(python), "-I", str(out)]))
        for label, command in commands:
            home = Path(tempfile.mkdtemp(prefix="bench-home-", dir=work))
            at = {**env, "HOME": str(home)}
            cold = measure([*command, "--version"], at)[0]
            warm = statistics.median(measure([*command, "--version"], at)[0] for _ in range(runs))
            shown = statistics.median(measure([*command, "inspect", str(golden)], at)[0] for _ in range(runs))
            print(f"restorer: {label:28} --version first {cold:5.2f} s, then {warm:5.2f} s; "
                  f"inspect {shown:5.2f} s; unpacked under HOME {human(du(home))}", flush=True)
    finally:
        index.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--level-small", type=int, default=9, help="the 'small' operating point's zstd level")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--only", choices=["pull", "profile", "exact", "restorer", "delta", "sbom", "models", "site",
                                           "serve", "small", "scale", "restore"],
                        help="run only this part: the pull rows, one bundler build profiled (where its time goes), "
                             "exact images against unpacked ones (scripts/bench_exact.py), the one-file "
                             "restorer's size and start-up, update bundles (scripts/bench_delta.py), the "
                             "SBOM's cost (builds with and without the layer scan), or a model repository "
                             "against snapshot_download (scripts/bench_models.py), or the site's registry for a "
                             "cluster: push, and 1, 2 and 4 nodes restoring from it (scripts/bench_site.py), or "
                             "bundler serve: from start to a node's first pull, 1, 2 and 4 nodes pulling and "
                             "pip-installing at once, the index's throughput, serve's RSS (scripts/bench_serve.py), "
                             "or --level-small against the manual pipeline (scripts/bench_small.py), or synthetic "
                             "stacks of --scale sizes built and restored (scripts/bench_scale.py), or restore into "
                             "docker against docker load alone, 1, 2 and 4 images (scripts/bench_restore.py)")
    parser.add_argument("--scale", default="1G,4G,20G", help="with --only scale: the sizes (scripts/bench_scale.py)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable for --only profile")
    parser.add_argument("--level", type=int, help="with --only profile: the zstd level of the profiled build")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bundler-bench-work")
    args = parser.parse_args()
    from bundler.build.pack import DEFAULT_LEVEL
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.only == "restorer":
        restorer_rows(args.work, args.runs)
        shutil.rmtree(args.work, ignore_errors=True)
        return 0
    if args.only == "scale":   # a GPU stack's real size: build and restore at each --scale (scripts/bench_scale.py)
        import bench_scale
        bench_scale.run(args.work, bench_scale.parse_sizes(args.scale))
        shutil.rmtree(args.work, ignore_errors=True)
        return 0
    if args.only == "models":
        import bench_models
        bench_models.run(args.work, args.runs)
        shutil.rmtree(args.work, ignore_errors=True)
        return 0
    wheels = download_wheels(CACHE / "wheels")
    print(f"bench: {len(wheels)} wheels, {human(sum(w.stat().st_size for w in wheels))}", flush=True)
    bench = Bench(args.work, args.runs, args.level_small)
    try:
        bench.start(wheels)
        if args.only == "pull":
            for _ in range(args.runs):
                bench.pulls()
            for name, row in bench.rows.items():
                print(f"{name:68} {row.median('seconds'):7.1f}s {human(row.median('rss')):>10} "
                      f"{human(row.median('disk')):>10}")
            return 0
        if args.only == "exact":
            import bench_exact
            bench_exact.run(bench, args.runs)
            return 0
        if args.only == "site":
            import bench_site
            bench_site.run(bench, args.runs)
            return 0
        if args.only == "serve":
            import bench_serve
            bench_serve.run(bench, args.runs)
            return 0
        if args.only == "small":   # --level-small against the manual pipeline (scripts/bench_small.py)
            import bench_small
            bench_small.run(bench, args.runs)
            return 0
        if args.only == "restore":
            import bench_restore
            bench_restore.run(bench, args.runs)
            return 0
        if args.only == "delta":
            import bench_delta
            bench_delta.run(bench, args.runs)
            return 0
        if args.only == "sbom":
            for _ in range(args.runs):
                bench.sbom_rows(bench.profile(bench.refs))
            names = list(bench.rows)[:2]
            with_scan, without = (bench.rows[name].median("seconds") for name in names)
            cpu_with, cpu_without = (statistics.median(bench.cpu[name]) for name in names)
            for name, row in bench.rows.items():
                print(f"{name:58} {row.median('seconds'):7.1f}s wall {statistics.median(bench.cpu[name]):7.1f}s CPU "
                      f"{human(row.median('rss')):>10}")
            print(f"the SBOM adds {100 * (with_scan / without - 1):+.1f}% to a cold build's wall time, "
                  f"{100 * (cpu_with / cpu_without - 1):+.1f}% to its CPU time (medians of {args.runs})")
            print("\n".join([*dict.fromkeys(bench.notes), bench.scan_throughput(), bench.sbom_render_time()]))
            return 0
        if args.only == "profile":
            if not args.py_spy:
                raise SystemExit("bench: --only profile needs py-spy (pip install py-spy, or --py-spy PATH)")
            bench.profile_build(args.level, args.py_spy)
            return 0
        profile = bench.profile(bench.refs)
        built = manual = None
        for _ in range(args.runs):
            manual = bench.manual_build()
            bench.skopeo_build()
            built = bench.bundler_build("build: bundler (default level)", profile)
            bench.bundler_build(f"build: bundler --level {args.level_small}", profile, args.level_small)
        for _ in range(args.runs):
            bench.manual_restore(manual)
            bench.bundler_restore(built)
        for _ in range(args.runs):
            bench.pulls()
        limits = bench.limits(DEFAULT_LEVEL)
        scale = [] if args.skip_scale else bench.scale()
        report(bench, limits, scale)
    finally:
        bench.stop()
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
