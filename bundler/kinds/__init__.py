"""Payload kinds: what a bundle carries (images, wheels), each behind the same few operations.

On the connected side a kind ``pin``\\s what a profile names (the lock's entries: image tags to
manifest digests, requirements to hashes), ``fetch``\\es exactly that into the cache, and gives the
bundle its members and its section of bundle.json. On the air-gapped side it gives a ``restorer``
that takes its members as the bundle streams and makes them real in their destination. The bundle,
the lock and restore are written once over this interface: adding a kind is one module in this
package and one entry in KINDS (its name is also its key in bundle.json and in ``--KIND-only``).

Restore imports this package, so a kind imports its connected-side modules (registry pulls, uv,
the resolver) inside the methods that use them: the air-gapped side never loads them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Protocol, Tuple

if TYPE_CHECKING:
    from bundler.archive import MemberReader
    from bundler.context import Context
    from bundler.format import Head
    from bundler.lockfile import Lock
    from bundler.pack import Member
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions, RestoreReport


@dataclass
class Fetched:
    """What a kind's fetch gives the bundle."""

    members: List[Member]
    entries: Tuple[object, ...]          # its section of bundle.json (format.ImageEntry, format.WheelEntry)
    stats: object = None                 # what the fetch did, for the build's report
    created: Optional[int] = None        # the newest date the content itself carries (an image's config)
    notes: List[str] = field(default_factory=list)


class Restorer(Protocol):
    """One kind's destination during a restore; the verb calls these in this order."""

    def plan(self, report: RestoreReport) -> None: ...      # look at the destination: what it has already
    def done(self) -> bool: ...                             # nothing of this kind left to restore
    def start(self) -> None: ...                            # work that needs nothing from the bundle
    def wants(self, path: str) -> bool: ...                 # this member is this kind's
    def member(self, path: str, member: MemberReader) -> None: ...   # as it streams, checked as it is read
    def commit(self, report: RestoreReport) -> None: ...    # every member matched: make it real
    def abort(self) -> None: ...                            # a failure: leave nothing half made
    def finish(self, report: RestoreReport) -> None: ...    # after every commit (or when nothing was to do)


class Kind(Protocol):
    name: str

    def in_profile(self, profile: Profile) -> bool: ...
    def pinned(self, lock: Lock) -> bool: ...
    def pin(self, profile: Profile, ctx: Context) -> dict: ...   # the Lock's fields for this kind
    def fetch(self, profile: Profile, lock: Lock, ctx: Context, level: int) -> Fetched: ...
    def in_head(self, head: Head) -> bool: ...
    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> Restorer: ...


def _kinds() -> Tuple[Kind, ...]:
    from bundler.kinds.images import Images
    from bundler.kinds.wheels import Wheels
    return (Images(), Wheels())


KINDS: Tuple[Kind, ...] = _kinds()
NAMES = tuple(kind.name for kind in KINDS)


def select(names: Optional[Collection[str]] = None) -> List[Kind]:
    """The kinds named (all when None), in KINDS' order."""
    return [kind for kind in KINDS if names is None or kind.name in names]
