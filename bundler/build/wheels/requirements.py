"""The wheels' target and the requirements lock: the tags a target accepts, its PEP 508 environment,
and the pip-tools lock format (a user's own ``pip-compile --generate-hashes`` file included), one
lock for several platforms with markers that say which pin is for which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name

from bundler.errors import InputError, LockError
from bundler.format.head import DEFAULT_GLIBC, glibc_version
from bundler.oci.reference import Platform

MACOS_BASELINE = (12, 0)

# uv's --python-platform for each supported target (linux: the architecture, then -manylinux_2_N)
_UV_PLATFORMS = {
    ("linux", "amd64"): "x86_64",
    ("linux", "arm64"): "aarch64",
    ("windows", "amd64"): "x86_64-pc-windows-msvc",
    ("windows", "arm64"): "aarch64-pc-windows-msvc",
    ("windows", "386"): "i686-pc-windows-msvc",
    ("darwin", "amd64"): "x86_64-apple-darwin",
    ("darwin", "arm64"): "aarch64-apple-darwin",
}
_MACHINES = {("linux", "amd64"): "x86_64", ("linux", "arm64"): "aarch64", ("darwin", "amd64"): "x86_64",
             ("darwin", "arm64"): "arm64", ("windows", "amd64"): "AMD64", ("windows", "arm64"): "ARM64",
             ("windows", "386"): "x86"}


@dataclass(frozen=True)
class WheelTarget:
    """The machine the wheels are for: platform, CPython version, and on linux its glibc (the
    newest manylinux level a wheel may have)."""

    platform: Platform
    python: str
    glibc: str = DEFAULT_GLIBC

    def __post_init__(self) -> None:
        if (self.platform.os, self.platform.architecture) not in _UV_PLATFORMS:
            supported = ", ".join(f"{o}/{a}" for o, a in _UV_PLATFORMS)
            raise InputError(f"wheels for {self.platform} are not supported (supported: {supported})")

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")
        return int(major), int(minor)

    @property
    def uv_platform(self) -> str:
        found = _UV_PLATFORMS[(self.platform.os, self.platform.architecture)]
        return f"{found}-manylinux_{self.glibc.replace('.', '_')}" if self.platform.os == "linux" else found

    @property
    def platform_tags(self) -> list[str]:
        os_, arch = self.platform.os, self.platform.architecture
        machine = _MACHINES[(os_, arch)]
        if os_ == "linux":
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            newest = glibc_version(self.glibc)[1]
            tags = [t for minor in range(newest, 4, -1) for t in
                    ([f"manylinux_2_{minor}_{machine}"] + ([f"{legacy[minor]}_{machine}"] if minor in legacy else []))]
            return tags + [f"linux_{machine}"]
        if os_ == "windows":
            return [{"AMD64": "win_amd64", "ARM64": "win_arm64", "x86": "win32"}[machine]]
        return list(mac_platforms(MACOS_BASELINE, machine))

    @property
    def tags(self) -> list[Tag]:
        """Every tag the target accepts, best first (pip's own order)."""
        version, platforms = self.version, self.platform_tags
        interpreter = f"cp{version[0]}{version[1]}"
        return list(dict.fromkeys([*cpython_tags(version, platforms=platforms),
                                   *compatible_tags(version, interpreter, platforms)]))

    def environment(self) -> dict[str, str]:
        """PEP 508 marker values of the target."""
        os_ = self.platform.os
        full = f"{self.python}.0"
        return {
            "implementation_name": "cpython", "implementation_version": full,
            "os_name": "nt" if os_ == "windows" else "posix",
            "platform_machine": _MACHINES[(os_, self.platform.architecture)],
            "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "",
            "platform_system": {"linux": "Linux", "windows": "Windows", "darwin": "Darwin"}[os_],
            "python_full_version": full, "python_version": self.python,
            "sys_platform": {"linux": "linux", "windows": "win32", "darwin": "darwin"}[os_],
        }

    def __str__(self) -> str:
        glibc = f" glibc {self.glibc}" if self.platform.os == "linux" else ""
        return f"{self.platform} CPython {self.python}{glibc}"


# ---- the requirements lock -----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Pin:
    """One ``name==version`` line of a lock, with its hashes."""

    name: str                       # canonical
    version: str
    hashes: tuple[str, ...]         # hex sha256
    marker: str | None = None
    line: int = 0

    def applies_to(self, target: WheelTarget) -> bool:
        return self.marker is None or Marker(self.marker).evaluate(target.environment())


_OPTION_LINE = re.compile(r"-(-index-url|-extra-index-url|-find-links|-trusted-host|-no-binary|-only-binary|"
                          r"-prefer-binary|-pre|i|f)\b")


def parse_lock(text: str, source: str) -> list[Pin]:
    """Read a pip-tools style lock: every requirement pinned with ``==`` and at least one ``--hash``."""
    pins: list[Pin] = []
    logical, start = "", 0
    lines = text.splitlines()
    for number, raw in enumerate(lines + [""], start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not logical:
            start = number
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        entry, logical = logical.strip(), ""
        if not entry:
            continue
        if entry.startswith("-"):
            if entry.startswith(("-r", "-c", "--requirement", "--constraint", "-e", "--editable")):
                raise LockError(f"{source}:{start}: {entry.split()[0]} is not allowed in a lock; inline what it names")
            if not _OPTION_LINE.match(entry):
                raise LockError(f"{source}:{start}: unsupported option {entry.split()[0]!r}")
            continue
        pins.append(_parse_pin(entry, source, start))
    names = {}
    for pin in pins:
        if pin.name in names and pin.marker is None and names[pin.name].marker is None:
            raise LockError(f"{source}:{pin.line}: {pin.name} is pinned twice (also at line {names[pin.name].line})")
        names.setdefault(pin.name, pin)
    return pins


def _parse_pin(entry: str, source: str, line: int) -> Pin:
    parts = entry.split()
    hashes, rest = [], []
    for part in parts:
        if part.startswith("--hash="):
            algorithm, _, value = part[len("--hash="):].partition(":")
            if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", value):
                raise LockError(f"{source}:{line}: {part!r} is not --hash=sha256:<64 hex digits>")
            hashes.append(value)
        elif part.startswith("--"):
            raise LockError(f"{source}:{line}: unsupported per-requirement option {part!r}")
        else:
            rest.append(part)
    text = " ".join(rest)
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise LockError(f"{source}:{line}: {text!r} is not a valid requirement: {str(exc).splitlines()[0]}") from None
    if requirement.url:
        raise LockError(f"{source}:{line}: {requirement.name}: direct URL requirements cannot be bundled by hash; "
                        "pin a version from an index")
    specs = list(requirement.specifier)
    if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
        raise LockError(f"{source}:{line}: {requirement.name} is not pinned to one version (write name==version)")
    if not hashes:
        raise LockError(f"{source}:{line}: {requirement.name}=={specs[0].version} has no --hash "
                        "(generate the lock with --generate-hashes)")
    marker = str(requirement.marker) if requirement.marker else None
    return Pin(name=canonicalize_name(requirement.name), version=specs[0].version, hashes=tuple(hashes),
               marker=marker, line=line)


def platform_marker(target: WheelTarget) -> str:
    """The PEP 508 marker true on the target's platform only."""
    env = target.environment()
    return f'sys_platform == "{env["sys_platform"]}" and platform_machine == "{env["platform_machine"]}"'


def merge_locks(locks: dict[WheelTarget, str]) -> str:
    """One lock for several platforms, from a lock resolved for each: a pin the same for all keeps
    its line; one that is not gets a marker naming the platforms it is for. pip reads it as it is on
    each platform, and installs what its markers select there."""
    if len(locks) == 1:
        return next(iter(locks.values()))
    seen: dict[tuple[str, str, str | None], tuple[list[WheelTarget], dict[str, None]]] = {}
    for target, text in locks.items():
        for pin in parse_lock(text, f"the lock for {target}"):
            targets, hashes = seen.setdefault((pin.name, pin.version, pin.marker), ([], {}))
            targets.append(target)
            hashes.update(dict.fromkeys(pin.hashes))
    lines = [f"# one lock for {', '.join(str(t.platform) for t in locks)}: a line for some of them says which"]
    for (name, version, marker), (targets, hashes) in sorted(seen.items(), key=lambda item: item[0][:2]):
        if len(targets) < len(locks):
            which = " or ".join(f"({platform_marker(t)})" for t in targets)
            marker = f"({marker}) and ({which})" if marker else which
        lines.append(f"{name}=={version}" + (f" ; {marker}" if marker else "") + " \\")
        lines += [f"    --hash=sha256:{h}" + (" \\" if i + 1 < len(hashes) else "") for i, h in enumerate(hashes)]
    return "\n".join(lines) + "\n"


def add_hashes(lock_text: str, extra: dict[str, list[str]]) -> str:
    """The lock with more ``--hash`` values for some pins (wheels bundler built from sdists)."""
    if not extra:
        return lock_text
    out, pending = [], None
    for raw in lock_text.splitlines():
        stripped = raw.strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==", stripped)
        if match and not stripped.startswith("#"):
            pending = canonicalize_name(match.group(1))
        out.append(raw)
        if pending in extra and "--hash=" in stripped and not stripped.endswith("\\"):
            out[-1] = raw + " \\"
            out.extend(f"    --hash=sha256:{h}" + (" \\" if i + 1 < len(extra[pending]) else "")
                       for i, h in enumerate(extra[pending]))
            pending = None
    return "\n".join(out) + "\n"


# ---- index pages ---------------------------------------------------------------------------

