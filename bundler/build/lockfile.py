"""The lock file: image digests, the requirements lock and the model files of one profile, for one target.

``bundler lock`` writes it; ``bundler build --lock`` fetches exactly what it pins, so two builds
from one lock give the same bundle. It is YAML; its ``requirements`` is the pip-tools format with
``--hash`` lines, which ``pip install --require-hashes`` reads as it is.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from bundler import __version__
from bundler.build.images.pull import LockedImage
from bundler.build.models.fetch import LockedModel, check_models_fit, dump_locked, read_locked
from bundler.build.profile import Profile
from bundler.build.wheels.requirements import Pin, WheelTarget, parse_lock
from bundler.digest import Digest
from bundler.errors import DiskError, LockError
from bundler.format.head import GLIBC_BEFORE_KEY, GLIBC_LEVELS, glibc_version
from bundler.oci.reference import ImageRef, Platform
from bundler.yamlfile import Doc, LocatedList, read_text

LOCK_VERSION = 1


@dataclass(frozen=True)
class Lock:
    profile: str
    platform: str
    python: str | None
    created: int | None                        # seconds since the epoch: the bundle's timestamps
    images: tuple[LockedImage, ...] = ()
    requirements: str | None = None            # the pip-tools lock text (several platforms: one, with markers)
    tool: str = __version__
    models: tuple[LockedModel, ...] = ()       # repositories, each file pinned by sha256 (models.py)
    platforms: tuple[str, ...] = ()            # every target platform; ``platform`` is the first
    glibc: str | None = None                   # the manylinux level it was resolved for (linux only)

    def __post_init__(self) -> None:
        if not self.platforms:
            object.__setattr__(self, "platforms", (self.platform,))

    @property
    def target(self) -> WheelTarget | None:
        if not self.python:
            return None
        return WheelTarget(Platform.parse(self.platform), self.python, self.glibc or GLIBC_BEFORE_KEY)

    @property
    def targets(self) -> list[WheelTarget]:
        """The wheels' target for each platform."""
        glibc = self.glibc or GLIBC_BEFORE_KEY
        return [WheelTarget(Platform.parse(p), self.python, glibc) for p in self.platforms] if self.python else []

    def pins(self) -> list[Pin]:
        return parse_lock(self.requirements, f"lock of {self.profile}") if self.requirements else []


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH, the date reproducible builds agree on, when it is set."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LockError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None


# ---- the file --------------------------------------------------------------------------------

class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)
yaml.SafeDumper.add_representer(Digest, lambda dumper, value: dumper.represent_str(str(value)))


def dump_lock(item: Lock) -> str:
    """The lock file's text. A lock with no date (no SOURCE_DATE_EPOCH) is dated now: the file says
    when it was made."""
    data: dict = {"version": LOCK_VERSION, "tool": f"bundler {item.tool}", "profile": item.profile,
                  "target": {"platform": item.platform if len(item.platforms) == 1 else list(item.platforms),
                             **({"python": item.python} if item.python else {}),
                             **({"glibc": item.glibc} if item.glibc else {})},
                  "created": item.created if item.created is not None else int(time.time())}
    data["images"] = [{k: v for k, v in (("ref", i.ref), ("name", i.name), ("digest", i.digest),
                                         ("platform", i.platform), ("source", i.source),
                                         ("index_digest", i.index_digest)) if v} for i in item.images]
    if item.requirements is not None:
        data["requirements"] = _Literal(item.requirements if item.requirements.endswith("\n")
                                        else item.requirements + "\n")
    if item.models:
        data["models"] = [dump_locked(model) for model in item.models]
    header = ("# bundler lock file: written by `bundler lock`, read by `bundler build --lock`.\n"
              "# `requirements` is a pip-tools lock: pip install --require-hashes reads it as it is.\n")
    return header + yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True)


def write_lock(item: Lock, path: Path) -> None:
    """Write atomically: a temp file beside ``path``, renamed over it."""
    text = dump_lock(item)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise DiskError(f"{path}: cannot write the lock: {exc.strerror}") from None


_KEYS = {"version", "tool", "profile", "target", "created", "images", "requirements", "models"}
_IMAGE_KEYS = {"ref", "name", "digest", "platform", "source", "index_digest"}


