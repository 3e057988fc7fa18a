"""The ``models`` section of bundle.json (format 2): Hugging Face and ModelScope repositories.

A model file is carried once, as ``models/blobs/sha256/<hex>``, however many repositories (or
revisions) hold it; each entry here says which files make up one repository at one revision, and
under which path. Restore (modelcache.py) lays them out where the hubs' own clients look.

Like format.py, this runs on the air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bundler.digest import is_sha256_hex
from bundler.format.paths import model_blob_path, unsafe_path
from bundler.format.reader import JsonObject, is_size

if TYPE_CHECKING:
    from bundler.format.head import MemberEntry  # head.py reads these entries: imported for types only

HUGGINGFACE = "huggingface"
MODELSCOPE = "modelscope"
HUBS = (HUGGINGFACE, MODELSCOPE)
REPO_TYPES = ("model", "dataset")

# ORG/NAME: each part becomes a folder name in the hubs' caches (models--ORG--NAME, ORG--NAME)
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
GIT_OID = re.compile(r"[0-9a-f]{40}\Z")


def repo_id_problem(repo: str) -> str | None:
    """Why ``repo`` cannot name a repository (ORG/NAME), or None."""
    if not REPO_ID.match(repo):
        return "expected ORG/NAME (letters, digits, '.', '_', '-')"
    if "--" in repo or ".." in repo:
        return "'--' and '..' are not allowed in a repository name"
    return None


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` (a branch, tag or commit) cannot name a folder in a cache, or None."""
    return unsafe_path(revision)


def file_problem(*, path: Any, size: Any, sha256: Any, etag: Any) -> tuple[str, str] | None:
    """What is wrong with one file of a repository, as a hub lists it, a lock pins it or a head names
    it: the key at fault and why (naming the value), or None. ``sha256`` None: not known yet (a small
    Hugging Face file, pinned later by its bytes)."""
    if not isinstance(path, str):
        return "path", f"path {path!r} is not a string"
    if unsafe_path(path):
        return "path", f"unsafe path ({unsafe_path(path)})"
    if not is_size(size):
        return "size", f"size {size!r} is not a whole number of bytes"
    if sha256 is not None and not is_sha256_hex(sha256):
        return "sha256", f"sha256 {sha256!r} is not 64 lowercase hex digits"
    if etag is not None and not (isinstance(etag, str) and (GIT_OID.match(etag) or etag == sha256)):
        return "etag", f"etag {etag!r} is neither a git blob id nor the file's sha256"
    return None


def tree_problem(paths: Sequence[str]) -> tuple[int, str] | None:
    """Why ``paths`` cannot be the files of one repository (a path twice, a file where another file
    needs a folder): the index of the first path at fault and why, or None."""
    folders = {"/".join(p.split("/")[:n]) for p in paths for n in range(1, p.count("/") + 1)}
    seen: set[str] = set()
    for index, path in enumerate(paths):
        if path in folders:
            return index, f"file {path!r} is both a file and a folder"
        if path in seen:
            return index, f"file {path!r} is listed twice"
        seen.add(path)
    return None


@dataclass(frozen=True)
class ModelFile:
    path: str                        # inside the repository, POSIX
    size: int
    sha256: str                      # hex: also its member, models/blobs/sha256/<sha256>
    etag: str | None = None          # huggingface: the Hub's ETag, which names the file's blob in its cache
                                     # (an LFS file's sha256, another file's git blob id); None for ModelScope

    @property
    def member(self) -> str:
        return model_blob_path(self.sha256)

    @classmethod
    def read(cls, obj: JsonObject) -> ModelFile:
        path, size, sha256 = obj.string("path"), obj.size("size"), obj.sha256_hex("sha256")
        etag = obj.string("etag", nullable=True)
        found = file_problem(path=path, size=size, sha256=sha256, etag=etag)
        if found:
            raise obj.fail(obj.path(found[0]), found[1])
        return cls(path, size, sha256, etag)

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "etag": self.etag}


@dataclass(frozen=True)
class ModelEntry:
    """One repository at one revision, as the profile named it and the lock pinned it."""

    hub: str                         # huggingface | modelscope
    repo: str                        # ORG/NAME
    repo_type: str                   # model | dataset
    revision: str                    # as the profile wrote it: a branch, a tag or a commit
    commit: str | None               # the commit it resolved to (40 hex); None where the hub names none
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def name(self) -> str:
        """How people write it: ``hf:ORG/NAME@REVISION`` (``datasets/`` before a dataset's name)."""
        prefix = "hf" if self.hub == HUGGINGFACE else "ms"
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"{prefix}:{kind}{self.repo}@{self.revision}"

    @classmethod
    def read(cls, obj: JsonObject) -> ModelEntry:
        hub = _checked(obj, "hub", lambda v: None if v in HUBS else f"not one of {', '.join(HUBS)}")
        repo = _checked(obj, "repo", repo_id_problem)
        repo_type = _checked(obj, "repo_type", lambda v: None if v in REPO_TYPES else f"not one of "
                                                                                       f"{', '.join(REPO_TYPES)}")
        revision = _checked(obj, "revision", revision_problem)
        commit = obj.value("commit", lambda v: isinstance(v, str) and bool(GIT_OID.match(v)), "a 40-digit commit id",
                           nullable=True)
        if hub == HUGGINGFACE and commit is None:
            raise obj.fail(obj.path("commit"), "a Hugging Face repository is pinned to a commit")
        files = obj.objects("files", ModelFile.read)
        return cls(hub, repo, repo_type, revision, commit, files)

    def to_json(self) -> dict:
        return {"hub": self.hub, "repo": self.repo, "repo_type": self.repo_type, "revision": self.revision,
                "commit": self.commit, "files": [f.to_json() for f in self.files]}


def _checked(obj: JsonObject, name: str, problem_of: Callable[[str], str | None]) -> str:
    """The string at ``name``, refused naming the key when ``problem_of`` finds something wrong with it."""
    value = obj.string(name)
    problem = problem_of(value)
    if problem:
        raise obj.fail(obj.path(name), f"{value!r}: {problem}")
    return value


def check_models(models: tuple[ModelEntry, ...], members: dict[str, MemberEntry], top: JsonObject,
                 *, site: set[str] = frozenset()) -> None:
    """Each repository once, its paths a tree (no file where another needs a folder), and every
    file a member of its size and sha256, or (a delta) one the site must hold, by sha256."""
    seen = set()
    for index, model in enumerate(models):
        key = (model.hub, model.repo_type, model.repo, model.revision)
        if key in seen:
            raise top.fail(f"models[{index}]", f"{model.name} is listed twice")
        seen.add(key)
        clash = tree_problem([f.path for f in model.files])
        if clash:
            raise top.fail(f"models[{index}].files[{clash[0]}]", f"{model.name}: {clash[1]}")
        for number, file in enumerate(model.files):
            where = f"models[{index}].files[{number}]"
            member = members.get(file.member)
            if file.sha256 in site and member is None:
                continue
            if member is None or member.size != file.size or member.sha256 != file.sha256:
                raise top.fail(where, f"{file.path} is not a member of {file.size} bytes ({file.member})")
        if model.hub == HUGGINGFACE and any(f.etag is None for f in model.files):
            raise top.fail(f"models[{index}]", f"{model.name}: every Hugging Face file needs its etag")
