"""The verbs that read a bundle without restoring it: ``inspect`` (its head alone) and ``verify``
(every member re-hashed). They run on the air-gapped side: nothing of the connected side here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundler.archive import iter_members, load_head, locate
from bundler.files import CHUNK
from bundler.format import Head
from bundler.progress import NULL, Progress


@dataclass(frozen=True)
class Inspection:
    head: Head
    volumes: tuple[Path, ...]
    size: int                     # of the bundle's files, all volumes together


def inspect(path: Path) -> Inspection:
    """What a bundle holds, from its head alone (kilobytes, whatever the bundle's size)."""
    head = load_head(path)
    volumes = locate(path).paths
    return Inspection(head, tuple(volumes), sum(p.stat().st_size for p in volumes))


@dataclass
class VerifyResult:
    members: int
    bytes: int


def verify(path: Path, progress: Progress = NULL) -> VerifyResult:
    """Re-hash every member against bundle.json; raise IntegrityError at the first that differs."""
    head = load_head(path)
    count = size = 0
    with progress.bar("verifying", head.member_bytes) as bar:
        for member in iter_members(path, head):
            while chunk := member.read(CHUNK):
                size += len(chunk)
                bar.update(len(chunk))
            member.finish()
            count += 1
    return VerifyResult(count, size)
