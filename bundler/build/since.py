"""``build --since BASE``: what a site holds, from an earlier bundle's head or from an inventory
``bundler inventory`` wrote on the site (format/inventory.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from bundler.errors import InputError, IntegrityError
from bundler.format.archive import read_head
from bundler.format.delta import DeltaBase
from bundler.format.head import Head
from bundler.format.inventory import MAX_INVENTORY, Inventory, Site


def read_base(path: Path) -> tuple[Inventory, DeltaBase]:
    """A ``build --since`` argument: an earlier bundle (only its head is read, whatever its size: a
    whole file or its first volume) or an inventory file."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError as exc:
        raise InputError(f"--since {path}: {exc.strerror}") from None
    if start == b"\x28\xb5\x2f\xfd":   # zstd: a bundle
        data, _ = read_head(path)
        head = Head.from_json(data, str(path))
        raw = head.to_json()
        inventory = Inventory.of_bundle(head, path.name)
        kind = "bundle"
    else:
        try:
            if path.stat().st_size > MAX_INVENTORY:
                raise InputError(f"--since {path}: larger than an inventory can be; not one")
            raw = path.read_bytes()
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"--since {path}: neither a bundle nor an inventory (bundler inventory) ({exc})") \
                from None
        except IntegrityError:
            raise
        inventory = Inventory.from_json(data, str(path))
        kind = "inventory"
    names = tuple(dict.fromkeys(i.name for i in inventory.images))
    return inventory, DeltaBase(kind, path.name, hashlib.sha256(raw).hexdigest(), images=names)


def read_site(paths: Iterable[Path]) -> Site:
    read = [read_base(path) for path in paths]
    return Site(Inventory.merge(i for i, _ in read), tuple(b for _, b in read))
