"""Where earlier restores left their files on a site, for an inventory: ``DEST/wheels``,
``DEST/huggingface``, ``DEST/modelscope`` of each restore (restore's default DEST is ./PROFILE-NAME)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def restored_folders(dests: Iterable[Path], name: str) -> list[Path]:
    """``DEST/name`` of each earlier restore under ``dests``: DEST itself, or a folder holding several
    (restore's default DEST is ./PROFILE-NAME)."""
    found = []
    for dest in dests:
        for folder in [dest / name, *sorted(dest.glob(f"*/{name}"))]:
            if folder.is_dir() and folder not in found:
                found.append(folder)
    return found
