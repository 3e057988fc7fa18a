"""The types the air-gapped side's modules share: what a restore or an inventory is asked to do,
what it reports, what a delta's restore needs from the site, and the protocol each kind's restorer
follows (the verb calls it: verb.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from bundler.files import human_size
from bundler.format.archive import MemberReader
from bundler.format.head import Head
from bundler.format.kinds import KIND_NAMES, KindName
from bundler.format.trust import TrustFile

PieceKind = Literal["layer", "wheel", "model file"]


@dataclass
class RestoreOptions:
    dest: Path | None = None            # default: ./<profile name>
    venv: Path | None = None            # default: DEST/venv
    python: str | None = None           # default: python3.X on PATH for the target's version
    registry: str | None = None
    insecure: bool = False
    containerd: bool = False
    containerd_address: str | None = None
    namespace: str = "k8s.io"
    index_dir: Path | None = None
    make_venv: bool = True                 # False: the wheels (and --index-dir) only, for another machine
    check: bool = False
    compile: bool = False                  # byte-compile the installed modules now (pip's own default)
    kinds: tuple[KindName, ...] = KIND_NAMES # what to restore: --images-only, --wheels-only, --models-only
    platform: str | None = None            # the platform restored here (default: this machine's), chosen among
                                           # a bundle's several, and compared with its target
    hf_home: Path | None = None            # models: default DEST/huggingface (see models.py)
    modelscope_cache: Path | None = None   # default DEST/modelscope
    models_dir: Path | None = None         # plain folders instead of the hubs' caches
    bases: tuple[Path, ...] = ()           # a delta: earlier bundles that may hold what the site lacks
    trust: TrustFile | None = None         # with one, only bundles signed by a key it lists (trust.py)
    images: tuple[str, ...] = ()           # only the images of these names (as bundle.json writes them); () every
                                           # one (serve loads the registry:2 image a bundle carries, alone)


@dataclass
class RestoreReport:
    notes: list[str] = field(default_factory=list)
    venv: Path | None = None
    check: tuple[str, int, str] | None = None    # command, exit code, output


@dataclass
class InventoryOptions:
    docker: bool = False
    docker_optional: bool = False         # the default source, not asked for: an engine out of reach is noted
    registry: str | None = None
    repositories: tuple[str, ...] = ()   # of --registry: only these, without its catalog (which Harbor keeps to admins)
    insecure: bool = False
    containerd: bool = False
    containerd_address: str | None = None
    namespace: str = "k8s.io"
    dests: tuple[Path, ...] = ()          # earlier restores' DEST (or folders holding them)
    index_dirs: tuple[Path, ...] = ()     # earlier restores' --index-dir
    hf_homes: tuple[Path, ...] = ()       # earlier restores' --hf-home (a Hugging Face cache: HF_HOME)
    modelscope_caches: tuple[Path, ...] = ()   # earlier restores' --modelscope-cache (MODELSCOPE_CACHE)
    models_dirs: tuple[Path, ...] = ()    # earlier restores' --models-dir (plain folders)


@dataclass(frozen=True)
class Piece:
    """Something a delta needs from the site that the destination cannot give."""

    what: PieceKind
    digest: str                  # sha256:<hex>: what its bytes hash to (a layer wanted raw: its diff_id)
    size: int | None
    needed_by: str               # "image team/app:2.0", "requirement alpha==1.0", "hf:org/name@main"
    site: str                    # where it was looked for: "in the docker engine", "in DEST/wheels"
    member: str                  # its path in a bundle that carries it
    raw: bool = False            # a layer wanted unpacked: a bundle may carry it compressed (an exact image)
    why: str = ""                # why the site's copy does not count (a wheel altered on disk): damage, exit 3

    def missing(self, bases: Sequence[Path], head: Head) -> str:
        size = f" ({human_size(self.size)})" if self.size is not None else ""
        why = f" ({self.why})" if self.why else ""
        against = ", ".join(b.name for b in head.delta.bases) if head.delta else "?"
        where = ("nor in " + ", ".join(str(b) for b in bases)) if bases else \
            f"and no --base bundle was given (the delta was made against {against}: restore that first, or " \
            "give it with --base)"
        return f"{self.what} {self.digest[:19]}..{size}, needed by {self.needed_by}, is not {self.site}{why}, {where}"


class Restorer(Protocol):
    """One kind's destination during a restore; the verb calls these in this order."""

    def plan(self, report: RestoreReport) -> None: ...      # look at the destination: what it has already
    def done(self) -> bool: ...                             # nothing of this kind left to restore
    def start(self) -> None: ...                            # work that needs nothing from the bundle
    def wants(self, path: str) -> bool: ...                 # this member is this kind's
    def needs(self, path: str) -> bool: ...                 # ... and its bytes are wanted (a registry sends no other)
    def member(self, path: str, member: MemberReader) -> None: ...   # as it streams, checked as it is read
    def commit(self, report: RestoreReport) -> None: ...    # every member matched: make it real
    def abort(self) -> None: ...                            # a failure: leave nothing half made
    def finish(self, report: RestoreReport) -> None: ...    # after every commit (or when nothing was to do)
    # a delta: after plan, what of the site's part its destination cannot give (``scratch``: a folder
    # for what it reads out of the destination before the load); then those pieces, from a --base bundle
    def lacking(self, scratch: Path) -> list[Piece]: ...
    def supply(self, piece: Piece, path: Path) -> None: ...
