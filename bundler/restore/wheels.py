"""The wheels' air-gapped side: wheels into DEST/wheels (verified, then renamed), a venv, an
offline ``pip install --require-hashes``, a PEP 503 index for a cluster, and the profile's check;
and the wheels earlier restores left, for an inventory.

The venv is made while the bundle streams (it needs nothing from it), and pip installs while the
images' destination registers their layers. A rerun keeps a wheel of DEST/wheels or of the index's
files/ only when its sha256 matches (each file hashed once a run); one that does not is written again
from the bundle, and the restore says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from html import escape
from pathlib import Path

from bundler import __version__, proc
from bundler.context import Context
from bundler.errors import DiskError, InputError, IntegrityError, OperationalError
from bundler.files import CHUNK, FileHashes, free_space, human_size, removed_on_failure, sha256_file
from bundler.format.archive import MemberReader
from bundler.format.head import Head, WheelEntry
from bundler.format.inventory import Inventory, SiteWheel
from bundler.format.paths import REQUIREMENTS, WHEELS_DIR, wheel_path
from bundler.progress import ticking
from bundler.restore.inventory import restored_folders
from bundler.restore.machine import platform_for
from bundler.restore.options import InventoryOptions, Piece, RestoreOptions, RestoreReport

MARKER = ".bundler-restored"      # in the venv: the sha256 of the requirements it was installed from
MAKING = ".bundler-making"        # beside the venv (DIR.bundler-making) while it is being made
PIP_TIMEOUT = 3600
VENV_TIMEOUT = 600
CHECK_TIMEOUT = 1800
PROBE_TIMEOUT = 60


# ---- the target Python -------------------------------------------------------------------------

def python_version(exe: str) -> str | None:
    """``3.10`` for a CPython that runs here, else None."""
    try:
        result = proc.run([exe, "-c", "import sys; print('%d.%d %s' % (sys.version_info[:2] + "
                                      "(sys.implementation.name,)))"], f"asking {exe} for its version", PROBE_TIMEOUT)
    except OperationalError:
        return None
    version, _, implementation = result.stdout.strip().partition(" ")
    return version if result.returncode == 0 and implementation == "cpython" else None


def find_python(version: str, given: str | None) -> str:
    """``given``, checked; else the first python3.X (then python3) on PATH of the target's version."""
    if given:
        found = python_version(given)
        if found is None:
            raise InputError(f"--python {given}: not a CPython interpreter that runs here")
        if found != version:
            raise InputError(f"--python {given} is CPython {found}; the bundle's wheels are for {version}")
        return given
    for name in (f"python{version}", "python3", "python"):
        exe = shutil.which(name)
        if exe and python_version(exe) == version:
            return exe
    found = [f"{name} is {python_version(exe) or 'not CPython'}" for name in ("python3", "python")
             if (exe := shutil.which(name))]
    raise InputError(f"the bundle's wheels are for CPython {version}; this machine has no python{version} on PATH"
                     + (f" ({', '.join(found)})" if found else "")
                     + f": install CPython {version}, pass --python /path/to/python{version}, or use --index-dir DIR "
                       "alone to write the wheels for another machine")


# ---- the kind ---------------------------------------------------------------------------------

class Wheels:
    name = "wheels"

    def in_head(self, head: Head) -> bool:
        return bool(head.wheels)

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> WheelsRestorer:
        return WheelsRestorer(head, options, ctx)

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:  # noqa: ARG002 - the Kind interface
        """The wheels of earlier restores: DEST/wheels, and the files of an --index-dir."""
        folders = restored_folders(options.dests, WHEELS_DIR) + [d / "files" for d in options.index_dirs
                                                                 if (d / "files").is_dir()]
        wheels = {SiteWheel(path.name, sha256_file(path)): None for folder in folders
                  for path in sorted(folder.glob("*.whl")) if path.is_file()}
        return Inventory(f"bundler {__version__}", tuple(f"wheels {f}" for f in folders), wheels=tuple(wheels))


# ---- the restorer ------------------------------------------------------------------------------

