"""Bundle members, and the streaming tar + zstd writer and reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Member:
    """One file of a bundle: where it goes, what it must hash to, and where its bytes are now."""

    path: str                      # POSIX, relative: images/blobs/sha256/<hex>, wheels/x.whl
    size: int
    sha256: str                    # hex
    file: Path | None = None       # bytes on disk (the cache), or
    data: bytes | None = None      # small generated content (manifests, the lock)
