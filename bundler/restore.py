"""Restore: a bundle back into images and a working Python environment, with no network.

One pass over the bundle: every member is checked against bundle.json as it streams. Image blobs
flow straight into the chosen loader (docker engine, registry, containerd) and wheels into
``DEST/wheels`` under temporary names; nothing is committed (the loader's stream ended, a wheel
renamed, pip run) until the last member was verified. The venv is created while the bundle
streams, and pip installs while docker registers the layers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bundler.archive import MemberReader, free_space, iter_members, read_head
from bundler.bundle import REQUIREMENTS, WHEELS_DIR, check_head, human_size
from bundler.cache import CHUNK, disk_error, sha256_file
from bundler.errors import BundlerError, DiskError, InputError, IntegrityError, OperationalError
from bundler.images import LAYOUT_DIR
from bundler.loaders import ContainerdImporter, DockerLoader, Loader, RegistryPusher
from bundler.progress import NULL, Progress

MARKER = ".bundler-restored"      # in the venv: the sha256 of the requirements it was installed from
MAKING = ".bundler-making"        # beside the venv (DIR.bundler-making) while it is being made
PIP_TIMEOUT = 3600


@dataclass
class RestoreOptions:
    dest: Path | None = None           # default: ./<profile name>
    venv: Path | None = None           # default: DEST/venv
    python: str | None = None          # default: python3.X on PATH for the target's version
    registry: str | None = None
    insecure: bool = False
    containerd: bool = False
    containerd_address: str | None = None
    namespace: str = "k8s.io"
    index_dir: Path | None = None
    check: bool = False
    compile: bool = False              # byte-compile the installed modules now (pip's own default)
    images: bool = True
    wheels: bool = True


@dataclass
class RestoreReport:
    notes: list[str] = field(default_factory=list)
    venv: Path | None = None
    installed: int = 0
    check: tuple[str, int, str] | None = None      # command, exit code, output
    read_bundle: bool = True


# ---- the target Python -------------------------------------------------------------------------

def python_version(exe: str) -> str | None:
    try:
        result = subprocess.run([exe, "-c", "import sys; print('%d.%d %s' % (sys.version_info[:2] + "
                                            "(sys.implementation.name,)))"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
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
    raise OperationalError(f"no CPython {version} found on PATH (looked for python{version}, python3); install it "
                           f"or pass --python /path/to/python{version}")


# ---- wheels ------------------------------------------------------------------------------------

class Wheels:
    """Wheels into DEST/wheels (verified, then renamed), a venv, pip install offline with hashes."""

    def __init__(self, head: dict, dest: Path, venv: Path, python: str | None, compile_: bool = False) -> None:
        self.head, self.dest, self.venv, self.compile = head, dest, venv, compile_
        self._requirements_sha = next((m["sha256"] for m in head["members"] if m["path"] == REQUIREMENTS), None)
        self.version = head["target"]["python"]
        self.python = None if self.installed() else find_python(self.version, python)
        if venv.exists() and (not venv.is_dir() or not (self._ours() or not any(venv.iterdir()))):
            raise InputError(f"{venv}: exists and is not a venv; choose another --venv")   # before any work
        self.folder = dest / WHEELS_DIR
        self.requirements = dest / REQUIREMENTS
        self._pending: list[tuple[Path, Path]] = []
        self._created_venv = False
        self._venv_error: BaseException | None = None
        self._venv_thread: threading.Thread | None = None

    def installed(self) -> bool:
        marker = self.venv / MARKER
        return marker.is_file() and marker.read_text().strip() == self._requirements_sha

    def _usable(self) -> bool:
        """A venv of the right Python whose pip works (a restore killed while making it leaves one without)."""
        python = self.venv / "bin" / "python"
        if not python.exists() or python_version(str(python)) != self.version:
            return False
        return subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, timeout=120).returncode == 0

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
            result = subprocess.run([self.python, "-m", "venv", *clear, str(self.venv)], capture_output=True,
                                    text=True, timeout=600)
            if result.returncode:
                raise OperationalError(f"creating the venv {self.venv} failed: {result.stderr.strip()[-300:]}")
            self._making.unlink(missing_ok=True)
        except BaseException as exc:  # noqa: BLE001 - reported when the install needs the venv
            self._venv_error = exc

    def start(self) -> None:
        """Create the venv while the bundle streams: it needs nothing from the bundle."""
        self._venv_thread = threading.Thread(target=self._create_venv, name="venv", daemon=True)
        self._venv_thread.start()

    def member(self, path: str, member: MemberReader) -> None:
        name = path.split("/", 1)[1] if path.startswith(f"{WHEELS_DIR}/") else path
        if "/" in name:
            raise IntegrityError(f"member {path}: wheels live directly under {WHEELS_DIR}/")
        target = self.requirements if path == REQUIREMENTS else self.folder / name
        if target.is_file() and target.stat().st_size == member.size and sha256_file(target) == member.sha256:
            member.finish()   # already restored by an earlier run
            return
        partial = target.with_name(target.name + ".partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as out:
                while chunk := member.read(CHUNK):
                    out.write(chunk)
            member.finish()
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise disk_error(exc, f"writing {partial}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._pending.append((partial, target))

    def discard(self) -> None:
        """After a failure: no partial wheel, and no venv this run began."""
        for partial, _ in self._pending:
            partial.unlink(missing_ok=True)
        self._pending.clear()
        if self._venv_thread is not None:
            self._venv_thread.join()
        if self._created_venv:
            shutil.rmtree(self.venv, ignore_errors=True)
            self._making.unlink(missing_ok=True)

    def commit(self) -> None:
        for partial, target in self._pending:
            os.replace(partial, target)
        self._pending.clear()

    def install(self) -> int:
        """pip install --no-index --require-hashes into the venv; returns how many wheels were offered."""
        if self._venv_thread is not None:
            self._venv_thread.join()
        if self._venv_error is not None:
            raise self._venv_error
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
        # Byte-compiling every module of a large stack is most of pip's time, and competes with docker
        # for the CPU; Python compiles what is imported on first use anyway (--compile restores pip's way).
        args = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-cache-dir",
                "--compile" if self.compile else "--no-compile",
                "--find-links", str(self.folder), "--require-hashes", "-r", str(self.requirements)]
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT)
        if result.returncode:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise OperationalError(f"pip install into {self.venv} failed: {' '.join(lines[-3:])[:500]}")
        (self.venv / MARKER).write_text(f"{self._requirements_sha}\n")
        return len(list(self.folder.glob("*.whl")))


def write_index(folder: Path, wheels: list[dict], source: Path, requirements: Path | None) -> None:
    """A PEP 503 simple index over the wheels, for any static web server: simple/<project>/ and files/."""
    from html import escape
    from packaging.utils import canonicalize_name
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[dict]] = {}
    for wheel in wheels:
        target = files / wheel["filename"]
        if not (target.is_file() and target.stat().st_size == wheel["size"]):
            shutil.copyfile(source / wheel["filename"], target)
        projects.setdefault(canonicalize_name(wheel["name"]), []).append(wheel)
    simple = folder / "simple"
    for project, entries in projects.items():
        page = simple / project
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(f'    <a href="../../files/{escape(w["filename"])}#sha256={w["sha256"]}">'
                        f'{escape(w["filename"])}</a><br>\n' for w in sorted(entries, key=lambda w: w["filename"]))
        (page / "index.html").write_text(f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" "
                                         f"content=\"1.0\"><title>Links for {project}</title></head>\n<body>\n"
                                         f"{links}</body></html>\n")
    links = "".join(f'    <a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" "
                                       f"content=\"1.0\"><title>Simple index</title></head>\n<body>\n{links}"
                                       "</body></html>\n")
    if requirements is not None and requirements.is_file():
        shutil.copyfile(requirements, folder / REQUIREMENTS)


# ---- the verb -----------------------------------------------------------------------------------

def _loader(options: RestoreOptions) -> Loader:
    if options.registry:
        return RegistryPusher(options.registry, options.insecure)
    if options.containerd:
        from bundler.loaders import DEFAULT_CONTAINERD
        return ContainerdImporter(options.containerd_address or DEFAULT_CONTAINERD, options.namespace)
    from bundler.images import docker_client
    try:
        return DockerLoader(docker_client())
    except BundlerError as exc:
        raise type(exc)(f"{exc}; use --wheels-only to install only the wheels, or --registry HOST to push the "
                        "images to a registry instead") from None


def restore(path: Path, options: RestoreOptions, progress: Progress = NULL) -> RestoreReport:
    head, _ = read_head(path)
    check_head(head, path)
    report = RestoreReport()
    dest = options.dest or Path(head["profile"]["name"])
    images = head.get("images", []) if options.images else []
    has_wheels = options.wheels and bool(head.get("wheels"))

    wheels: Wheels | None = None
    if has_wheels:
        wheels = Wheels(head, dest, options.venv or dest / "venv", options.python, options.compile)
        report.venv = wheels.venv
        needed = sum(w["size"] for w in head["wheels"]) * 3   # the files, and what pip unpacks
        dest.mkdir(parents=True, exist_ok=True)
        if free_space(dest) < needed:
            raise DiskError(f"{dest}: restoring the wheels needs about {human_size(needed)}, only "
                            f"{human_size(free_space(dest))} is free")
    loader: Loader | None = None
    if images:
        loader = _loader(options)
        report.notes += loader.plan(images)

    wheels_done = wheels is None or (wheels.installed() and _wheel_files_present(head, wheels))
    if (loader is None or loader.done()) and wheels_done:
        report.read_bundle = False
        report.notes.append("nothing to do: everything in the bundle is already restored")
        _finish_extras(head, options, wheels, report)
        return report

    if wheels is not None and not wheels.installed():
        wheels.start()
    layout: dict[str, bytes] = {}
    manifest_blobs = {f"blobs/sha256/{i['manifest'].split(':')[1]}" for i in images}
    total = sum(int(m["size"]) for m in head["members"])
    try:
        with progress.bar("restoring", total) as bar:
            for member in iter_members(path, head):
                name = member.name
                if name.startswith(f"{LAYOUT_DIR}/"):
                    _image_member(name[len(LAYOUT_DIR) + 1:], member, loader, layout, manifest_blobs)
                elif wheels is not None and (name == REQUIREMENTS or name.startswith(f"{WHEELS_DIR}/")):
                    wheels.member(name, member)
                member.finish()
                bar.update(member.size)
    except BaseException:
        if loader is not None:
            loader.abort()
        if wheels is not None:
            wheels.discard()
        raise

    # Everything is verified: commit.
    install_error: list[BaseException] = []
    installer = None
    if wheels is not None:
        wheels.commit()
        if not wheels.installed():
            def install() -> None:
                try:
                    report.installed = wheels.install()
                except BaseException as exc:  # noqa: BLE001 - raised below
                    install_error.append(exc)
            installer = threading.Thread(target=install, name="pip")
            installer.start()
    try:
        if loader is not None:
            report.notes += loader.commit(layout)
    finally:
        if installer is not None:
            installer.join()
    if install_error:
        raise install_error[0]
    if wheels is not None:
        report.notes.append(f"venv {wheels.venv}: {len(head['wheels'])} wheels installed offline")
    _finish_extras(head, options, wheels, report)
    return report


def _wheel_files_present(head: dict, wheels: Wheels) -> bool:
    return all((wheels.folder / w["filename"]).is_file() for w in head["wheels"]) and wheels.requirements.is_file()


def _image_member(name: str, member: MemberReader, loader: Loader | None, layout: dict[str, bytes],
                  manifest_blobs: set[str]) -> None:
    if loader is None:
        return
    if not name.startswith("blobs/"):
        layout[name] = member.read()
        return
    digest = "sha256:" + name.rsplit("/", 1)[1]
    if name in manifest_blobs:
        layout[name] = member.read()
        if loader.wants(digest):
            loader.blob(digest, len(layout[name]), iter([layout[name]]))
        return
    if loader.wants(digest):
        try:
            loader.blob(digest, member.size, _chunks(member))
        except BundlerError:
            member.finish()   # a damaged member is the real cause: name it
            raise


def _chunks(member: MemberReader) -> Iterator[bytes]:
    while chunk := member.read(CHUNK):
        yield chunk


def _finish_extras(head: dict, options: RestoreOptions, wheels: Wheels | None, report: RestoreReport) -> None:
    if options.index_dir is not None and wheels is not None:
        write_index(options.index_dir, head["wheels"], wheels.folder, wheels.requirements)
        report.notes.append(f"PEP 503 index of {len(head['wheels'])} wheels in {options.index_dir} "
                            f"(serve it, then pip install --index-url http://HOST/simple/)")
    if options.check and wheels is not None and head["profile"].get("check"):
        report.check = run_check(head["profile"]["check"], wheels.venv)


def run_check(command: str, venv: Path) -> tuple[str, int, str]:
    """The profile's check, in the venv (its bin first on PATH), with no network needed."""
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONHOME", None)
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=1800)  # noqa: S602
    output = (result.stdout + result.stderr).strip()
    return command, result.returncode, re.sub(r"\n{3,}", "\n\n", output)[-4000:]