class WheelsRestorer:
    """Restores a bundle's wheels: see the module's docstring."""

    def __init__(self, head: Head, options: RestoreOptions, ctx: Context) -> None:
        dest = options.dest or Path(head.profile.name)
        self.head, self.options, self.ctx = head, options, ctx
        self.dest, self.venv = dest, options.venv or dest / "venv"
        requirements = head.member(REQUIREMENTS)
        self._requirements_sha = requirements.sha256 if requirements else None
        self.version = head.target.python or ""
        self.make_venv = options.make_venv
        for flag, folder in (("--dest", dest), ("--index-dir", options.index_dir)):
            if folder is not None and folder.exists() and not folder.is_dir():
                raise InputError(f"{flag} {folder}: exists and is not a folder")
        self.python = None if not self.make_venv or self.installed() else find_python(self.version, options.python)
        venv = self.venv
        if self.make_venv and venv.exists() and (not venv.is_dir() or not (self._ours() or not any(venv.iterdir()))):
            raise InputError(f"{venv}: exists and is not a venv; choose another --venv")   # before any work
        self.folder = dest / WHEELS_DIR
        self.requirements = dest / REQUIREMENTS
        self.hashes = FileHashes()
        self._altered: dict[Path, str] = {}    # files kept from an earlier run whose bytes are not the bundle's
        self._lacking = [w for w in head.wheels if not self._intact(self.folder / w.filename, w.sha256)]
        index_files = options.index_dir / "files" if options.index_dir is not None else None
        self._index_lacking = [] if index_files is None else \
            [w for w in head.wheels if not self._intact(index_files / w.filename, w.sha256)]
        self._pending: list[tuple[Path, Path]] = []
        self._created_venv = False
        self._venv_error: BaseException | None = None
        # Set when the venv thread has ended. Waited on instead of Thread.join: a join that Ctrl-C
        # interrupts marks the thread ended while it still runs (CPython 3.11), and a second join
        # would then return at once.
        self._venv_ended: threading.Event | None = None
        # only what this run writes: the wheels DEST/wheels lacks, what pip unpacks, the index's copies
        needed = sum(w.size for w in self._lacking + self._index_lacking)
        if self.make_venv and not self.installed():
            needed += 2 * head.wheel_bytes
        dest.mkdir(parents=True, exist_ok=True)
        if needed and free_space(dest) < needed:
            raise DiskError(f"{dest}: restoring the wheels needs about {human_size(needed)}, only "
                            f"{human_size(free_space(dest))} is free")

    # -- the Restorer interface --
    def plan(self, report: RestoreReport) -> None:
        report.venv = self.venv if self.make_venv else None

    def done(self) -> bool:
        return ((self.installed() or not self.make_venv) and not self._lacking and not self._index_lacking
                and self._intact(self.requirements, self._requirements_sha))

    def start(self) -> None:
        """Create the venv while the bundle streams: it needs nothing from the bundle."""
        if not self.make_venv or self.installed():
            return
        self._venv_ended = threading.Event()
        threading.Thread(target=self._create_venv, name="venv", daemon=True).start()

    def wants(self, path: str) -> bool:
        return path == REQUIREMENTS or path.startswith(f"{WHEELS_DIR}/")

    def needs(self, path: str) -> bool:
        """Not a wheel already in DEST/wheels, intact."""
        if path == REQUIREMENTS:
            return True
        entry = self.head.member(path)
        return entry is None or not self._intact(self.folder / path.split("/", 1)[1], entry.sha256)

    def member(self, path: str, member: MemberReader) -> None:
        name = path.split("/", 1)[1] if path.startswith(f"{WHEELS_DIR}/") else path
        if "/" in name:
            raise IntegrityError(f"member {path}: wheels live directly under {WHEELS_DIR}/")
        target = self.requirements if path == REQUIREMENTS else self.folder / name
        if self._intact(target, member.sha256):
            member.finish()   # already restored by an earlier run
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with removed_on_failure(target.with_name(target.name + ".partial"), f"writing {target}") as partial:
            with open(partial, "wb") as out:
                while chunk := member.read(CHUNK):
                    out.write(chunk)
            member.finish()
        self._pending.append((partial, target))

    def commit(self, report: RestoreReport) -> None:
        for partial, target in self._pending:
            os.replace(partial, target)
            if target in self._altered:
                report.notes.append(f"wheels: repaired {target} (its sha256 did not match)")
        self._pending.clear()
        if self.make_venv and not self.installed():
            self._install()
            report.notes.append(f"venv {self.venv}: {self._installing()} wheels installed offline")

    def _installing(self) -> int:
        """How many wheels pip installs here: of a bundle for several platforms, this one's."""
        if len(self.head.platforms) == 1:
            return len(self.head.wheels)
        here = platform_for(self.head, self.options.platform)
        return sum(1 for wheel in self.head.wheels if here in self.head.wheel_platforms(wheel))

    def lacking(self, scratch: Path) -> list[Piece]:  # noqa: ARG002 - the Restorer interface
        """A delta's wheels the bundle does not carry: from DEST/wheels or an earlier --index-dir,
        each checked against its sha256 now (pip checks them again)."""
        if self.head.delta is None or self.done():
            return []
        carried = {m.path for m in self.head.members}
        lacking = []
        for wheel in self.head.wheels:
            if wheel_path(wheel.filename) in carried:
                continue
            target = self.folder / wheel.filename
            if self._intact(target, wheel.sha256):
                continue
            index = self.options.index_dir / "files" / wheel.filename if self.options.index_dir else None
            if index is not None and self._intact(index, wheel.sha256):
                copy = target.with_name(target.name + ".partial")
                self.folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(index, copy)
                self._pending.append((copy, target))
                continue
            found = self._altered.get(target)
            why = "" if found is None else f"{target} is there, but its sha256 is {found[:16]}.., not " \
                                           f"{wheel.sha256[:16]}..: altered on disk"
            lacking.append(Piece("wheel", f"sha256:{wheel.sha256}", wheel.size, needed_by=f"requirement {wheel.name}=="
                                 f"{wheel.version}", site=f"in {self.folder}", member=wheel_path(wheel.filename),
                                 why=why))
        return lacking

    def supply(self, piece: Piece, path: Path) -> None:
        target = self.folder / piece.member.split("/", 1)[1]
        partial = target.with_name(target.name + ".partial")
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.move(path, partial)   # the scratch folder may be on another filesystem
        self._pending.append((partial, target))

    def abort(self) -> None:
        """After a failure: no partial wheel, and no venv this run began."""
        for partial, _ in self._pending:
            partial.unlink(missing_ok=True)
        self._pending.clear()
        if self._venv_ended is not None:
            self._venv_ended.wait()
        if self._created_venv:
            shutil.rmtree(self.venv, ignore_errors=True)
            self._making.unlink(missing_ok=True)

    def finish(self, report: RestoreReport) -> None:
        if self.options.index_dir is not None:
            write_index(self.options.index_dir, self.head.wheels, self.folder, requirements=self.requirements,
                        hashes=self.hashes)
            report.notes += [f"index: repaired {path} (its sha256 did not match)" for path in sorted(self._altered)
                             if path.parent == self.options.index_dir / "files"]
            report.notes.append(f"PEP 503 index of {len(self.head.wheels)} wheels in {self.options.index_dir} "
                                f"(serve it, then pip install --index-url http://HOST/simple/)")
        if self.make_venv and self.options.check and self.head.profile.check:
            report.check = run_check(self.head.profile.check, self.venv)

    # -- the venv --
    def installed(self) -> bool:
        marker = self.venv / MARKER
        return marker.is_file() and marker.read_text().strip() == self._requirements_sha

    def _intact(self, path: Path, sha256: str | None) -> bool:
        """Whether ``path`` holds the bytes of that sha256 (hashed once a run); a file there with others is noted."""
        found = self.hashes.sha256(path)
        if found is not None and found != sha256:
            self._altered[path] = found
        return found is not None and found == sha256

    def _usable(self) -> bool:
        """A venv of the right Python whose pip works (a restore killed while making it leaves one without)."""
        python = self.venv / "bin" / "python"
        if not python.exists() or python_version(str(python)) != self.version:
            return False
        return proc.run([str(python), "-m", "pip", "--version"], f"checking pip in {self.venv}",
                        PROBE_TIMEOUT).returncode == 0

    @property
    def _making(self) -> Path:
        # Beside the venv, not in it: `venv --clear` empties the folder it makes.
        return self.venv.with_name(self.venv.name + MAKING)

    def _ours(self) -> bool:
        """A venv (of any Python), or a folder a killed restore of ours was making into one."""
        return (self.venv / "pyvenv.cfg").is_file() or self._making.is_file()

    def _create_venv(self) -> None:
        try:
            if self._usable():
                return
            clear = ["--clear"] if self.venv.exists() and any(self.venv.iterdir()) else []
            self._created_venv = True
            self.venv.parent.mkdir(parents=True, exist_ok=True)
            self._making.write_text("")   # until venv finishes: a later run may redo this folder
            proc.check(proc.run([self.python, "-m", "venv", *clear, str(self.venv)], f"creating the venv {self.venv}",
                                VENV_TIMEOUT, cancel=self.ctx.cancel), f"creating the venv {self.venv}")
            self._making.unlink(missing_ok=True)
        except BaseException as exc:  # noqa: BLE001 - reported when the install needs the venv
            self._venv_error = exc
        finally:
            self._venv_ended.set()

    def _install(self) -> None:
        """pip install --no-index --require-hashes into the venv."""
        if self._venv_ended is not None:
            self._venv_ended.wait()
        if self._venv_error is not None:
            raise self._venv_error
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
        # Byte-compiling every module of a large stack is most of pip's time, and competes with docker
        # for the CPU; Python compiles what is imported on first use anyway (--compile restores pip's way).
        args = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-cache-dir",
                "--compile" if self.options.compile else "--no-compile",
                "--find-links", str(self.folder), "--require-hashes", "-r", str(self.requirements)]
        what = f"pip install into {self.venv}"
        count = self._installing()
        site = self.venv / "lib" / f"python{self.version}" / "site-packages"
        with self.ctx.progress.bar(f"installing {count} wheels with pip", count, unit="wheel") as bar, \
                _counting_installs(site, bar.update):
            proc.check(proc.run(args, what, PIP_TIMEOUT, env=env, cancel=self.ctx.cancel), what)
        (self.venv / MARKER).write_text(f"{self._requirements_sha}\n")


