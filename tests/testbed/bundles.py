"""Bundles crafted by hand, to show that a hostile one is refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import zstandard


def craft(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], listed: list[dict] | None = None,
          head_extra: dict | None = None) -> Path:
    """A bundle: bundle.json (its own frame) listing ``listed`` (default: the regular members), then ``members``."""
    if listed is None:
        listed = [{"path": info.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for info, data in members if info.isreg()]
    head = {"format": 1, "tool": "bundler test", "created": 0, "lock": "",
            "profile": {"name": "hostile", "description": "", "check": None, "source": ""},
            "target": {"platform": "linux/amd64", "python": "3.10"}, "images": [], "wheels": [],
            "members": listed, "split": None}
    head.update(head_extra or {})
    head.setdefault("totals", {"images": 0, "wheels": sum(w["size"] for w in head["wheels"]),
                               "members": sum(m["size"] for m in listed), "layers_unique": 0})
    data = json.dumps(head).encode()

    def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes]], end: bool) -> bytes:
        buffer = io.BytesIO()
        tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed only with its end
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
        if end:
            tar.close()
        else:
            tar.fileobj = None  # do not write the end blocks into this frame
        return buffer.getvalue()

    head_info = tarfile.TarInfo("bundle.json")
    head_info.size = len(data)
    first = tar_bytes([(head_info, data)], end=False)
    rest = tar_bytes(members, end=True)
    compress = zstandard.ZstdCompressor(write_checksum=True).compress
    path.write_bytes(compress(first) + compress(rest))
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def device(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, b""


def _head_frame(head: object) -> bytes:
    data = json.dumps(head).encode()
    info = tarfile.TarInfo("bundle.json")
    info.size = len(data)
    first = info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)
    return zstandard.ZstdCompressor(write_checksum=True).compress(first)


def head_only(path: Path, head: object) -> Path:
    """A file with nothing but a first frame holding ``head`` as bundle.json: all ``inspect`` reads."""
    path.write_bytes(_head_frame(head))
    return path


def rewrite_head(source: Path, dest: Path, head: object) -> Path:
    """``source`` with its first frame (bundle.json) replaced: a forged head over the same members."""
    decoder = zstandard.ZstdDecompressor().decompressobj()
    data = source.read_bytes()
    decoder.decompress(data)
    dest.write_bytes(_head_frame(head) + decoder.unused_data)
    return dest
