"""The one-file restorer: bundler's air-gapped side in one file that needs nothing but a CPython.

``bundler build`` writes it beside every bundle (``OUT.pyz``); ``python3 OUT.pyz restore OUT`` then
runs ``inspect``, ``verify`` and ``restore`` on a machine where bundler and its dependencies are not
installed. It is a shiv zipapp: shiv's small bootstrap unpacks its site-packages once (under
``~/.shiv``) and calls restorer_entry.py, which refuses a wrong Python or machine in one line.

How it is made: the wheels bundler/restorer.lock pins (bundler's own dependencies less uv and isal)
are fetched for each supported CPython on each target platform exactly as a bundle's wheels are
(through the PyPI mirrors, checked against the lock's hashes, into the cache). pypa/installer
unpacks each Python's wheels, and their files are laid into one site-packages beside bundler's
air-gapped modules. Extension modules carry their ABI and machine in their names
(``backend_c.cpython-39-x86_64-linux-gnu.so``, ``...-aarch64-linux-gnu.so``), so every Python's on
every platform sit side by side and each interpreter imports its own: one file serves a bundle for
x86 and Arm nodes alike. Any other file must be the same for every Python and platform, or nothing
is made.
Files are sorted, dated 1980 and given one mode, so the same inputs give the same bytes, and the
result is cached under a key of everything that goes into it: a build makes it once.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from packaging.utils import parse_wheel_filename

import bundler
from bundler import __version__, proc
from bundler.build.cache import Cache
from bundler.build.context import BuildContext
from bundler.build.options import FetchStats
from bundler.build.wheels.fetch import Wheel, WheelFetcher, fetch_wheels, sources_for
from bundler.build.wheels.requirements import WheelTarget, parse_lock
from bundler.build.wheels.resolve import default_index_url
from bundler.digest import Digest
from bundler.errors import InputError, LockError, OperationalError
from bundler.files import removed_on_failure, sha256_file
from bundler.format.head import RestorerEntry
from bundler.oci.reference import Platform
from bundler.parallel import Stopped
from bundler.progress import waiting

LOCK = "restorer.lock"                 # package data: the wheels' pins, from scripts/lock-restorer.sh
DEFAULT_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")   # RHEL 9's 3.9 ... Ubuntu 24.04's 3.12, and 3.13
OLDEST = (3, 9)                        # the air-gapped side keeps to what CPython 3.9 supports
# bundler's dependencies that only the connected side imports (argcomplete: completion is not the
# restorer's); and cryptography, which the air-gapped side uses where it is installed: the restorer
# checks signatures with the system's ssh-keygen instead (sshsig.py), so that it carries no native
# library of its own per platform
CONNECTED_ONLY = ("uv", "isal", "huggingface_hub", "shiv", "installer", "argcomplete", "cryptography", "bcrypt",
                  "cyclonedx-python-lib", "pyfastcdc")
# bundler's folders the restorer carries whole: the wire format, the air-gapped side, and the packages
# both sides use; the modules directly in bundler/ (the ground) go with them, and of cli/ those that
# reach nothing of build/ (carried_cli). The connected side, build/, stays out.
CARRIED = ("format", "restore", "net", "oci")
ENTRY_POINT = "bundler.restorer_entry:main"
MADE_FOR = "restorer.json"             # read by restorer_entry.py
SHEBANG = "/usr/bin/env python3"
ZIP_DATE = 315532800                   # 1980-01-01, the first date a zip file can hold
SHIV_TIMEOUT = 900
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


@dataclass(frozen=True, kw_only=True)
class RestorerFile:
    """A restorer in the cache."""

    path: Path
    platforms: tuple[str, ...]
    pythons: tuple[str, ...]
    sha256: str
    size: int
    made: bool                         # made by this call; False when taken from the cache

    def entry(self) -> RestorerEntry:
        """Its entry in bundle.json."""
        return RestorerEntry(self.platforms[0], self.pythons, self.size, sha256=self.sha256,
                             platforms=self.platforms if len(self.platforms) > 1 else ())


def pythons_for(target_python: str | None) -> tuple[str, ...]:
    """The Pythons a bundle's restorer runs on: the defaults, and the target's own when it is newer."""
    if target_python is None or _version(target_python) < OLDEST:
        return DEFAULT_PYTHONS
    return tuple(sorted(set(DEFAULT_PYTHONS) | {target_python}, key=_version))


def unsupported(platform: str) -> str | None:
    """Why no restorer can be made for ``platform``, or None: it is made for Linux machines (where the
    air-gapped side runs docker, containerd and venvs) whose wheels bundler fetches."""
    try:
        parsed = Platform.parse(platform)
        WheelTarget(parsed, DEFAULT_PYTHONS[0])
    except InputError as exc:
        return str(exc)
    if parsed.os != "linux":
        return f"the one-file restorer is made for Linux machines only, not {platform}: install bundler there"
    return None


def check_pythons(pythons: list[str]) -> tuple[str, ...]:
    """``--python`` values: ``3.N`` with N of 9 or more, each once, oldest first."""
    for python in pythons:
        if not re.fullmatch(r"3\.\d+", python) or _version(python) < OLDEST:
            raise InputError(f"--python {python}: the restorer runs on CPython 3.9 and later (write it as 3.N)")
    return tuple(sorted(set(pythons), key=_version))


def _version(python: str) -> tuple[int, int]:
    major, minor = python.split(".")
    return int(major), int(minor)


def make_restorer(platforms: tuple[str, ...], pythons: tuple[str, ...], ctx: BuildContext) -> RestorerFile:
    """The restorer for ``platforms`` (one file for all of them) and ``pythons``, from the cache or made now."""
    platforms = tuple(dict.fromkeys(str(Platform.parse(p)) for p in platforms))
    for platform in platforms:
        if (problem := unsupported(platform)) is not None:
            raise InputError(f"--platform {platform}: {problem}")
    targets = [WheelTarget(Platform.parse(platform), python) for platform in platforms for python in pythons]
    lock_text = resources.files("bundler").joinpath(LOCK).read_text()
    key = _key(platforms, pythons, lock_text)
    cache = ctx.cache
    with cache.lock(f"restorer-{key}"):
        known = cache.meta("restorer", key)
        if known is not None and cache.has(Digest.from_hex(known["sha256"])):
            digest = Digest.from_hex(known["sha256"])
            return RestorerFile(path=cache.path(digest), platforms=platforms, pythons=pythons, sha256=digest.hex,
                                size=cache.size(digest), made=False)
        with waiting(ctx.progress, "making the restorer"):   # its wheels' bars within: the rest is unpacking, shiv
            wheels = _fetch(lock_text, targets, ctx)
            work = Path(tempfile.mkdtemp(prefix="restorer-", dir=cache.root / "tmp"))
            try:
                site = work / "site-packages"
                _install(wheels, cache, work, site, cancel=ctx.cancel)
                _add_bundler(site, platforms, pythons, wheels=wheels)
                out = work / "restorer.pyz"
                _zip(site, out, ctx.cancel)
                sha = sha256_file(out)
                size = out.stat().st_size
                cache.commit(out, Digest.from_hex(sha))
                cache.set_meta("restorer", key, {"sha256": sha, "platforms": list(platforms),
                                                 "pythons": list(pythons)})
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return RestorerFile(path=cache.path(Digest.from_hex(sha)), platforms=platforms, pythons=pythons, sha256=sha,
                        size=size, made=True)


def write_restorer(out: Path, platforms: tuple[str, ...], pythons: tuple[str, ...], *, ctx: BuildContext,
                   force: bool = False) -> RestorerFile:
    """``bundler restorer -o OUT``: the restorer at ``out``, written whole or not at all."""
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists (use --force to replace it)")
    made = make_restorer(platforms, pythons, ctx)
    os.replace(stage_copy(made, out), out)
    return made


def stage_copy(restorer: RestorerFile, final: Path) -> Path:
    """A copy of the restorer at ``final.partial``, checked against its sha256; the caller renames it."""
    partial = final.with_name(final.name + ".partial")
    with removed_on_failure(partial, f"writing {partial}"):
        shutil.copy(restorer.path, partial)   # its mode too: ./OUT.pyz runs it
        if sha256_file(partial) != restorer.sha256:
            raise OperationalError(f"{restorer.path}: the cached restorer changed on disk; remove it and run again")
    return partial


def _key(platforms: tuple[str, ...], pythons: tuple[str, ...], lock_text: str) -> str:
    """What the restorer's bytes depend on: bundler's code and version, the pins, the tools, the target."""
    from importlib.metadata import version
    code = hashlib.sha256()
    for path in _bundler_files():
        code.update(f"{path.relative_to(_package_dir())}\0".encode())
        code.update(path.read_bytes())
    parts = {"bundler": __version__, "code": code.hexdigest(), "lock": hashlib.sha256(lock_text.encode()).hexdigest(),
             "shiv": version("shiv"), "installer": version("installer"),
             "platform": platforms[0] if len(platforms) == 1 else list(platforms), "pythons": list(pythons)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _fetch(lock_text: str, targets: list[WheelTarget], ctx: BuildContext) -> dict[WheelTarget, list[Wheel]]:
    """Every pinned wheel for each Python on each platform, through the PyPI mirrors into the cache,
    checked by hash."""
    pins = parse_lock(lock_text, f"bundler/{LOCK}")
    sources = sources_for(ctx.mirrors.for_pypi(), default_index_url)
    stats = FetchStats()
    found = {}
    for target in targets:
        fetcher = WheelFetcher(target, sources, ctx.fallback, ctx.cache, builder=None, stop=ctx.cancel)
        found[target] = fetch_wheels(pins, fetcher, ctx.jobs, progress=ctx.progress, stats=stats,
                                     purpose=f" for the restorer (CPython {target.python} on {target.platform})")
    return found


def _install(wheels: dict[WheelTarget, list[Wheel]], cache: Cache, work: Path, site: Path, *,
             cancel: threading.Event) -> None:
    """Each Python's wheels on each platform unpacked by pypa/installer, then laid into one site-packages;
    Stopped between two wheels once ``cancel`` is set."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile
    site.mkdir()
    for target, chosen in wheels.items():
        name = f"{str(target.platform).replace('/', '-')}-python{target.python}"
        part, unused = work / name, work / f"unused-{name}"
        scheme = {"purelib": str(part), "platlib": str(part), "headers": str(unused / "include"),
                  "scripts": str(unused / "bin"), "data": str(unused / "data")}
        destination = SchemeDictionaryDestination(scheme, interpreter=SHEBANG, script_kind="posix")
        for wheel in chosen:
            if cancel.is_set():
                raise Stopped()
            try:
                with WheelFile.open(_named(wheel, cache, work)) as source:
                    install(source, destination, additional_metadata={})
            except Exception as exc:  # noqa: BLE001 - installer raises plain exceptions of its own
                raise OperationalError(f"unpacking {wheel.filename} for the restorer: {exc}") from None
        _lay_into(part, site, f"CPython {target.python} on {target.platform}")