INSTALL_POLL = 0.5      # seconds between looks at what pip has installed


@contextlib.contextmanager
def _counting_installs(site: Path, update: Callable[[int], None]) -> Iterator[None]:
    """While pip runs (silent for tens of seconds on a large stack), count the ``*.dist-info`` folders it
    adds to ``site``: one per package installed. ``update`` hears every look, with 0 when nothing changed,
    so that a progress line still comes every few seconds."""
    def installed() -> set[str]:
        try:
            return {p.name for p in site.iterdir() if p.name.endswith(".dist-info")}
        except OSError:
            return set()

    before, shown = installed(), 0

    def look() -> None:
        nonlocal shown
        now = len(installed() - before)
        update(max(0, now - shown))
        shown = max(shown, now)

    with ticking(INSTALL_POLL, look, "pip-progress"):
        yield
    update(max(0, len(installed() - before) - shown))


def write_index(folder: Path, wheels: tuple[WheelEntry, ...], source: Path, *, requirements: Path | None,
                hashes: FileHashes) -> None:
    """A PEP 503 simple index over the wheels, for any static web server: simple/<project>/ and files/,
    copied from ``source`` (checked already); a file of files/ is kept only when its sha256 matches."""
    from packaging.utils import canonicalize_name
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    projects: dict = {}
    for wheel in wheels:
        target = files / wheel.filename
        if hashes.sha256(target) != wheel.sha256:
            partial = target.with_name(target.name + ".partial")
            with removed_on_failure(partial, f"writing {target}"):
                shutil.copyfile(source / wheel.filename, partial)
            os.replace(partial, target)
        projects.setdefault(canonicalize_name(wheel.name), []).append(wheel)
    simple = folder / "simple"
    for project, entries in projects.items():
        page = simple / project
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(f'    <a href="../../files/{escape(w.filename)}#sha256={w.sha256}">'
                        f'{escape(w.filename)}</a><br>\n' for w in sorted(entries, key=lambda w: w.filename))
        (page / "index.html").write_text(_page(f"Links for {project}", links))
    links = "".join(f'    <a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text(_page("Simple index", links))
    if requirements is not None and requirements.is_file():
        shutil.copyfile(requirements, folder / REQUIREMENTS)


def _page(title: str, links: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0"><title>{title}</title>'
            f"</head>\n<body>\n{links}</body></html>\n")


def run_check(command: str, venv: Path) -> tuple[str, int, str]:
    """The profile's check, in the venv (its bin first on PATH), with no network needed."""
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONHOME", None)
    result = proc.run(command, "the profile's check", CHECK_TIMEOUT, env=env, shell=True)  # noqa: S604 - a shell line by design
    output = (result.stdout + result.stderr).strip()
    return command, result.returncode, re.sub(r"\n{3,}", "\n\n", output)[-4000:]
