"""The restore of a delta: every piece it does not carry is proved present before anything is loaded.

After planning, each kind's restorer names the pieces its destination cannot give (``lacking``:
a layer docker holds in no image, a wheel missing from ``DEST/wheels`` or altered there, a model
file in no cache). Each must be carried by an earlier bundle given with ``--base``; it is read out
of that bundle, checked member by member as any bundle is (and a layer carried compressed is
decoded and checked against its diff_id), into a scratch folder, and handed to the restorer. When
a piece is nowhere, restore stops with one line naming it and what needs it (exit 3 when the site's
copy is there but altered, else 1), and nothing is loaded or installed.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from bundler.context import Context
from bundler.errors import IntegrityError, OperationalError
from bundler.files import CHUNK, disk_error
from bundler.format.archive import MemberReader, iter_members, load_head
from bundler.format.decode import LayerCheck
from bundler.format.head import Head
from bundler.format.paths import blob_path, layout_path
from bundler.restore.options import Piece, Restorer

SCRATCH = ".bundler-delta-"


@contextlib.contextmanager
def delta_site(head: Head, restorers: Sequence[Restorer], bases: Sequence[Path], *, folder: Path,
               ctx: Context, site: Site | None = None) -> Iterator[None]:
    """For a delta: prove every piece present, take the lacking ones from ``site`` (the registry the
    delta was read from, when it was) or ``bases`` into a scratch folder in ``folder``; the scratch
    folder goes when the restore ends. On any failure the restorers are aborted (nothing is loaded)."""
    if head.delta is None and not bases:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH, dir=folder))
    try:
        try:
            wanted = [(r, p) for r in restorers for p in r.lacking(scratch)]
            if wanted and site is not None:
                wanted = _from_site(wanted, site, scratch)
            if wanted:
                _take(head, wanted, list(bases), scratch, ctx)
        except BaseException:
            for restorer in restorers:
                restorer.abort()
            raise
        yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class Site(Protocol):
    """Where a delta's pieces may also be: the registry a pushed delta is restored from."""

    def provide(self, piece: Piece, target: Path) -> bool: ...   # written to target, checked; or False


def _from_site(wanted: list[tuple[Restorer, Piece]], site: Site, scratch: Path) -> list[tuple[Restorer, Piece]]:
    """Hand the restorers the pieces ``site`` holds; the rest, still lacking."""
    lacking = []
    for restorer, piece in wanted:
        target = scratch / f"{piece.what.replace(' ', '-')}-{piece.digest.split(':')[-1]}"
        if target.exists() or site.provide(piece, target):
            restorer.supply(piece, target)
        else:
            lacking.append((restorer, piece))
    return lacking


def _where(piece: Piece, base: Head) -> tuple[str, LayerCheck | None] | None:
    """The member of ``base`` that gives ``piece``, and the check that decodes it when it is compressed."""
    members = {m.path: m for m in base.members}
    found = members.get(piece.member)
    if found is not None and found.sha256 == piece.digest.split(":", 1)[-1]:
        return piece.member, None
    if piece.raw:   # an image carried exact: its layer compressed, decoded and checked against the diff_id
        for image in base.images:
            for diff_id, size, blob in zip(image.layer_digests, image.layer_sizes or (), image.blobs):
                path = layout_path(blob_path(blob.digest))
                if diff_id == piece.digest and path in members and blob.digest != diff_id:
                    return path, LayerCheck(path, diff_id, size)
    return None


def _take(head: Head, wanted: list[tuple[Restorer, Piece]], bases: list[Path], scratch: Path, ctx: Context) -> None:
    heads = [(path, load_head(path)) for path in bases]
    plan: dict[Path, dict[str, list[tuple[Restorer, Piece, LayerCheck | None]]]] = {}
    for restorer, piece in wanted:
        for path, base in heads:
            found = _where(piece, base)
            if found is not None:
                plan.setdefault(path, {}).setdefault(found[0], []).append((restorer, piece, found[1]))
                break
        else:   # a piece the site holds altered is damage no bundle here can repair: an integrity failure
            raise (IntegrityError if piece.why else OperationalError)(piece.missing(bases, head))
    for path, members in plan.items():
        base = dict(heads)[path]
        total = sum(m.size for m in base.members)
        with ctx.progress.bar(f"reading {path.name}", total) as bar:
            for member in iter_members(path, base):
                first = None
                for restorer, piece, check in members.get(member.name, ()):
                    target = scratch / f"{piece.what.replace(' ', '-')}-{piece.digest.split(':')[-1]}"
                    if first is None:
                        _extract(member, target, piece, check=check)
                        first = target
                    elif not target.exists():
                        shutil.copyfile(first, target)
                    restorer.supply(piece, target)
                member.finish()
                bar.update(member.size)


def _extract(member: MemberReader, target: Path, piece: Piece, *, check: LayerCheck | None) -> None:
    """The member into ``target``; checked against the piece's digest (decoded first when compressed)."""
    hasher = hashlib.sha256()
    try:
        with open(target, "wb") as out:
            def take(data: bytes) -> None:
                hasher.update(data)
                out.write(data)
            if check is not None:
                check = type(check)(check.name, check.diff_id, check.size, take)
            while chunk := member.read(CHUNK):
                if check is not None:
                    check.feed(chunk)
                else:
                    take(chunk)
            if check is not None:
                check.finish()
        member.finish()
    except OSError as exc:
        raise disk_error(exc, f"writing {target}") from None
    if "sha256:" + hasher.hexdigest() != piece.digest and piece.digest.startswith("sha256:"):
        raise IntegrityError(f"member {member.name}: does not hash to {piece.digest}")
