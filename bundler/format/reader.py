"""Reading bundle.json key by key: one JSON object at a time, each value checked for its type, and
every complaint an IntegrityError naming the key's full path (``images[0].layer_digests[2]``).

head.py and its companions (images.py, models.py, delta.py, inventory.py) build their types with
it; nothing else reads the head's JSON.
"""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from bundler.digest import Digest, is_digest, is_sha256_hex
from bundler.errors import IntegrityError
from bundler.format.paths import HEAD

T = TypeVar("T")
_GLIBC = re.compile(r"[0-9]+\.[0-9]+\Z")


class JsonObject:
    """One JSON object of the head, read key by key; every complaint names the key's full path."""

    document, error = HEAD, IntegrityError       # what is read, and what a complaint about it raises

    def __init__(self, data: Any, key: str, where: str) -> None:
        self.where, self.key = where, key
        if not isinstance(data, dict):
            raise self.fail(key, f"expected an object, found {_kind(data)}")
        self.data = data

    def fail(self, key: str, problem: str) -> Exception:
        return self.error(f"{self.where}: {self.document}: {key or 'the head'}: {problem}")

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def value(self, name: str, check: Callable[[Any], bool], expected: str, nullable: bool = False,
              may_be_absent: bool = False) -> Any:
        """The value at ``name``: it must be present (unless ``may_be_absent``), may be null only
        when ``nullable``, and must pass ``check``."""
        if name not in self.data:
            if may_be_absent:
                return None
            raise self.fail(self.path(name), "missing")
        found = self.data[name]
        if found is None and nullable:
            return None
        if not check(found):
            raise self.fail(self.path(name), f"expected {expected}{' or null' if nullable else ''}, "
                                             f"found {_kind(found)}")
        return found

    def string(self, name: str, nullable: bool = False) -> Any:
        return self.value(name, lambda v: isinstance(v, str), "a string", nullable)

    def size(self, name: str, nullable: bool = False) -> Any:
        return self.value(name, is_size, "a whole number, 0 or more", nullable)

    def flag(self, name: str) -> bool:
        return self.value(name, lambda v: isinstance(v, bool), "true or false")

    def digest(self, name: str, nullable: bool = False) -> Any:
        found = self.value(name, is_digest, "sha256:<64 hex digits>", nullable)
        return None if found is None else Digest(found)

    def sha256_hex(self, name: str) -> str:
        return self.value(name, is_sha256_hex, "64 lowercase hex digits")

    def child(self, name: str) -> JsonObject:
        return type(self)(self.value(name, lambda _v: True, ""), self.path(name), self.where)

    def items(self, name: str, item: Callable[[Any, str], T], may_be_absent: bool = False) -> Any:
        """A list, each entry read by ``item(entry, its key)``; None when absent and ``may_be_absent``."""
        found = self.value(name, lambda v: isinstance(v, list), "a list", may_be_absent=may_be_absent)
        if found is None:
            return None
        return tuple(item(entry, f"{self.path(name)}[{index}]") for index, entry in enumerate(found))

    def objects(self, name: str, read: Callable[[JsonObject], T]) -> tuple[T, ...]:
        return self.items(name, lambda entry, key: read(type(self)(entry, key, self.where)))

    def of_kind(self, check: Callable[[Any], bool], expected: str) -> Callable[[Any, str], Any]:
        """A list item reader for ``items``: the entry itself, once ``check`` accepts it."""
        def read(entry: Any, key: str) -> Any:
            if not check(entry):
                raise self.fail(key, f"expected {expected}, found {_kind(entry)}")
            return entry
        return read

    def string_map(self, name: str) -> dict[str, str]:
        found = self.value(name, lambda v: isinstance(v, dict), "an object")
        for key, entry in found.items():
            if not isinstance(entry, str):
                raise self.fail(f"{self.path(name)}.{key}", f"expected a string, found {_kind(entry)}")
        return dict(found)


def is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_glibc(value: Any) -> bool:
    return isinstance(value, str) and bool(_GLIBC.match(value))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