def read_lock(path: Path) -> Lock:
    doc = Doc(path, LockError)
    data = doc.load_text(read_text(path, LockError))
    top = doc.mapping(data, "", None, allowed=_KEYS, required={"version", "profile", "target", "created"})
    if top["version"] != LOCK_VERSION:
        raise doc.fail(top.lines["version"], "version", f"{top['version']!r} is not a lock version this bundler "
                                                        f"reads ({LOCK_VERSION})")
    target = doc.mapping(top["target"], "target", top.lines["target"], allowed={"platform", "python", "glibc"},
                         required={"platform"})
    line = target.lines["platform"]
    if isinstance(target["platform"], list):
        platforms = [text for text, _ in doc.string_list(target["platform"], "target.platform", line)]
    else:
        platforms = [doc.string(target["platform"], "target.platform", line)]
    for platform in platforms:
        try:
            Platform.parse(platform)
        except LockError:
            raise
        except Exception as exc:  # noqa: BLE001 - an InputError with the platform's problem
            raise doc.fail(line, "target.platform", str(exc)) from None
    if not platforms:
        raise doc.fail(line, "target.platform", "empty list")
    python = doc.string(target["python"], "target.python", target.lines["python"]) if "python" in target else None
    glibc = GLIBC_BEFORE_KEY if any(p.startswith("linux/") for p in platforms) else None   # made before the key
    if "glibc" in target:
        glibc = doc.string(target["glibc"], "target.glibc", target.lines["glibc"])
        if glibc not in GLIBC_LEVELS:
            raise doc.fail(target.lines["glibc"], "target.glibc", f"{glibc!r} is not a manylinux level "
                                                                   f"({', '.join(GLIBC_LEVELS)})")
    created = top["created"]
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise doc.fail(top.lines["created"], "created", "expected seconds since the epoch")
    images = []
    raw_images = top.get("images") or LocatedList()
    if not isinstance(raw_images, list):
        raise doc.fail(top.lines["images"], "images", "expected a list")
    for index, (entry, line) in enumerate(zip(raw_images, getattr(raw_images, "lines", []))):
        key = f"images[{index}]"
        entry = doc.mapping(entry, key, line, allowed=_IMAGE_KEYS, required={"ref", "name", "digest", "platform"})
        values = {k: doc.string(entry[k], f"{key}.{k}", entry.lines[k]) for k in entry}
        try:
            ImageRef.parse(values["name"])
        except Exception as exc:  # noqa: BLE001
            raise doc.fail(entry.lines["name"], f"{key}.name", str(exc)) from None
        for name in ("digest", "index_digest"):
            try:
                values[name] = Digest(values[name]) if name in values else None
            except ValueError:
                raise doc.fail(entry.lines[name], f"{key}.{name}", "expected sha256:<64 hex digits>") from None
        images.append(LockedImage(ref=values["ref"], name=values["name"], digest=values["digest"],
                                  platform=values["platform"],
                                  source=values.get("source", "registry"), index_digest=values.get("index_digest")))
    requirements = None
    if "requirements" in top:
        requirements = doc.string(top["requirements"], "requirements", top.lines["requirements"])
        first = top.lines["requirements"]
        try:
            parse_lock(requirements, str(path))
        except LockError as exc:
            # point at the line in this file: the block starts on the line after its key
            message = str(exc)
            prefix = f"{path}:"
            if message.startswith(prefix):
                number, _, rest = message[len(prefix):].partition(":")
                message = f"{path}:{first + int(number)}:{rest}"
            raise LockError(message) from None
    models = top.get("models") or LocatedList()
    if not isinstance(models, list):
        raise doc.fail(top.lines["models"], "models", "expected a list")
    locked = tuple(read_locked(doc, entry, f"models[{index}]", line=line)
                   for index, (entry, line) in enumerate(zip(models, getattr(models, "lines", []))))
    return Lock(top["profile"], platforms[0], python, created, tuple(images), requirements,
                str(top.get("tool", "")).removeprefix("bundler "), locked, tuple(platforms), glibc)


def check_lock_fits(item: Lock, profile: Profile, path: Path) -> Lock:
    """A lock is for one profile and target; using it with another is bad input. Returns the lock for the
    profile's glibc: pins resolved for an older glibc hold on a newer one (manylinux wheels run on every
    later glibc), and the wheels are then chosen for the newer one."""
    if item.profile != profile.name:
        raise LockError(f"{path}: the lock is for profile {item.profile!r}, not {profile.name!r}")
    targets = tuple(str(p) for p in profile.target.platforms)
    if item.platforms != targets or (profile.python and item.python != profile.target.python):
        raise LockError(f"{path}: the lock is for {', '.join(item.platforms)} Python {item.python}, the profile "
                        f"targets {', '.join(targets)} Python {profile.target.python}")
    glibc = profile.target.glibc
    if glibc and item.glibc and glibc_version(item.glibc) > glibc_version(glibc):
        raise LockError(f"{path}: the lock was resolved for glibc {item.glibc}, the profile targets glibc {glibc}; "
                        "run bundler lock again")
    wanted = {(str(spec.image), p) for spec in profile.images for p in (targets if spec.source == "registry"
                                                                          else targets[:1])}
    locked = {(image.name, image.platform) for image in item.images}
    if item.images and wanted != locked:
        missing = [f"{name} for {platform}" for name, platform in sorted(wanted - locked) or sorted(locked - wanted)]
        raise LockError(f"{path}: the lock's images differ from the profile's ({', '.join(missing)}); "
                        "run bundler lock again")
    check_models_fit(item.models, profile.models, path)
    return replace(item, glibc=glibc) if glibc else item
