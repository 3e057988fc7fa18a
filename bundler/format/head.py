"""The bundle format: what crosses the gap, and what every later release must still read.

This module owns the format numbers and ``bundle.json`` (the head) as frozen types with one reader,
``Head.from_json``, that checks every key and type and names the key at fault, and one writer,
``Head.to_json``; its companions in this package hold the member paths (paths.py), the media types
(media.py), the images', models' and delta's entries, and the key-by-key reader (reader.py).
docs/FORMAT.md describes the same for people who write their own readers.

Versioning: a reader accepts every format up to its own; within one format a writer may add keys
that an older reader can safely ignore (readers ignore keys they do not know); anything a reader
must understand to restore correctly gets a new format number, and this module keeps a reader for
every older one (tests/golden/ holds a bundle of each).

This package runs on both sides: it imports nothing of build/, restore/ or cli/, and keeps to what
CPython 3.9 supports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bundler.errors import InputError
from bundler.format.delta import Delta, check_delta, read_delta
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.models import ModelEntry, check_models
from bundler.format.paths import blob_path, layout_path, unsafe_path, wheel_path
from bundler.format.reader import JsonObject, is_glibc, is_size

FORMAT = 2                       # the newest format this release reads and writes (it writes the
                                 # oldest one that can express a bundle: see Head.needed_format)
FIRST_FORMAT = 1
NO_DATE = 315532800              # 1980-01-01, zip's first day: ``created`` of a bundle whose pins carry no date

# The manylinux levels uv resolves for (its --python-platform), oldest first: a target's glibc.
GLIBC_LEVELS = ("2.17", "2.28", *(f"2.{minor}" for minor in range(31, 41)))
# The default: Ubuntu 20.04 and Debian 11 onwards, RHEL 9, and the base of every CUDA 12 image on
# Ubuntu. Older hosts (RHEL 8, Rocky 8: 2.28) say so in their profile.
DEFAULT_GLIBC = "2.31"
_PYTHON = re.compile(r"[0-9]+\.[0-9]+\Z")


def glibc_version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


# ---- the head: reading ------------------------------------------------------------------------

def _restorer(top: JsonObject) -> RestorerEntry | None:
    if top.value("restorer", lambda v: isinstance(v, dict), "an object", may_be_absent=True) is None:
        return None
    return RestorerEntry.read(top.child("restorer"))


# ---- the head: its types ----------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileInfo:
    name: str
    description: str
    check: str | None             # the command run in the venv by restore --check
    source: str                      # the profile's YAML as it was written

    @classmethod
    def read(cls, obj: JsonObject) -> ProfileInfo:
        return cls(obj.string("name"), obj.string("description"), obj.string("check", nullable=True),
                   obj.string("source"))

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "check": self.check, "source": self.source}


GLIBC_BEFORE_KEY = "2.28"        # target.glibc of a linux bundle written before the key: its wheels' level


@dataclass(frozen=True)
class Target:
    platform: str                    # os/architecture[/variant]: the first of ``platforms``
    python: str | None               # "3.10"; None for a bundle of images only
    platforms: tuple[str, ...] = ()  # format 2: every platform the bundle carries (format 1: ``platform``)
    glibc: str | None = None         # "2.31": the wheels' manylinux level (linux only; absent in older bundles)

    def __post_init__(self) -> None:
        if not self.platforms:
            object.__setattr__(self, "platforms", (self.platform,))

    @property
    def wheels_glibc(self) -> str | None:
        """The glibc the wheels need, for a linux target: as written, or what bundles before the key chose."""
        if not any(platform.startswith("linux/") for platform in self.platforms):
            return None
        return self.glibc or GLIBC_BEFORE_KEY

    @classmethod
    def read(cls, obj: JsonObject, version: int) -> Target:
        platform = obj.string("platform")
        platforms: tuple[str, ...] = ()
        if version >= 2:
            platforms = obj.items("platforms", obj.of_kind(lambda v: isinstance(v, str), "a string"))
            if not platforms or platforms[0] != platform:
                raise obj.fail(obj.path("platforms"), f"must start with target.platform ({platform})")
        glibc = obj.value("glibc", is_glibc, 'a glibc version like "2.31"', nullable=True, may_be_absent=True)
        return cls(platform, obj.string("python", nullable=True), platforms, glibc)

    def to_json(self, version: int) -> dict:
        data = {"platform": self.platform, "python": self.python}
        if version >= 2:
            data["platforms"] = list(self.platforms)
        if self.glibc is not None:
            data["glibc"] = self.glibc
        return data


@dataclass(frozen=True)
class WheelEntry:
    name: str
    version: str
    filename: str                    # under wheels/
    sha256: str                      # hex
    size: int
    built: bool                      # built by bundler from a pure-Python sdist
    platforms: tuple[str, ...] = ()  # format 2: the platforms it serves (format 1: the one target)

    @classmethod
    def read(cls, obj: JsonObject, version: int = 1) -> WheelEntry:
        filename = obj.string("filename")
        if "/" in filename or not filename.endswith(".whl"):
            raise obj.fail(obj.path("filename"), f"{filename!r} is not a wheel file name")
        platforms = ()
        if version >= 2:
            platforms = obj.items("platforms", obj.of_kind(lambda v: isinstance(v, str), "a string"))
        return cls(obj.string("name"), obj.string("version"), filename, obj.sha256_hex("sha256"), obj.size("size"),
                   obj.flag("built"), platforms)

    def to_json(self, version: int) -> dict:
        data = {"name": self.name, "version": self.version, "filename": self.filename, "sha256": self.sha256,
                "size": self.size, "built": self.built}
        if version >= 2:
            data["platforms"] = list(self.platforms)
        return data


@dataclass(frozen=True)
class MemberEntry:
    """One file of the bundle after bundle.json: a safe relative POSIX path, its size and sha256 (hex)."""

    path: str
    size: int
    sha256: str

    @classmethod
    def read(cls, obj: JsonObject) -> MemberEntry:
        path = obj.string("path")
        problem = unsafe_path(path)
        if problem:
            raise obj.fail(obj.path("path"), f"{path!r}: unsafe path ({problem})")
        return cls(path, obj.size("size"), obj.sha256_hex("sha256"))

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class RestorerEntry:
    """The one-file restorer written beside the bundle (``OUT.pyz``): what it runs on, and its sha256.

    A key readers of any format may ignore: the restorer is a file beside the bundle, not a member, and
    nothing in the bundle needs it to restore.
    """

    platform: str                    # os/architecture[/variant], as target.platform: the first it runs on
    pythons: tuple[str, ...]         # the CPython versions it runs on ("3.9", "3.10", ...)
    size: int
    sha256: str                      # hex
    # every platform it runs on, when more than one (a bundle for several: one restorer serves them all);
    # written only then, so that the head of a one-platform bundle reads as before
    platforms: tuple[str, ...] = ()

    @classmethod
    def read(cls, obj: JsonObject) -> RestorerEntry:
        pythons = obj.items("pythons", obj.of_kind(lambda v: isinstance(v, str) and bool(_PYTHON.match(v)),
                                                   'a version such as "3.10"'))
        several = obj.items("platforms", obj.of_kind(lambda v: isinstance(v, str), "a platform such as linux/arm64"),
                            may_be_absent=True) or ()
        return cls(obj.string("platform"), pythons, obj.size("size"), obj.sha256_hex("sha256"), several)

    @property
    def runs_on(self) -> tuple[str, ...]:
        return self.platforms or (self.platform,)

    def to_json(self) -> dict:
        found = {"platform": self.platform, "pythons": list(self.pythons), "size": self.size, "sha256": self.sha256}
        if self.platforms:
            found["platforms"] = list(self.platforms)
        return found






@dataclass(frozen=True)
class Head:
    """bundle.json: everything ``inspect`` shows and everything restore checks each member against."""

    format: int
    tool: str                        # "bundler X.Y.Z"
    created: int                     # seconds since the epoch; also every member's mtime
    profile: ProfileInfo
    target: Target
    lock: str                        # the lock file's text (see lockfile.py)
    split: int | None             # the volume size, when the bundle was cut into volumes
    images: tuple[ImageEntry, ...]
    wheels: tuple[WheelEntry, ...]
    members: tuple[MemberEntry, ...]
    # format 2
    indexes: tuple[IndexEntry, ...] = ()
    models: tuple[ModelEntry, ...] = ()   # (format_models.py)
    delta: Delta | None = None            # a delta bundle: what the site must hold (format_delta.py)
    # any format: a file beside the bundle, which readers that do not check it may ignore
    restorer: RestorerEntry | None = None   # absent with --no-restorer, and in bundles older than restorers

    def needed_format(self) -> int:
        """The oldest format that can say what this head says."""
        several = len(self.target.platforms) > 1 or self.indexes
        newer = several or self.models or self.delta is not None
        return 2 if newer or any(i.exact for i in self.images) else FIRST_FORMAT

    @property
    def platforms(self) -> tuple[str, ...]:
        return self.target.platforms

    def wheel_platforms(self, wheel: WheelEntry) -> tuple[str, ...]:
        return wheel.platforms or (self.target.platform,)

    def images_for(self, platform: str) -> tuple[ImageEntry, ...]:
        return tuple(i for i in self.images if i.platform == platform)

    def wheels_for(self, platform: str) -> tuple[WheelEntry, ...]:
        return tuple(w for w in self.wheels if platform in self.wheel_platforms(w))

    # -- what the entries add up to (written as "totals" for readers of their own) --
    @property
    def image_bytes(self) -> int:
        """Every distinct layer once, uncompressed."""
        return sum(self._unique_layers().values())

    @property
    def unique_layers(self) -> int:
        return len(self._unique_layers())

    def _unique_layers(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for image in self.images:
            known = image.layer_sizes or [None] * image.layer_count
            for digest, size in zip(image.layer_digests, known):
                if size is None:   # a bundle that does not list layer sizes: take them from the members
                    size = self.member_sizes().get(layout_path(blob_path(digest)), 0)
                sizes[digest] = size
        return sizes

    @property
    def wheel_bytes(self) -> int:
        return sum(w.size for w in self.wheels)

    @property
    def model_bytes(self) -> int:
        """Every distinct model file once."""
        return sum({f.sha256: f.size for model in self.models for f in model.files}.values())

    @property
    def member_bytes(self) -> int:
        return sum(m.size for m in self.members)

    def member_sizes(self) -> dict[str, int]:
        return {m.path: m.size for m in self.members}

    def member(self, path: str) -> MemberEntry | None:
        return next((m for m in self.members if m.path == path), None)

    # -- reading and writing --
    @classmethod
    def from_json(cls, data: Any, where: str) -> Head:
        """Read a decoded bundle.json, checking every key; ``where`` (the bundle's path) starts every error.

        A head of a newer format than this release reads is bad input (exit 2: upgrade bundler); a head
        with a missing or ill-typed key is an integrity failure (exit 3) naming the key.
        """
        top = JsonObject(data, "", where)
        version = top.value("format", is_size, "a format number")
        if version > FORMAT:
            raise InputError(f"{where}: bundle format {version} is newer than this bundler reads ({FORMAT}); "
                             "upgrade bundler, or restore with the restorer that came with the bundle")
        if version < FIRST_FORMAT:
            raise top.fail("format", f"{version} is not a bundle format")
        later = {}
        if version >= 2:   # a format-1 head has none of these: keys of those names in one mean nothing
            later = {"indexes": top.objects("indexes", IndexEntry.read),
                     "models": top.objects("models", ModelEntry.read), "delta": read_delta(top)}
        head = cls(version, top.string("tool"), top.size("created"), ProfileInfo.read(top.child("profile")),
                   Target.read(top.child("target"), version), top.string("lock"), top.size("split", nullable=True),
                   top.objects("images", lambda o: ImageEntry.read(o, version)),
                   top.objects("wheels", lambda o: WheelEntry.read(o, version)),
                   top.objects("members", MemberEntry.read), restorer=_restorer(top), **later)
        head._check(top)
        return head

    def _check(self, top: JsonObject) -> None:
        """What the entries say must agree with each other and with the totals written beside them."""
        seen = set()
        for index, member in enumerate(self.members):
            if member.path in seen:
                raise top.fail(f"members[{index}].path", f"{member.path!r} is listed twice")
            seen.add(member.path)
        if self.delta is not None:   # some of what the entries name is the site's
            check_delta(self, top)
        for index, wheel in enumerate(() if self.delta else self.wheels):
            entry = self.member(wheel_path(wheel.filename))
            if entry is None or entry.sha256 != wheel.sha256:
                raise top.fail(f"wheels[{index}]", f"{wheel.filename} is not a member with that sha256")
        for index, wheel in enumerate(self.wheels):
            unknown = set(self.wheel_platforms(wheel)) - set(self.platforms)
            if unknown:
                raise top.fail(f"wheels[{index}].platforms", f"{sorted(unknown)[0]} is not a target platform")
        for index, image in enumerate(self.images):
            for digest in () if self.delta else (image.id, image.manifest, *(b.digest for b in image.blobs)):
                if layout_path(blob_path(digest)) not in seen:
                    raise top.fail(f"images[{index}]", f"blob {digest} is not a member")
            if image.platform not in self.platforms:
                raise top.fail(f"images[{index}].platform", f"{image.platform} is not a target platform")
        for index, entry in enumerate(self.indexes):
            carried = [entry.digest, *(a.digest for a in entry.attachments),
                       *(b.digest for a in entry.attachments for b in a.blobs)]
            for digest in carried:
                if layout_path(blob_path(digest)) not in seen:
                    raise top.fail(f"indexes[{index}]", f"blob {digest} is not a member")
        if self.models:
            check_models(self.models, {m.path: m for m in self.members}, top,
                         site=set(self.delta.models) if self.delta else set())
        if self.split is not None and self.split < 1:
            raise top.fail("split", f"{self.split} is not a volume size")
        totals = top.child("totals")
        for key, value in self._totals().items():
            found = totals.size(key)
            if found != value:
                raise totals.fail(totals.path(key), f"{found}, but the entries add up to {value}")

    def _totals(self) -> dict[str, int]:
        totals = {"images": self.image_bytes, "wheels": self.wheel_bytes, "members": self.member_bytes,
                  "layers_unique": self.unique_layers}
        if self.format >= 2:
            totals["models"] = self.model_bytes
        return totals

    def to_json(self) -> bytes:
        """bundle.json's bytes: sorted keys, so the same head always gives the same bytes."""
        version = self.format
        if version < self.needed_format():
            raise ValueError(f"format {version} cannot say what this head holds (it needs {self.needed_format()})")
        data = {
            "format": version, "tool": self.tool, "created": self.created, "profile": self.profile.to_json(),
            "target": self.target.to_json(version), "lock": self.lock, "split": self.split,
            "images": [i.to_json(version) for i in self.images], "wheels": [w.to_json(version) for w in self.wheels],
            "members": [m.to_json() for m in self.members], "totals": self._totals(),
        }
        if version >= 2:
            data.update(indexes=[i.to_json() for i in self.indexes], models=[m.to_json() for m in self.models])
            if self.delta is not None:
                data["delta"] = self.delta.to_json()
        if self.restorer is not None:
            data["restorer"] = self.restorer.to_json()
        return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()

    def summary(self) -> dict:
        """The head as ``inspect --json`` prints it: members counted, not listed."""
        data = json.loads(self.to_json())
        data["members"] = len(self.members)
        return data
