"""The payload kinds on the connected side: what a bundle carries (images, wheels, models), each
behind the same few operations, one module per kind (build/images/kind.py, build/wheels/kind.py,
build/models/kind.py).

A kind ``pin``\\s what a profile names (the lock's entries: image tags to manifest digests,
requirements to hashes), ``plan``\\s its fetch (each piece, its size, whether the cache has it: for
``build --dry-run`` and the free-space check before fetching), ``fetch``\\es exactly that into the
cache and gives the bundle its members and its sections of bundle.json, and for an update keeps out
what a site holds (``delta``). It also lists what a bundle or a lock carries, for ``bundler diff``.
The bundle, the lock, plans and deltas are written once over this interface. The air-gapped side
has its own protocol for the same kinds (restore/kinds.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from bundler.build.context import BuildContext
from bundler.build.images.kind import Images
from bundler.build.lockfile import Lock
from bundler.build.models.kind import Models
from bundler.build.options import BuildOptions, Fetched, FetchPlan, Item
from bundler.build.profile import Profile
from bundler.build.wheels.kind import Wheels
from bundler.format.head import Head
from bundler.format.inventory import Site
from bundler.format.kinds import KindName


class Kind(Protocol):
    name: KindName
    parts: str                                               # what items' parts are called ("layers"), or ""

    def in_profile(self, profile: Profile) -> bool: ...
    def pinned(self, lock: Lock) -> bool: ...
    def pin(self, profile: Profile, ctx: BuildContext) -> dict: ...   # the Lock's fields for this kind
    def plan(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,   # before
             site: Site | None) -> FetchPlan: ...          # fetching; a delta's site marks what it holds
    def fetch(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,   # a delta's
              site: Site | None = None) -> Fetched: ...     # site: what a piece may be carried against
    def delta(self, fetched: Fetched, site: Site, ctx: BuildContext) -> Fetched: ...   # less what the site holds
    def in_head(self, head: Head) -> bool: ...
    def items(self, head: Head) -> list[Item]: ...           # what a bundle carries, for bundler diff
    def lock_items(self, lock: Lock) -> list[Item]: ...      # what a lock pins (no sizes)


KINDS: tuple[Kind, ...] = (Images(), Wheels(), Models())


def select(names: Collection[KindName] | None = None) -> list[Kind]:
    """The kinds named (all when None), in KINDS' order."""
    return [kind for kind in KINDS if names is None or kind.name in names]
