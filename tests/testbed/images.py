"""Images made here from local files, written as OCI layouts and pushed with skopeo.

The busybox of Debian's busybox-static package makes a base that ``docker run`` can execute; other
layers hold real files from this machine, so they compress like real layers do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from bundler.format.media import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST

OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if Path(path).is_file():
            return Path(path)
    raise RuntimeError("busybox is not installed (scripts/setup.sh installs busybox-static)")


def layer_tar(files: dict[str, bytes | str]) -> bytes:
    """An uncompressed layer: ``files`` maps a path to its bytes, or to ``"->target"`` for a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content = files[path]
            info = tarfile.TarInfo(path)
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def busybox_layer() -> bytes:
    files: dict[str, bytes | str] = {"bin/busybox": busybox().read_bytes()}
    for applet in ("sh", "cat", "ls", "echo", "sha256sum", "wc"):
        files[f"bin/{applet}"] = "->busybox"
    return layer_tar(files)


def real_files(source: Path, budget: int, prefix: str = "data") -> dict[str, bytes | str]:
    """Up to ``budget`` bytes of regular files under ``source``, in a stable order."""
    files: dict[str, bytes | str] = {}
    used = 0
    for path in sorted(source.rglob("*")):
        if used >= budget:
            break
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if used + len(data) > budget:
            continue
        files[f"{prefix}/{path.relative_to(source)}"] = data
        used += len(data)
    return files


@dataclass
class ImageSpec:
    """One platform's image: its layers (uncompressed tars) and config."""

    layers: list[bytes]
    platform: tuple[str, str, str | None] = ("linux", "amd64", None)
    cmd: list[str] = field(default_factory=lambda: ["/bin/sh", "-c", "cat /etc/bundler-test.txt"])
    env: list[str] = field(default_factory=lambda: ["PATH=/bin"])
    created: str | None = None      # the config's date, as docker writes it: 2024-05-01T12:00:00.123Z


class Layout:
    """An OCI image layout on disk that tests fill, then push with skopeo."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(self, spec: ImageSpec) -> dict:
        os_, arch, variant = spec.platform
        diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in spec.layers]
        config = {"architecture": arch, "os": os_, "config": {"Cmd": spec.cmd, "Env": spec.env},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created_by": "bundler test bed"} for _ in spec.layers]}
        if variant:
            config["variant"] = variant
        if spec.created:
            config["created"] = spec.created
        layers = [self.blob(gzip.compress(layer, compresslevel=6, mtime=0), OCI_LAYER_GZIP) for layer in spec.layers]
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": self.blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG), "layers": layers}
        descriptor = self.blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
        return descriptor

    def attestation(self, subject: dict) -> dict:
        """A build's provenance for the image ``subject``, as buildx attaches it to an index: a manifest
        of platform unknown/unknown whose layer is an in-toto statement."""
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType":
                                "https://slsa.dev/provenance/v0.2", "subject": [{"digest": {
                                    "sha256": subject["digest"].split(":")[1]}}]}, sort_keys=True).encode()
        config = self.blob(b"{}", OCI_CONFIG)
        layer = self.blob(statement, "application/vnd.in-toto+json")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                               "layers": [layer]}, sort_keys=True).encode()
        descriptor = self.blob(manifest, OCI_MANIFEST)
        descriptor["platform"] = {"os": "unknown", "architecture": "unknown"}
        descriptor["annotations"] = {"vnd.docker.reference.digest": subject["digest"],
                                     "vnd.docker.reference.type": "attestation-manifest"}
        return descriptor

    def add(self, tag: str, specs: list[ImageSpec], index: bool = False, attestations: bool = False) -> dict:
        """Add an image (or, with several specs or ``index``, an image index) under ``tag``; with
        ``attestations``, the index also lists a provenance attestation for each image."""
        descriptors = [self.image(s) for s in specs]
        if attestations:
            descriptors += [self.attestation(d) for d in descriptors]
        if len(descriptors) == 1 and not index:
            top = dict(descriptors[0])
            top.pop("platform")
        else:
            top = self.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
                                       sort_keys=True).encode(), OCI_INDEX)
        top["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.refs.append(top)
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}))
        return top

    def push(self, tag: str, destination: str, docker_format: bool = False,
             creds: str | None = None) -> None:
        """``skopeo copy`` the image under ``tag`` to ``destination`` (``host:port/repo:tag``)."""
        if shutil.which("skopeo") is None:
            raise RuntimeError("skopeo is not installed (scripts/setup.sh installs it)")
        args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--all"]
        if docker_format:
            args += ["--format", "v2s2"]
        if creds:
            args += ["--dest-creds", creds]
        args += [f"oci:{self.root}:{tag}", f"docker://{destination}"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise RuntimeError(f"skopeo copy to {destination} failed: {result.stderr.strip()}")


def sample_layers(scratch_budget: int = 200_000, seed: str = "one") -> list[bytes]:
    """A runnable three-layer image: busybox, real files, and a small file naming the image."""
    return [
        busybox_layer(),
        layer_tar(real_files(Path("/usr/share/common-licenses"), scratch_budget, prefix="usr/share/licenses")),
        layer_tar({"etc/bundler-test.txt": f"hello from bundler test image {seed}\n"}),
    ]
