"""The one digest this project deals in: ``sha256:<hex>``, a value checked once, when it is made.

Every digest that enters (a registry's answer, a lock, bundle.json, a hash computed here) becomes a
Digest there; the rest of the code takes it as the str it is. Both sides use it.
"""

from __future__ import annotations

import hashlib
import re

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")
_HEX = re.compile(r"[0-9a-f]{64}\Z")


class Digest(str):
    """``sha256:<64 lowercase hex digits>``, checked once when it is made; a str everywhere else."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if type(value) is cls:
            return value
        if not isinstance(value, str) or not _SHA256.match(value):
            raise ValueError(f"not a sha256 digest: {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The digest of ``data``."""
        return super().__new__(cls, "sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hex(cls, value: str) -> Digest:
        return cls("sha256:" + value)

    @property
    def hex(self) -> str:
        return self[7:]


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX.match(value))


def is_digest(value: object) -> bool:
    """``sha256:<64 lowercase hex digits>``: what Digest accepts."""
    return isinstance(value, str) and bool(_SHA256.match(value))