def _named(wheel: Wheel, cache: Cache, work: Path) -> Path:
    """The cached wheel under its own file name (installer reads its tags from it)."""
    named = work / "wheels" / wheel.filename
    if not named.exists():
        named.parent.mkdir(exist_ok=True)
        source = cache.path(Digest.from_hex(wheel.sha256))
        try:
            os.link(source, named)
        except OSError:
            shutil.copyfile(source, named)
    return named


def _lay_into(part: Path, site: Path, what: str) -> None:
    """One Python's files (on one platform) into the shared site-packages: new ones moved in, shared ones
    must be equal."""
    for path in sorted(part.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(part)
        target = site / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        elif relative.parts[0].endswith(".dist-info"):
            continue   # names the wheel's own tags; nothing reads it at run time, one copy serves
        elif target.read_bytes() != path.read_bytes():
            raise LockError(f"bundler/{LOCK}: {relative.as_posix()} differs for {what} from the one laid in "
                            "before: one site-packages serves every Python and platform, so pin one version for all")


def _add_bundler(site: Path, platforms: tuple[str, ...], pythons: tuple[str, ...],
                 *, wheels: dict[WheelTarget, list[Wheel]]) -> None:
    """bundler's air-gapped modules, and what restorer_entry.py checks before it runs them: for each
    platform, the machine it names and the glibc its extension modules need."""
    root = _package_dir()
    for path in _bundler_files():
        target = site / "bundler" / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    machines = []
    for platform in platforms:
        mine = [t for t in wheels if str(t.platform) == platform]
        marker = mine[0].environment()
        machines.append({"platform": platform, "sys_platform": marker["sys_platform"],
                         "platform_machine": marker["platform_machine"],
                         "glibc": glibc_needed(w.filename for t in mine for w in wheels[t])})
    made_for = {"bundler": __version__, "platforms": machines, "pythons": list(pythons)}
    (site / "bundler" / MADE_FOR).write_text(json.dumps(made_for, indent=1, sort_keys=True) + "\n")


def glibc_needed(filenames: Iterable[str]) -> str | None:
    """The oldest glibc every manylinux wheel among ``filenames`` runs on (None when none is manylinux)."""
    needed = None
    for filename in filenames:
        versions = [found for tag in parse_wheel_filename(filename)[3] if (found := _glibc(tag.platform))]
        if versions and (needed is None or min(versions) > needed):
            needed = min(versions)
    return None if needed is None else f"{needed[0]}.{needed[1]}"


def _glibc(platform_tag: str) -> tuple[int, int] | None:
    match = _MANYLINUX.match(platform_tag)
    if match:
        return int(match.group(1)), int(match.group(2))
    return _LEGACY_MANYLINUX.get(platform_tag.split("_", 1)[0])


def _zip(site: Path, out: Path, cancel: threading.Event) -> None:
    """shiv's zipapp of ``site``: files sorted by shiv, dated and moded here, so the bytes repeat. shiv is
    stopped once ``cancel`` is set."""
    for path in site.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(ZIP_DATE)}
    what = "making the restorer with shiv"
    proc.check(proc.run([sys.executable, "-m", "shiv", "--site-packages", str(site), "--entry-point", ENTRY_POINT,
                         "--output-file", str(out), "--python", SHEBANG, "--reproducible"], what, SHIV_TIMEOUT,
                        env=env, cancel=cancel), what)


def _package_dir() -> Path:
    return Path(bundler.__file__).parent


def _bundler_files() -> list[Path]:
    """bundler's modules that the restorer carries: the ground, the CARRIED folders, and carried_cli()'s."""
    root = _package_dir()
    cli = carried_cli(root)
    return sorted(path for path in root.rglob("*.py") if "__pycache__" not in path.parts and (
        path.parent == root or path.relative_to(root).parts[0] in CARRIED
        or (path.parent == root / "cli" and path.stem in cli)))


def carried_cli(root: Path) -> set[str]:
    """The modules of ``root/cli`` the air-gapped commands need: every one whose imports (at its top) reach
    nothing of build/, directly or through another module of cli/. cli/__init__.py imports a command's
    group only when that command runs, and the restorer offers the air-gapped commands alone, so it
    never asks for the others."""
    imports: dict[str, set[str]] = {}
    for path in (root / "cli").glob("*.py"):
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        imports[path.stem] = found
    connected = {name for name, found in imports.items() if any(m.startswith("bundler.build") for m in found)}
    while True:
        more = {name for name, found in imports.items() if name not in connected
                and any(f"bundler.cli.{other}" in found for other in connected)}
        if not more:
            return set(imports) - connected
        connected |= more
