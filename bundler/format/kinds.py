"""The payload kinds a bundle carries: a closed set. Each name is also the kind's key in bundle.json
and its ``--KIND-only`` flag; each side gives every kind one small module (build/kinds.py,
restore/kinds.py)."""

from __future__ import annotations

from typing import Literal

KindName = Literal["images", "wheels", "models"]
KIND_NAMES: tuple[KindName, ...] = ("images", "wheels", "models")
