"""The models' air-gapped side: each repository laid out where its hub's own client looks offline.

- Hugging Face (``--hf-home DIR``, default ``DEST/huggingface``): ``DIR/hub/{models,datasets}--ORG--NAME/``
  with ``blobs/ETAG`` (an LFS file's sha256, another file's git blob id), ``snapshots/COMMIT/PATH`` as
  relative symlinks to the blobs, and ``refs/REVISION`` holding the commit: what huggingface_hub
  writes itself, so ``HF_HUB_OFFLINE=1`` with ``snapshot_download(REPO, revision=REVISION)`` or
  ``from_pretrained`` finds it.
- ModelScope (``--modelscope-cache DIR``, default ``DEST/modelscope``): ``DIR/{models,datasets}/ORG--NAME/
  snapshots/REVISION/PATH``, the layout of the modelscope client (1.38 and later), which
  ``snapshot_download(REPO, revision=REVISION, local_files_only=True)`` reads.
- ``--models-dir DIR``: plain folders instead, ``DIR/ORG/NAME`` (``DIR/datasets/ORG/NAME``).

Each file of the bundle streams once into ``DEST/.bundler-models/`` (verified there, and a small
Hugging Face file against its git blob id too); nothing is placed until every member matched, then
every place gets a hard link (a copy across filesystems) under a temporary name, renamed into place:
blobs first, then snapshots, refs last. A file already in place is kept when its sha256 matches (each
distinct file hashed once a run); one that does not is placed again, and the restore says so.

Air-gapped side: nothing of the connected side here, and CPython 3.9.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bundler import __version__
from bundler.context import Context
from bundler.errors import DiskError, InputError, IntegrityError
from bundler.files import CHUNK, FileHashes, disk_error, free_space, human_size, sha256_file
from bundler.format.archive import MemberReader
from bundler.format.head import Head
from bundler.format.inventory import Inventory
from bundler.format.models import HUGGINGFACE, ModelEntry
from bundler.format.paths import MODELS_DIR, model_blob_path
from bundler.restore.inventory import restored_folders
from bundler.restore.options import InventoryOptions, Piece, RestoreOptions, RestoreReport

STAGING = ".bundler-models"       # in DEST: each file of the bundle once, until the last member matched
PARTIAL = ".bundler-partial"      # suffix of a name being put in place


@dataclass(frozen=True)
class Place:
    """One path a file of the bundle must end up at: a copy of the file, or a symlink, or a ref's text."""

    path: Path
    sha256: str | None = None       # a file with these bytes (linked from the staged member)
    size: int = 0
    link: str | None = None         # a relative symlink to this target
    text: str | None = None         # a small file with this text (a ref)

    def present(self, hashes: FileHashes) -> bool:
        """Whether the place holds what it must: a file its bytes (hashed), a link its target, a ref its text."""
        try:
            if self.link is not None:
                return os.readlink(self.path) == self.link
            if self.text is not None:
                return self.path.read_text() == self.text
            return (not self.path.is_symlink() and self.path.is_file() and self.path.stat().st_size == self.size
                    and hashes.sha256(self.path) == self.sha256)
        except OSError:
            return False

    def altered(self, hashes: FileHashes) -> str | None:
        """For a file place that is not present: the sha256 of the other bytes in its place, if a file is there."""
        if self.sha256 is None or self.path.is_symlink():
            return None
        return hashes.sha256(self.path)


def hf_repo_folder(hf_home: Path, model: ModelEntry) -> Path:
    """huggingface_hub's folder for a repository: HF_HOME/hub/models--ORG--NAME."""
    return hf_home / "hub" / "--".join([f"{model.repo_type}s", *model.repo.split("/")])


def hf_places(hf_home: Path, model: ModelEntry) -> list[Place]:
    folder = hf_repo_folder(hf_home, model)
    blobs = {f.etag: f for f in model.files}
    places = [Place(folder / "blobs" / etag, f.sha256, f.size) for etag, f in sorted(blobs.items())]
    for file in model.files:
        depth = file.path.count("/") + 2            # snapshots/COMMIT/ and the file's own folders
        places.append(Place(folder / "snapshots" / model.commit / file.path,
                            link="/".join([".."] * depth + ["blobs", file.etag])))
    if model.revision != model.commit:
        places.append(Place(folder / "refs" / model.revision, text=model.commit))
    return places


def modelscope_places(cache: Path, model: ModelEntry) -> list[Place]:
    folder = cache / f"{model.repo_type}s" / model.repo.replace("/", "--") / "snapshots" / model.revision
    return [Place(folder / f.path, f.sha256, f.size) for f in model.files]


def plain_folder(root: Path, model: ModelEntry) -> Path:
    return root / ("datasets" if model.repo_type == "dataset" else "") / model.repo


