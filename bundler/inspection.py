"""The verbs that read a bundle without restoring it: ``inspect`` (its head alone) and ``verify``
(every member re-hashed). They run on the air-gapped side: nothing of the connected side here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundler.archive import iter_members, load_head, locate
from bundler.errors import IntegrityError
from bundler.files import CHUNK, sha256_file
from bundler.format import Head, restorer_beside
from bundler.progress import NULL, Progress


@dataclass(frozen=True)
class Inspection:
    head: Head
    volumes: tuple[Path, ...]
    size: int                     # of the bundle's files, all volumes together
    restorer: Path                # where the bundle's one-file restorer is, when it came with one


def inspect(path: Path) -> Inspection:
    """What a bundle holds, from its head alone (kilobytes, whatever the bundle's size)."""
    head = load_head(path)
    volumes = locate(path)
    return Inspection(head, tuple(volumes.paths), sum(p.stat().st_size for p in volumes.paths), _restorer(volumes))


def _restorer(volumes) -> Path:  # noqa: ANN001 - an archive.Volumes
    base = volumes.base or volumes.paths[0]
    return base.with_name(restorer_beside(base.name))


@dataclass
class VerifyResult:
    members: int
    bytes: int
    restorer: Path | None = None  # the restorer beside the bundle, checked against bundle.json


def verify(path: Path, progress: Progress = NULL) -> VerifyResult:
    """Re-hash every member against bundle.json, and the restorer beside the bundle when there is one;
    raise IntegrityError at the first that differs."""
    head = load_head(path)
    restorer = check_restorer(head, _restorer(locate(path)))
    count = size = 0
    with progress.bar("verifying", head.member_bytes) as bar:
        for member in iter_members(path, head):
            while chunk := member.read(CHUNK):
                size += len(chunk)
                bar.update(len(chunk))
            member.finish()
            count += 1
    return VerifyResult(count, size, restorer)


def check_restorer(head: Head, path: Path) -> Path | None:
    """``path`` when the head names a restorer and it is there and matches; None when either is absent."""
    if head.restorer is None or not path.is_file():
        return None
    found = sha256_file(path)
    if path.stat().st_size != head.restorer.size or found != head.restorer.sha256:
        raise IntegrityError(f"{path}: the restorer's sha256 is {found[:12]}.., bundle.json says "
                             f"{head.restorer.sha256[:12]}..: it was changed or comes from another bundle; "
                             "do not run it")
    return path
