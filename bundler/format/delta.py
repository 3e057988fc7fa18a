"""The ``delta`` section of bundle.json (format 2): a bundle that carries only what its bases lack.

A delta's head lists every image, wheel and model file of the profile, exactly as a full bundle's
does; what it does not carry as a member is listed here, by digest, as what the site must already
hold (``layers``, ``wheels``, ``models``), or as a layer rebuilt at restore from a patch member
and a layer the site holds (``patches``). ``bases`` says what the delta was made against.

A reader that ignored this section would find members missing and restore wrongly: a delta is
format 2 (format.Head.needed_format). Like format.py, this runs on the air-gapped side: nothing of
the connected side, CPython 3.9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bundler.digest import Digest, is_sha256_hex
from bundler.format.paths import LAYOUT_DIR
from bundler.format.reader import JsonObject, is_digest

BASE_KINDS = ("bundle", "inventory")
FASTCDC = "fastcdc"              # patch.py: chunks of the base layer by offset, and literal bytes
PATCH_METHODS = (FASTCDC,)


def patch_path(layer: str) -> str:
    """The member that rebuilds ``layer`` (a diff_id) from a layer the site holds."""
    return f"{LAYOUT_DIR}/patches/{Digest(layer).hex}"


@dataclass(frozen=True)
class DeltaBase:
    """One ``build --since`` argument: an earlier bundle (its head) or a site inventory."""

    kind: str                        # bundle | inventory
    name: str                        # its file name, as given
    sha256: str                      # of the bundle's bundle.json, or of the inventory file
    images: tuple[str, ...]          # the names of the images it says the site holds

    @classmethod
    def read(cls, obj: JsonObject) -> DeltaBase:
        kind = obj.string("kind")
        if kind not in BASE_KINDS:
            raise obj.fail(obj.path("kind"), f"{kind!r} is not one of {', '.join(BASE_KINDS)}")
        return cls(kind, obj.string("name"), obj.sha256_hex("sha256"),
                   obj.items("images", obj.of_kind(lambda v: isinstance(v, str), "a string")))

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "sha256": self.sha256, "images": list(self.images)}


@dataclass(frozen=True)
class Patch:
    """A rebuilt layer carried as its changes against a layer the site holds (see patch.py)."""

    layer: Digest                    # the diff_id it rebuilds: checked before anything uses it
    size: int
    base: Digest                     # the diff_id of the site's layer it reads
    base_size: int
    method: str

    @property
    def member(self) -> str:
        return patch_path(self.layer)

    @classmethod
    def read(cls, obj: JsonObject) -> Patch:
        method = obj.string("method")
        if method not in PATCH_METHODS:
            raise obj.fail(obj.path("method"), f"{method!r} is not a patch this bundler applies "
                                               f"({', '.join(PATCH_METHODS)}); upgrade bundler")
        layer, base = obj.digest("layer"), obj.digest("base")
        if layer == base:
            raise obj.fail(obj.path("base"), "a layer cannot be patched against itself")
        return cls(layer, obj.size("size"), base, obj.size("base_size"), method)

    def to_json(self) -> dict:
        return {"layer": self.layer, "size": self.size, "base": self.base, "base_size": self.base_size,
                "method": self.method}


@dataclass(frozen=True)
class Delta:
    bases: tuple[DeltaBase, ...]
    layers: tuple[Digest, ...]       # layer blobs (as the layout names them) the site must hold
    wheels: tuple[str, ...]          # sha256 (hex) of wheels the site must hold
    models: tuple[str, ...]          # sha256 (hex) of model files the site must hold
    patches: tuple[Patch, ...]

    @classmethod
    def read(cls, obj: JsonObject) -> Delta:
        bases = obj.objects("bases", DeltaBase.read)
        if not bases:
            raise obj.fail(obj.path("bases"), "a delta names at least one base")
        hexes = obj.of_kind(is_sha256_hex, "64 lowercase hex digits")
        return cls(bases, tuple(map(Digest, obj.items("layers", obj.of_kind(is_digest, "sha256:<64 hex digits>")))),
                   obj.items("wheels", hexes), obj.items("models", hexes), obj.objects("patches", Patch.read))

    def to_json(self) -> dict:
        return {"bases": [b.to_json() for b in self.bases], "layers": list(self.layers), "wheels": list(self.wheels),
                "models": list(self.models), "patches": [p.to_json() for p in self.patches]}


def read_delta(top: JsonObject) -> Delta | None:
    """The head's ``delta``: absent in a full bundle."""
    return Delta.read(top.child("delta")) if "delta" in top.data else None


def check_delta(head: Any, top: JsonObject) -> None:
    """Everything a delta's entries name is a member, rebuilt by a patch, or listed as the site's."""
    members = {m.path: m for m in head.members}
    delta: Delta = head.delta
    needed = set(delta.layers)
    patched = {p.layer: p for p in delta.patches}
    used: set[str] = set()
    for index, patch in enumerate(delta.patches):
        if patch.member not in members:
            raise top.fail(f"delta.patches[{index}]", f"its member {patch.member} is not a member")
    for index, image in enumerate(head.images):
        for digest in (image.id, image.manifest):
            if f"{LAYOUT_DIR}/blobs/sha256/{digest.hex}" not in members:
                raise top.fail(f"images[{index}]", f"blob {digest} is not a member")
        for blob in image.blobs:
            used.add(blob.digest)
            if f"{LAYOUT_DIR}/blobs/sha256/{blob.digest.hex}" in members or blob.digest in needed:
                continue
            if blob.digest not in patched or image.exact:
                raise top.fail(f"images[{index}]", f"layer {blob.digest} is neither a member, nor patched, nor "
                                                   "in delta.layers")
    for index, digest in enumerate(delta.layers):
        if digest not in used:
            raise top.fail(f"delta.layers[{index}]", f"{digest} is no layer of an image of the bundle")
    site_wheels = set(delta.wheels)
    for index, wheel in enumerate(head.wheels):
        member = members.get(f"wheels/{wheel.filename}")
        if (member is None or member.sha256 != wheel.sha256) and wheel.sha256 not in site_wheels:
            raise top.fail(f"wheels[{index}]", f"{wheel.filename} is neither a member with that sha256 nor in "
                                               "delta.wheels")
