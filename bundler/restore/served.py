"""What a site serves, read back from its registry: every bundle pushed there, wherever it was pushed
(an index annotated with its head's sha256, under any tag of any repository), and from their heads
the wheels and the Hugging Face repositories the index port lists, each with the repository that
holds its bytes as a blob (format/site.py: every wheel and model file of a bundle is a blob of the
bundle's repository, by its own sha256).

A wheel's ``Requires-Python`` is in its METADATA, not in the head: the wheel is read once from the
registry, checked against its sha256, and the answer kept in the site's folder for every later
start. The listing is read again when a request finds it older than ``REFRESH`` seconds, so that a
bundle ``bundler push`` added to the running site is listed within moments.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from bundler.errors import InputError, IntegrityError
from bundler.format.head import Head, WheelEntry
from bundler.format.media import INDEX_TYPES, MANIFEST_TYPES
from bundler.format.models import HUGGINGFACE, ModelFile
from bundler.format.site import HEAD_SHA256, read_index
from bundler.net.http import iter_body
from bundler.oci.site import SiteRegistry
from bundler.restore.oci import OciReference, RegistryBundle

REFRESH = 2.0                     # seconds a listing is kept before a request reads the registry again
METADATA_CACHE = "wheel-metadata.json"
MAX_METADATA = 16 << 20           # a wheel's METADATA is kilobytes
_ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))


@dataclass(frozen=True)
class ServedBundle:
    reference: str                # REPO:TAG
    repository: str
    head_sha256: str
    head: Head


@dataclass(frozen=True)
class ServedWheel:
    wheel: WheelEntry
    repository: str               # whose blob holds it
    requires_python: str | None


@dataclass(frozen=True)
class ServedFile:
    file: ModelFile
    repository: str

    @property
    def lfs(self) -> bool:
        """Stored by Git LFS on the Hub: its ETag is its sha256 (another file's is its git blob id)."""
        return self.file.etag == self.file.sha256


@dataclass
class HubRepo:
    """A Hugging Face repository as the site serves it: its revisions, and each commit's files."""

    repo_type: str
    name: str
    revisions: dict[str, str] = field(default_factory=dict)                  # branch, tag or commit -> commit
    commits: dict[str, dict[str, ServedFile]] = field(default_factory=dict)  # commit -> path -> file


@dataclass(frozen=True)
class Listing:
    bundles: tuple[ServedBundle, ...] = ()
    projects: dict[str, list[ServedWheel]] = field(default_factory=dict)     # canonical name -> its files
    files: dict[str, ServedWheel] = field(default_factory=dict)               # sha256 -> the wheel
    hub: dict[tuple[str, str], HubRepo] = field(default_factory=dict)         # (repo type, ORG/NAME) -> it


class Catalog:
    """The listing of what the registry serves, read again when it is older than REFRESH seconds."""

    def __init__(self, site: SiteRegistry, folder: Path, *, refused: Callable[[str], None] | None = None) -> None:
        self.site, self.folder = site, folder
        self.refused = refused or (lambda _line: None)   # told of what the registry holds damaged: not listed
        self.listing = Listing()
        self._read_at = 0.0
        self._lock = threading.Lock()
        self._bundles: dict[tuple[str, str], ServedBundle | None] = {}   # (repository, index digest) -> it
        self._dirty = False
        self._damaged: set[str] = set()      # wheels whose blob did not match: refused once, not read again
        self._metadata: dict[str, str | None] = self._load_metadata()

    def current(self, *, fresh: bool = False) -> Listing:
        """The listing; read again first when ``fresh`` or when it is older than REFRESH seconds."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at > REFRESH:
                self.listing = self._read()
                self._read_at = time.monotonic()
            return self.listing

    # -- reading the registry --
    def _read(self) -> Listing:
        found: list[ServedBundle] = []
        for repository in self.site.catalog():
            for tag in self.site.tags(repository):
                digest = self.site.has_manifest(repository, tag, _ACCEPT)
                if digest is None:
                    continue
                key = (repository, digest)
                if key not in self._bundles:
                    try:
                        self._bundles[key] = self._bundle(repository, tag, digest)
                    except (IntegrityError, InputError) as exc:
                        self.refused(f"{repository}:{tag}: {exc}; not listed")
                        self._bundles[key] = None
                bundle = self._bundles[key]
                if bundle is not None:
                    found.append(ServedBundle(f"{repository}:{tag}", repository, bundle.head_sha256, bundle.head))
        return self._list(found)

    def _bundle(self, repository: str, tag: str, digest: str) -> ServedBundle | None:
        """The bundle whose index is ``digest``, or None for any other manifest."""
        _, body, media_type = self.site.manifest(repository, digest)
        if media_type not in INDEX_TYPES:
            return None
        if HEAD_SHA256 not in read_index(body, f"{self.site.host}/{repository}:{tag}")[1]:
            return None   # an image's own index (several platforms)
        checked = RegistryBundle(OciReference(self.site.host, repository, digest), self.site).open(None)
        return ServedBundle(f"{repository}:{tag}", repository, checked.head_sha256, checked.head)

    def _list(self, bundles: Sequence[ServedBundle]) -> Listing:
        """Wheels and Hub repositories from the heads, the newest bundle's last (a revision it names
        again is the commit it says)."""
        listing = Listing(tuple(bundles))
        seen: set[str] = set()
        for bundle in sorted(bundles, key=lambda b: (b.head.created, b.reference)):
            for wheel in bundle.head.wheels:
                if wheel.sha256 in listing.files or wheel.filename in seen or wheel.sha256 in self._damaged:
                    continue
                try:
                    served = ServedWheel(wheel, bundle.repository, self._requires_python(wheel, bundle.repository))
                except IntegrityError as exc:
                    self._damaged.add(wheel.sha256)
                    self.refused(f"wheel {wheel.filename} of {bundle.reference}: {exc}; not listed")
                    continue
                seen.add(wheel.filename)
                listing.files[wheel.sha256] = served
                listing.projects.setdefault(canonicalize_name(wheel.name), []).append(served)
            for model in bundle.head.models:
                if model.hub != HUGGINGFACE or model.commit is None:
                    continue
                repo = listing.hub.setdefault((model.repo_type, model.repo), HubRepo(model.repo_type, model.repo))
                repo.revisions[model.revision] = repo.revisions[model.commit] = model.commit
                repo.commits[model.commit] = {f.path: ServedFile(f, bundle.repository) for f in model.files}
        self._save_metadata()
        return listing

    # -- a wheel's Requires-Python --
    def _requires_python(self, wheel: WheelEntry, repository: str) -> str | None:
        if wheel.sha256 not in self._metadata:
            self._metadata[wheel.sha256] = self._read_metadata(wheel, repository)
            self._dirty = True
        return self._metadata[wheel.sha256]

    def _read_metadata(self, wheel: WheelEntry, repository: str) -> str | None:
        """Requires-Python of the wheel's METADATA, the wheel read whole from the registry and checked
        against its sha256 first."""
        hasher = hashlib.sha256()
        with tempfile.TemporaryFile(dir=self.folder) as spool:
            with self.site.open_blob(repository, f"sha256:{wheel.sha256}") as response:
                for chunk in iter_body(response, self.site.policy):
                    hasher.update(chunk)
                    spool.write(chunk)
            if hasher.hexdigest() != wheel.sha256:
                raise IntegrityError(f"{self.site.host}/{repository} holds {hasher.hexdigest()[:16]}.. for it, "
                                     f"bundle.json says {wheel.sha256[:16]}..")
            spool.seek(0)
            try:
                with zipfile.ZipFile(spool) as archive:
                    text = _metadata_text(archive, wheel)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise IntegrityError(f"not a wheel ({exc})") from None
        found = email.parser.HeaderParser().parsestr(text).get("Requires-Python")
        return str(found).strip() or None if found is not None else None

    def _load_metadata(self) -> dict[str, str | None]:
        try:
            data = json.loads((self.folder / METADATA_CACHE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and (v is None or isinstance(v, str))}

    def _save_metadata(self) -> None:
        if not self._dirty:
            return
        path = self.folder / METADATA_CACHE
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self._metadata, indent=1, sort_keys=True) + "\n")
        os.replace(partial, path)
        self._dirty = False


def _metadata_text(archive: zipfile.ZipFile, wheel: WheelEntry) -> str:
    """The wheel's ``*.dist-info/METADATA`` (the one of its own name and version, where several are)."""
    candidates = [info for info in archive.infolist() if info.filename.count("/") == 1
                  and info.filename.endswith(".dist-info/METADATA")]
    ours = f"{wheel.name}-{wheel.version}.dist-info/METADATA".lower().replace("-", "_")
    candidates.sort(key=lambda info: info.filename.lower().replace("-", "_") != ours)
    if not candidates:
        raise ValueError("no .dist-info/METADATA in it")
    if candidates[0].file_size > MAX_METADATA:
        raise ValueError(f"its METADATA claims {candidates[0].file_size} bytes")
    with archive.open(candidates[0]) as member:
        return member.read(MAX_METADATA).decode("utf-8", errors="replace")


def git_blob_id(data: bytes) -> str:
    """What git names a file's bytes (a Hub's ``oid`` of a file, and of an LFS file's pointer)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's name, not security


def lfs_pointer(file: ModelFile) -> bytes:
    """The Git LFS pointer the Hub keeps in git for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{file.sha256}\nsize {file.size}\n".encode()

