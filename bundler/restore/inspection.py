"""The verbs that read a bundle without restoring it: ``inspect`` (its head alone), ``verify``
(every member re-hashed) and ``sbom`` (the SBOM member, from the frame after the head). Each checks
the signature first (trust.py). They run on the air-gapped side: nothing of the connected side here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundler.errors import InputError, IntegrityError
from bundler.files import CHUNK, sha256_file
from bundler.format.archive import iter_members, locate, read_first_member
from bundler.format.head import Head
from bundler.format.paths import SBOM, restorer_beside, signature_beside
from bundler.format.trust import SignatureCheck, TrustFile, check_file_signature, open_bundle
from bundler.progress import NULL, Progress


@dataclass(frozen=True)
class Inspection:
    head: Head
    volumes: tuple[Path, ...]
    size: int                     # of the bundle's files, all volumes together
    restorer: Path                # where the bundle's one-file restorer is, when it came with one
    signature: SignatureCheck


def inspect(path: Path) -> Inspection:
    """What a bundle holds, from its head alone (kilobytes, whatever the bundle's size)."""
    checked = open_bundle(path, None)
    volumes = locate(path)
    return Inspection(checked.head, tuple(volumes.paths), sum(p.stat().st_size for p in volumes.paths),
                      restorer=_restorer(volumes), signature=checked.signature)


def _restorer(volumes) -> Path:  # noqa: ANN001 - an archive.Volumes
    base = volumes.base or volumes.paths[0]
    return base.with_name(restorer_beside(base.name))


@dataclass
class VerifyResult:
    members: int
    bytes: int
    signature: SignatureCheck
    restorer: Path | None = None  # the restorer beside the bundle, checked against bundle.json
    restorer_signature: SignatureCheck | None = None   # of its own signature beside it (OUT.pyz.sig), when there


def verify(path: Path, progress: Progress = NULL, trust: TrustFile | None = None) -> VerifyResult:
    """Check the signature (against ``trust`` when given), then re-hash every member against
    bundle.json, and the restorer beside the bundle when there is one, with its own signature when that
    is beside it (against ``trust`` too); raise IntegrityError at the first that differs."""
    checked = open_bundle(path, trust)
    head = checked.head
    restorer = check_restorer(head, _restorer(locate(path)))
    restorer_signature = None
    if restorer is not None and restorer_signature_path(restorer).is_file():
        restorer_signature = check_file_signature(restorer, restorer_signature_path(restorer), trust)
    count = size = 0
    with progress.bar("verifying", head.member_bytes) as bar:
        for member in iter_members(path, head, checked.head_sha256):
            while chunk := member.read(CHUNK):
                size += len(chunk)
                bar.update(len(chunk))
            member.finish()
            count += 1
    return VerifyResult(count, size, checked.signature, restorer=restorer, restorer_signature=restorer_signature)


def restorer_signature_path(restorer: Path) -> Path:
    """Where the restorer's own signature lies: beside it, ``OUT.pyz.sig``."""
    return restorer.with_name(signature_beside(restorer.name))


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


def read_sbom(path: Path, trust: TrustFile | None = None) -> tuple[bytes, SignatureCheck]:
    """The bundle's SBOM, checked against bundle.json (whose signature is checked first): from the
    frame after the head, so kilobytes are read whatever the bundle's size."""
    checked = open_bundle(path, trust)
    entry = checked.head.member(SBOM)
    if entry is None:
        raise InputError(f"{path}: holds no SBOM (made by {checked.head.tool}, before bundles carried one)")
    data = read_first_member(path, checked.front, entry)
    if data is None:   # written by a tool that put it elsewhere: read the bundle to it
        for member in iter_members(path, checked.head, checked.head_sha256):
            if member.name == SBOM:
                data = member.read()
                member.finish()
                break
            member.finish()
    return data, checked.signature
