"""The payload kinds on the air-gapped side: for each kind a bundle carries (images, wheels, models),
one small module (restore/images/kind.py, restore/wheels.py, restore/models.py) that gives the
restorer putting its members into their destination, and says what its destinations already hold
(``bundler inventory``, for the next update). The restore verb and the inventory are written once
over this interface; the connected side has its own for the same kinds (build/kinds.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from bundler.context import Context
from bundler.format.head import Head
from bundler.format.inventory import Inventory
from bundler.format.kinds import KindName
from bundler.restore.images.kind import Images
from bundler.restore.models import Models
from bundler.restore.options import InventoryOptions, RestoreOptions, Restorer
from bundler.restore.wheels import Wheels


class Kind(Protocol):
    name: KindName

    def in_head(self, head: Head) -> bool: ...
    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> Restorer: ...
    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory: ...   # what a site holds


KINDS: tuple[Kind, ...] = (Images(), Wheels(), Models())


def select(names: Collection[KindName] | None = None) -> list[Kind]:
    """The kinds named (all when None), in KINDS' order."""
    return [kind for kind in KINDS if names is None or kind.name in names]
