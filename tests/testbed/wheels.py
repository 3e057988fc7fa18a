"""Wheels and sdists built here, for the index fixture: pure and platform-tagged, with dependencies."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, name: str, version: str, requires: list[str] = (), tag: str = "py3-none-any",
                requires_python: str | None = None, module_code: str | None = None,
                payload: bytes = b"", *, extra_files: int = 0) -> Path:
    """Write ``{name}-{version}-{tag}.whl`` into ``dest``: a module that imports and reports itself, and
    ``extra_files`` small modules beside it (a wheel that takes pip a few seconds to install)."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    module = dist.lower()
    info = f"{dist}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{module}/__init__.py": (module_code or f"VERSION = {version!r}\nNAME = {name!r}\n").encode(),
        f"{info}/METADATA": ("\n".join(metadata) + "\n").encode(),
        f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: bundler-testbed\n"
                          f"Root-Is-Purelib: {'true' if tag.endswith('none-any') else 'false'}\nTag: {tag}\n").encode(),
    }
    if payload:
        files[f"{module}/payload.bin"] = payload
    for number in range(extra_files):
        files[f"{module}/part{number:05d}.py"] = f"PART = {number}\n".encode()
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = dest / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            entry = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)
    return path


# A PEP 517 backend small enough to ship inside the sdist, so building needs no index at all.
_BACKEND = '''
import base64, hashlib, os, zipfile

NAME, VERSION, TAG = {name!r}, {version!r}, {tag!r}

def _h(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist = NAME.replace("-", "_")
    info = dist + "-" + VERSION + ".dist-info"
    files = {{
        dist.lower() + "/__init__.py": open("src.py", "rb").read(),
        info + "/METADATA": ("Metadata-Version: 2.1\\nName: " + NAME + "\\nVersion: " + VERSION + "\\n").encode(),
        info + "/WHEEL": ("Wheel-Version: 1.0\\nGenerator: in-tree\\nRoot-Is-Purelib: true\\nTag: " + TAG + "\\n").encode(),
    }}
    record = "".join(p + "," + _h(d) + "," + str(len(d)) + "\\n" for p, d in files.items()) + info + "/RECORD,,\\n"
    files[info + "/RECORD"] = record.encode()
    filename = dist + "-" + VERSION + "-" + TAG + ".whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for member, data in sorted(files.items()):
            zf.writestr(zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return filename
'''


def build_sdist(dest: Path, name: str, version: str, wheel_tag: str = "py3-none-any") -> Path:
    """An sdist whose in-tree backend builds a wheel tagged ``wheel_tag`` (pure, or claiming a platform)."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    base = f"{dist}-{version}"
    files = {
        "pyproject.toml": ('[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
                           f'[project]\nname = "{name}"\nversion = "{version}"\n'),
        "backend.py": _BACKEND.format(name=name, version=version, tag=wheel_tag),
        "src.py": f"VERSION = {version!r}\nBUILT_FROM_SDIST = True\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    path = dest / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1577836800
            tar.addfile(info, io.BytesIO(data))
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def incompressible(size: int, seed: bytes = b"bundler") -> bytes:
    """Deterministic bytes that do not compress (a sha256 chain)."""
    out, block = bytearray(), seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])