class Models:
    name = "models"

    def in_head(self, head: Head) -> bool:
        return bool(head.models)

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> ModelsRestorer:
        return ModelsRestorer(head, options, ctx)

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:  # noqa: ARG002 - the Kind interface
        """The model files of earlier restores, by sha256: their Hugging Face and ModelScope caches
        (DEST/huggingface and DEST/modelscope, or where --hf-home and --modelscope-cache put them)
        and the plain folders of --models-dir."""
        hf = _distinct(restored_folders(options.dests, "huggingface") + list(options.hf_homes))
        modelscope = _distinct(restored_folders(options.dests, "modelscope") + list(options.modelscope_caches))
        plain = _distinct(list(options.models_dirs))
        files = sorted({sha256_file(path) for path in site_model_files(hf, modelscope, plain)})
        return Inventory(f"bundler {__version__}", tuple(f"models {f}" for f in hf + modelscope + plain),
                         models=tuple(files))


class ModelsRestorer:
    """Restores a bundle's models: see the module's docstring."""

    def __init__(self, head: Head, options: RestoreOptions, ctx: Context) -> None:
        self.head, self.ctx = head, ctx
        dest = options.dest or Path(head.profile.name)
        self.staging = dest / STAGING
        self.plain = options.models_dir
        self.hf_home = (options.hf_home or dest / "huggingface").absolute()
        self.modelscope = (options.modelscope_cache or dest / "modelscope").absolute()
        self.places = self._plan_places()
        self.hashes = FileHashes()
        self.missing = [p for p in self.places if not p.present(self.hashes)]
        # files in place whose bytes are not the bundle's (a flipped byte, an edit): placed again, and said
        self._altered = {p.path: found for p in self.missing if (found := p.altered(self.hashes)) is not None}
        self._files = {f.sha256: f for m in head.models for f in m.files}
        self._oids = {f.sha256: f.etag for m in head.models for f in m.files
                      if m.hub == HUGGINGFACE and f.etag != f.sha256}
        self._staged: set[str] = set()
        needed = sum(self._files[s].size for s in {p.sha256 for p in self.missing if p.sha256})
        dest.mkdir(parents=True, exist_ok=True)
        if needed and free_space(dest) < needed:
            raise DiskError(f"{dest}: restoring the models needs about {human_size(needed)}, only "
                            f"{human_size(free_space(dest))} is free")

    def _plan_places(self) -> list[Place]:
        places: list[Place] = []
        if self.plain is not None:
            owners: dict[Path, ModelEntry] = {}
            for model in self.head.models:
                folder = plain_folder(self.plain, model)
                if folder in owners:
                    raise InputError(f"--models-dir: {model.name} and {owners[folder].name} would share {folder}; "
                                     "restore into the hubs' caches, which keep them apart")
                owners[folder] = model
                places += [Place(folder / f.path, f.sha256, f.size) for f in model.files]
            return places
        for model in self.head.models:
            places += (hf_places(self.hf_home, model) if model.hub == HUGGINGFACE
                       else modelscope_places(self.modelscope, model))
        return places

    # -- the Restorer interface --
    def plan(self, report: RestoreReport) -> None:
        pass

    def done(self) -> bool:
        return not self.missing

    def start(self) -> None:
        pass

    def wants(self, path: str) -> bool:
        return path.startswith(f"{MODELS_DIR}/")

    def needs(self, path: str) -> bool:
        return any(p.sha256 == path.rsplit("/", 1)[-1] for p in self.missing)

    def member(self, path: str, member: MemberReader) -> None:
        sha256 = path.rsplit("/", 1)[-1]
        if path != model_blob_path(sha256) or sha256 not in self._files:
            raise IntegrityError(f"member {path}: no model file of bundle.json is this member")
        if not any(p.sha256 == sha256 for p in self.missing):
            member.finish()    # every place that holds it has it already
            return
        oid = self._oids.get(sha256)
        git = hashlib.sha1(b"blob %d\0" % member.size) if oid else None  # noqa: S324 - git's object id
        staged = self.staging / sha256
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            with open(staged, "wb") as out:
                while chunk := member.read(CHUNK):
                    if git is not None:
                        git.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise disk_error(exc, f"writing {staged}") from None
        member.finish()
        if git is not None and git.hexdigest() != oid:
            raise IntegrityError(f"member {path}: its git blob id is {git.hexdigest()[:12]}.., bundle.json's etag "
                                 f"says {oid[:12]}..")
        self._staged.add(sha256)

    def commit(self, report: RestoreReport) -> None:
        """Blobs and files first, then snapshot links, refs last: a ref never names a half-made snapshot."""
        try:
            for place in sorted(self.missing, key=lambda p: (p.sha256 is None, p.text is not None)):
                self._put(place)
        except OSError as exc:
            raise disk_error(exc, "placing the models") from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        self.missing = []
        report.notes.append(f"models: {len(self.head.models)} repositories, {human_size(self.head.model_bytes)}, "
                            f"in {self._where()}")
        report.notes += [f"models: repaired {path} (its sha256 did not match)" for path in sorted(self._altered)]

    def _put(self, place: Place) -> None:
        place.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = place.path.with_name(place.path.name + PARTIAL)
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        if place.link is not None:
            os.symlink(place.link, temporary)
        elif place.text is not None:
            temporary.write_text(place.text)
        else:
            staged = self.staging / place.sha256
            try:
                os.link(staged, temporary)
            except OSError:      # another filesystem, or one without hard links
                shutil.copyfile(staged, temporary)
        if place.path.is_dir() and not place.path.is_symlink():
            raise DiskError(f"{place.path}: a folder is in the way")
        os.replace(temporary, place.path)

    def lacking(self, scratch: Path) -> list[Piece]:  # noqa: ARG002 - the Restorer interface
        """A delta's model files the bundle does not carry: found by sha256 in the caches (and folders)
        being restored into, checked now, and linked into the staging folder like a member."""
        if self.head.delta is None:
            return []
        carried = {m.path for m in self.head.members}
        wanted = {p.sha256 for p in self.missing if p.sha256 and model_blob_path(p.sha256) not in carried}
        if not wanted:
            return []
        sizes: dict[int, set[str]] = {}    # several files may share a size: a site file is hashed to tell them
        for sha256 in wanted:
            sizes.setdefault(self._files[sha256].size, set()).add(sha256)
        found: dict[str, Path] = {}
        for path in site_model_files([self.hf_home], [self.modelscope], [self.plain] if self.plain else []):
            if sizes.get(path.stat().st_size, set()) - found.keys():
                sha256 = self.hashes.sha256(path)
                if sha256 in wanted and sha256 not in found:
                    found[sha256] = path
        lacking = []
        for model in self.head.models:
            for file in model.files:
                if file.sha256 not in wanted or file.sha256 in self._staged:
                    continue
                if file.sha256 in found:
                    self._stage(found[file.sha256], file.sha256)
                else:
                    lacking.append(Piece("model file", f"sha256:{file.sha256}", file.size, needed_by=f"{model.name} "
                                         f"({file.path})", site=f"in {self._where()}",
                                         member=model_blob_path(file.sha256), why=self._why(file.sha256)))
        return lacking

    def _why(self, sha256: str) -> str:
        """Why the site's copy of a file does not count, when one of its places holds other bytes."""
        for place in self.missing:
            found = self._altered.get(place.path)
            if place.sha256 == sha256 and found is not None:
                return f"{place.path} is there, but its sha256 is {found[:16]}.., not {sha256[:16]}..: altered on disk"
        return ""

    def supply(self, piece: Piece, path: Path) -> None:
        self._stage(path, piece.digest.split(":", 1)[1])

    def _stage(self, path: Path, sha256: str) -> None:
        staged = self.staging / sha256
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
        except OSError as exc:
            raise disk_error(exc, f"writing {staged}") from None
        self._staged.add(sha256)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def finish(self, report: RestoreReport) -> None:
        hubs = {m.hub for m in self.head.models}
        if self.plain is not None:
            report.notes.append(f"models as plain folders in {self.plain}: "
                                + ", ".join(str(plain_folder(self.plain, m)) for m in self.head.models))
            return
        if HUGGINGFACE in hubs:
            report.notes.append(f"Hugging Face, offline: export HF_HOME={_quoted(self.hf_home)} HF_HUB_OFFLINE=1")
        if hubs - {HUGGINGFACE}:
            report.notes.append(f"ModelScope: export MODELSCOPE_CACHE={_quoted(self.modelscope)}, then "
                                "snapshot_download(REPO, revision=REVISION, local_files_only=True)")

    def _where(self) -> str:
        if self.plain is not None:
            return str(self.plain)
        hubs = {m.hub for m in self.head.models}
        where = [f"the Hugging Face cache {self.hf_home / 'hub'}"] if HUGGINGFACE in hubs else []
        return " and ".join(where + ([f"the ModelScope cache {self.modelscope}"] if hubs - {HUGGINGFACE} else []))


def _distinct(folders: list[Path]) -> list[Path]:
    """The folders in order, each once (a folder named twice, or named and found under a DEST)."""
    return list(dict.fromkeys(folders))


def site_model_files(hf_homes: list[Path], modelscope_caches: list[Path], plain: list[Path]) -> Iterator[Path]:
    """Every model file a site's caches (and plain folders) hold: Hugging Face blobs, ModelScope
    snapshot files, files of plain folders; never a link, never one being put in place."""
    roots = [*(h / "hub" for h in hf_homes), *modelscope_caches, *plain]
    for root in roots:
        if not root.is_dir():
            continue
        pattern = "*/blobs/*" if root.name == "hub" else "**/*"
        for path in sorted(root.glob(pattern)):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(PARTIAL) \
                    and STAGING not in path.parts:
                yield path


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))
