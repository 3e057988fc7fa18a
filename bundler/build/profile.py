"""Profiles: the YAML file that names a stack (images, wheels, target) and how to check it.

Validation follows the schema in docs/profiles.md to the letter; every complaint names the file
and line.
A profile argument that is not a file is looked up among the built-in profiles, which ship inside
the package (``bundler/profiles``) so they work after a plain ``pip install``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from bundler.build.mirrors import ORIGIN_PROFILE, Mirrors, parse_mirrors
from bundler.build.models.spec import ModelSpec, parse_models
from bundler.errors import InputError, ProfileError
from bundler.format.head import DEFAULT_GLIBC, GLIBC_LEVELS
from bundler.oci.reference import ImageRef, Platform
from bundler.yamlfile import Doc, LocatedDict, LocatedList, describe, read_text

_NAME = re.compile(r"[a-z0-9._-]+\Z")
_PYTHON = re.compile(r"3\.[0-9]{1,2}\Z")
SOURCES = ("registry", "docker")
PROFILE_SUFFIXES = (".yaml", ".yml")
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Target:
    platform: Platform             # the first of ``platforms``
    python: str | None = None      # "3.10"; required when the profile has wheels
    platforms: tuple[Platform, ...] = ()   # every platform the stack is for (target.platform may be a list)
    glibc: str | None = None       # "2.31": the manylinux level wheels are chosen for (linux only)

    def __post_init__(self) -> None:
        if not self.platforms:
            object.__setattr__(self, "platforms", (self.platform,))


@dataclass(frozen=True)
class ImageSpec:
    ref: str                        # as the user wrote it
    image: ImageRef                 # normalised
    source: str = "registry"
    exact: bool | None = None       # carried byte for byte as the registry serves it (None: the build's choice)


@dataclass(frozen=True, kw_only=True)
class PythonSpec:
    requirements: tuple[str, ...] = ()
    requirements_file: Path | None = None
    lock: Path | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    source: Path | None = None                  # the profile file ``requirements`` are written in
    lines: tuple[int, ...] = ()                 # the line of each requirement there


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    target: Target
    description: str = ""
    images: tuple[ImageSpec, ...] = ()
    python: PythonSpec | None = None
    check: str | None = None
    mirrors: Mirrors | None = None
    models: tuple[ModelSpec, ...] = ()    # Hugging Face and ModelScope repositories (modelspec.py)
    path: Path | None = None
    source_text: str = field(default="", repr=False, compare=False)


_TOP_KEYS = {"name", "description", "target", "images", "python", "models", "check", "mirrors"}
_PYTHON_KEYS = {"requirements", "requirements_file", "lock", "extra_index_urls", "find_links"}


def parse_profile(text: str, path: Path) -> Profile:
    """Validate a profile's text; relative paths in it are taken from ``path``'s folder."""
    doc = Doc(path, ProfileError)
    data = doc.load_text(text)
    if data is None:
        raise doc.fail(None, "", "the file is empty; a profile needs at least name and target")
    top = doc.mapping(data, "", None, allowed=_TOP_KEYS, required={"name", "target"})

    name = doc.string(top["name"], "name", top.lines["name"])
    if not _NAME.match(name):
        raise doc.fail(top.lines["name"], "name", f"{name!r} may hold only a-z, 0-9, '.', '_' and '-'")
    description = ""
    if "description" in top:
        description = doc.string(top["description"], "description", top.lines["description"])

    target = _parse_target(doc, top["target"], top.lines["target"])
    images = _parse_images(doc, top["images"], top.lines["images"]) if "images" in top else ()
    python = None
    if "python" in top:
        python = _parse_python(doc, top["python"], top.lines["python"], path=path)
        if target.python is None:
            raise doc.fail(top.lines["target"], "target.python",
                           "required when the profile has a python: section (the CPython version, like \"3.10\")")
    models = parse_models(doc, top["models"], top.lines["models"]) if "models" in top else ()
    check = None
    if "check" in top:
        check = doc.string(top["check"], "check", top.lines["check"])
        if not check.strip():
            raise doc.fail(top.lines["check"], "check", "empty command")
    mirrors = None
    if "mirrors" in top:
        mirrors = parse_mirrors(doc, top["mirrors"], "mirrors", line=top.lines["mirrors"],
                                origin=f"{ORIGIN_PROFILE} {path}")
    return Profile(name=name, description=description, target=target, images=images, python=python,
                   check=check, mirrors=mirrors, models=models, path=path, source_text=text)


def _parse_target(doc: Doc, value: Any, line: int) -> Target:
    target = doc.mapping(value, "target", line, allowed={"platform", "python", "glibc"}, required={"platform"})
    platform_line = target.lines["platform"]
    raw = target["platform"]
    if isinstance(raw, list):
        texts = [text for text, _ in doc.string_list(raw, "target.platform", platform_line)]
        if not texts:
            raise doc.fail(platform_line, "target.platform", "empty list: name at least one platform")
    else:
        texts = [doc.string(raw, "target.platform", platform_line)]
    platforms = []
    for text in texts:
        try:
            platform = Platform.parse(text)
        except InputError as exc:
            raise doc.fail(platform_line, "target.platform", str(exc)) from None
        if platform in platforms:
            raise doc.fail(platform_line, "target.platform", f"{text} is listed twice")
        platforms.append(platform)
    python = None
    if "python" in target:
        raw, py_line = target["python"], target.lines["python"]
        if isinstance(raw, float):
            raise doc.fail(py_line, "target.python",
                           f"{raw} was read as a number; quote the version: python: \"{raw}\"")
        python = doc.string(raw, "target.python", py_line)
        if not _PYTHON.match(python):
            raise doc.fail(py_line, "target.python", f"{python!r} is not a CPython 3 minor version like \"3.10\"")
    linux = any(platform.os == "linux" for platform in platforms)
    glibc = DEFAULT_GLIBC if linux else None
    if "glibc" in target:
        raw, glibc_line = target["glibc"], target.lines["glibc"]
        if not linux:
            raise doc.fail(glibc_line, "target.glibc", f"only a linux target has a glibc (this one is "
                                                       f"{', '.join(map(str, platforms))})")
        if isinstance(raw, float):
            raise doc.fail(glibc_line, "target.glibc", f"{raw} was read as a number; quote the version, like "
                                                       'glibc: "2.31"')
        glibc = doc.string(raw, "target.glibc", glibc_line)
        if glibc not in GLIBC_LEVELS:
            raise doc.fail(glibc_line, "target.glibc", f"{glibc!r} is not a manylinux level wheels are resolved for "
                                                       f"({', '.join(GLIBC_LEVELS)})")
    return Target(platforms[0], python, tuple(platforms), glibc)


def _parse_images(doc: Doc, value: Any, line: int) -> tuple[ImageSpec, ...]:
    if not isinstance(value, LocatedList):
        raise doc.fail(line, "images", f"expected a list, got {describe(value)}")
    specs = []
    for index, (item, item_line) in enumerate(zip(value, value.lines)):
        key = f"images[{index}]"
        source, exact = "registry", None
        if isinstance(item, LocatedDict):
            entry = doc.mapping(item, key, item_line, allowed={"ref", "source", "exact"}, required={"ref"})
            ref = doc.string(entry["ref"], f"{key}.ref", entry.lines["ref"])
            if "source" in entry:
                source = doc.string(entry["source"], f"{key}.source", entry.lines["source"])
                if source not in SOURCES:
                    raise doc.fail(entry.lines["source"], f"{key}.source",
                                   f"{source!r} is not one of {', '.join(SOURCES)}")
            if "exact" in entry:
                exact = entry["exact"]
                if not isinstance(exact, bool):
                    raise doc.fail(entry.lines["exact"], f"{key}.exact",
                                   f"expected true or false, got {describe(exact)}")
                if exact and source == "docker":
                    raise doc.fail(entry.lines["exact"], f"{key}.exact", "an image from the local docker engine has "
                                   "no registry form to keep; carry it with exact: false")
        elif isinstance(item, str):
            ref = item
        else:
            raise doc.fail(item_line, key, f"expected an image reference or a mapping with ref:, got {describe(item)}")
        try:
            image = ImageRef.parse(ref)
        except InputError as exc:
            raise doc.fail(item_line, key, str(exc)) from None
        if any(s.image == image for s in specs):
            raise doc.fail(item_line, key, f"{ref!r} is listed twice")
        specs.append(ImageSpec(ref, image, source, exact=exact))
    return tuple(specs)


def _parse_python(doc: Doc, value: Any, line: int, *, path: Path) -> PythonSpec:
    base = path.parent
    py = doc.mapping(value, "python", line, allowed=_PYTHON_KEYS)
    given = [k for k in ("requirements", "requirements_file", "lock") if k in py]
    if len(given) != 1:
        problem = "takes exactly one of requirements, requirements_file, lock"
        raise doc.fail(py.line or line, "python", problem + (f" (found {', '.join(given)})" if given else ""))
    requirements: list[str] = []
    lines: list[int] = []
    requirements_file = lock = None
    if "requirements" in py:
        items = doc.string_list(py["requirements"], "python.requirements", py.lines["requirements"])
        if not items:
            raise doc.fail(py.lines["requirements"], "python.requirements", "empty list")
        for index, (text, item_line) in enumerate(items):
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0]
                raise doc.fail(item_line, f"python.requirements[{index}]",
                               f"{text!r} is not a valid requirement: {reason}") from None
            requirements.append(text)
            lines.append(item_line)
    for key in ("requirements_file", "lock"):
        if key in py:
            rel = doc.string(py[key], f"python.{key}", py.lines[key])
            file = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            if not file.is_file():
                raise doc.fail(py.lines[key], f"python.{key}", f"{file}: no such file")
            if key == "lock":
                lock = file
            else:
                requirements_file = file
    extra = tuple(u for u, _ in doc.string_list(py["extra_index_urls"], "python.extra_index_urls",
                                                 py.lines["extra_index_urls"])) if "extra_index_urls" in py else ()
    for url in extra:
        if not re.match(r"(https?|file)://", url):
            raise doc.fail(py.lines["extra_index_urls"], "python.extra_index_urls", f"{url!r} is not a URL")
    links = []
    if "find_links" in py:
        for link, _ in doc.string_list(py["find_links"], "python.find_links", py.lines["find_links"]):
            links.append(link if re.match(r"(https?|file)://", link) else str((base / link).resolve()))
    return PythonSpec(requirements=tuple(requirements), requirements_file=requirements_file, lock=lock,
                      extra_index_urls=extra, find_links=tuple(links), source=path, lines=tuple(lines))


# ---- built-in profiles ---------------------------------------------------------------------

def _builtin_dir() -> Path:
    return Path(str(resources.files("bundler.profiles")))


def builtin_profiles() -> list[Profile]:
    """Every built-in profile, sorted by name."""
    return [load_profile_file(p) for p in sorted(_builtin_dir().glob("*.yaml"))]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _builtin_dir().glob("*.yaml"))


def builtin_lock(profile: Profile) -> Path | None:
    """The lock committed beside a built-in profile (``NAME.lock``), or None for any other profile.

    Only built-in profiles get one implicitly: they are tested against exactly that lock, while a
    lock that merely sits beside a user's profile may be stale.
    """
    if profile.path is None or profile.path.parent.resolve() != _builtin_dir().resolve():
        return None
    lock = profile.path.with_suffix(LOCK_SUFFIX)
    return lock if lock.is_file() else None


def load_profile_file(path: Path) -> Profile:
    return parse_profile(read_text(path, ProfileError), path)


def load_profile(argument: str) -> Profile:
    """A profile from a file path, or else the built-in profile of that name."""
    path = Path(argument)
    if path.is_file():
        return load_profile_file(path)
    if path.suffix in PROFILE_SUFFIXES or "/" in argument:
        raise ProfileError(f"{argument}: no such profile file")
    builtin = _builtin_dir() / f"{argument}.yaml"
    if builtin.is_file():
        return load_profile_file(builtin)
    names = ", ".join(builtin_names()) or "none"
    raise ProfileError(f"{argument}: neither a profile file nor a built-in profile (built-in: {names})")
