"""A site inventory: what an air-gapped site already holds, by digest, for ``build --since``.

``bundler inventory`` writes it on the air-gapped side (each payload kind says what its
destinations hold: kinds/); ``build --since`` reads it, or the head of an earlier bundle, on the
connected side, and carries only what the site lacks. It holds digests and names only (image
names, layer and config digests, wheel file names and sha256, model files' sha256): nothing a
security officer would not let out. One reader (``Inventory.from_json``) checks every key and names
the one at fault; one writer (``Inventory.to_json``).

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bundler import __version__
from bundler.digest import Digest, is_sha256_hex
from bundler.errors import InputError
from bundler.format.delta import DeltaBase
from bundler.format.head import Head
from bundler.format.reader import JsonObject, is_digest

INVENTORY = 1                    # the inventory format this release reads and writes
MAX_INVENTORY = 64 << 20


class _InventoryObject(JsonObject):
    document, error = "inventory", InputError     # a file the user gives: bad input, exit 2


def _digests(obj: JsonObject, name: str) -> tuple[Digest, ...]:
    return tuple(map(Digest, obj.items(name, obj.of_kind(is_digest, "sha256:<64 hex digits>"))))


@dataclass(frozen=True)
class SiteLayer:
    diff_id: Digest
    blob: Digest | None              # the blob a registry or containerd holds it as; None: an engine holding it
                                     # unpacked (docker), which loads it from either form

    @classmethod
    def read(cls, obj: JsonObject) -> SiteLayer:
        return cls(obj.digest("diff_id"), obj.digest("blob", nullable=True))

    def to_json(self) -> dict:
        return {"diff_id": self.diff_id, "blob": self.blob}


@dataclass(frozen=True)
class SiteImage:
    name: str                        # as the site names it: a tag, or repository@digest
    id: Digest | None                # the config's digest (docker's image ID)
    manifest: Digest | None
    layers: tuple[SiteLayer, ...]    # in order

    @property
    def diff_ids(self) -> tuple[Digest, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    @classmethod
    def read(cls, obj: JsonObject) -> SiteImage:
        return cls(obj.string("name"), obj.digest("id", nullable=True), obj.digest("manifest", nullable=True),
                   obj.objects("layers", SiteLayer.read))

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id, "manifest": self.manifest,
                "layers": [layer.to_json() for layer in self.layers]}


@dataclass(frozen=True)
class SiteWheel:
    filename: str
    sha256: str

    @classmethod
    def read(cls, obj: JsonObject) -> SiteWheel:
        return cls(obj.string("filename"), obj.sha256_hex("sha256"))

    def to_json(self) -> dict:
        return {"filename": self.filename, "sha256": self.sha256}


@dataclass(frozen=True)
class Inventory:
    tool: str
    sources: tuple[str, ...]         # what was read: "docker unix:///var/run/docker.sock", "wheels DIR", ...
    images: tuple[SiteImage, ...] = ()
    wheels: tuple[SiteWheel, ...] = ()
    models: tuple[str, ...] = ()     # sha256 (hex) of model files

    @classmethod
    def from_json(cls, data: Any, where: str) -> Inventory:
        top = _InventoryObject(data, "", where)
        version = top.value("inventory", lambda v: isinstance(v, int) and not isinstance(v, bool), "a number")
        if version != INVENTORY:
            raise top.fail("inventory", f"version {version}: this bundler reads inventories of version {INVENTORY}")
        return cls(top.string("tool"), top.items("sources", top.of_kind(lambda v: isinstance(v, str), "a string")),
                   top.objects("images", SiteImage.read), top.objects("wheels", SiteWheel.read),
                   top.items("models", top.of_kind(is_sha256_hex, "64 lowercase hex digits")))

    def to_json(self) -> bytes:
        data = {"inventory": INVENTORY, "tool": self.tool, "sources": list(self.sources),
                "images": [i.to_json() for i in self.images], "wheels": [w.to_json() for w in self.wheels],
                "models": list(self.models)}
        return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def merge(cls, parts: Iterable[Inventory]) -> Inventory:
        parts = list(parts)
        return cls(f"bundler {__version__}", tuple(s for p in parts for s in p.sources),
                   tuple(i for p in parts for i in p.images),
                   tuple({w: None for p in parts for w in p.wheels}),
                   tuple(sorted({m for p in parts for m in p.models})))

    @classmethod
    def of_bundle(cls, head: Head, name: str) -> Inventory:
        """What a site holds once ``head``'s bundle was restored there: everything it names (a delta's
        head names everything too: what it carried, and what the site had to hold already)."""
        images = tuple(SiteImage(i.name, i.id, i.manifest,
                                 layers=tuple(SiteLayer(d, b.digest) for d, b in zip(i.layer_digests, i.blobs)))
                       for i in head.images)
        return cls(head.tool, (f"bundle {name}",), images,
                   tuple(SiteWheel(w.filename, w.sha256) for w in head.wheels),
                   tuple(sorted({f.sha256 for m in head.models for f in m.files})))


@dataclass
class Site:
    """What every base of a delta says the site holds, with the base named for the delta's head."""

    inventory: Inventory
    bases: tuple[DeltaBase, ...]
    _layers: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._layers = {(layer.diff_id, layer.blob) for image in self.inventory.images for layer in image.layers}
        self._wheels = {w.sha256 for w in self.inventory.wheels}
        self._models = set(self.inventory.models)

    def has_layer(self, diff_id: str, blob: str) -> bool:
        """The site holds the layer as ``blob`` (the digest the bundle's layout would carry it as), or
        unpacked in an engine that loads it from either form."""
        return (diff_id, blob) in self._layers or (diff_id, None) in self._layers

    def has_wheel(self, sha256: str) -> bool:
        return sha256 in self._wheels

    def has_model_file(self, sha256: str) -> bool:
        return sha256 in self._models


# ---- taking an inventory ------------------------------------------------------------------------


