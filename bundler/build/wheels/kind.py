"""Python wheels on the connected side: requirements resolved by uv for the target and locked with
hashes, each wheel fetched through the PyPI mirrors into the cache, carried with the pip-tools lock
(restore/wheels.py installs them into an offline venv, or writes a PEP 503 index)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from packaging.utils import canonicalize_name

from bundler.build.context import BuildContext
from bundler.build.delta import drop_members
from bundler.build.lockfile import Lock
from bundler.build.options import BuildOptions, Fetched, FetchPlan, FetchStats, Item, Planned
from bundler.build.pack import Member
from bundler.build.profile import Profile
from bundler.build.wheels.fetch import Wheel, WheelFetcher, fetch_wheels, plan_wheels, sources_for
from bundler.build.wheels.requirements import Pin, WheelTarget, add_hashes, merge_locks, parse_lock
from bundler.build.wheels.resolve import build_wheel, default_index_url, resolve
from bundler.digest import Digest
from bundler.errors import LockError
from bundler.format.head import DEFAULT_GLIBC, Head, WheelEntry
from bundler.format.inventory import Site
from bundler.format.paths import REQUIREMENTS, WHEELS_DIR, wheel_path
from bundler.progress import waiting
from bundler.yamlfile import read_text


class Wheels:
    name = "wheels"
    parts = ""

    def in_profile(self, profile: Profile) -> bool:
        return profile.python is not None

    def pinned(self, lock: Lock) -> bool:
        return lock.requirements is not None

    def pin(self, profile: Profile, ctx: BuildContext) -> dict:
        spec = profile.python
        if spec.lock is not None:
            text = read_text(spec.lock, LockError)
            parse_lock(text, str(spec.lock))  # a user's own pip-compile file, checked
            return {"requirements": text}
        locks = {}
        glibc = profile.target.glibc or DEFAULT_GLIBC
        for platform in profile.target.platforms:   # uv resolves for one platform at a time
            target = WheelTarget(platform, profile.target.python, glibc)
            with waiting(ctx.progress, f"resolving the requirements for {platform} with uv"):
                locks[target] = resolve(spec, target, ctx.mirrors.for_pypi(), fallback=ctx.fallback, cache=ctx.cache,
                                        cancel=ctx.cancel)
        return {"requirements": merge_locks(locks)}

    def _fetchers(self, profile: Profile, lock: Lock, ctx: BuildContext) -> list[WheelFetcher]:
        """A fetcher for each platform's target; they share the run's index pages."""
        spec = profile.python
        pypi = ctx.mirrors.for_pypi()
        sources = sources_for(pypi, default_index_url, spec.extra_index_urls if spec else (),
                              spec.find_links if spec else ())
        index = pypi[0] if pypi else None

        def builder(sdist: Path, filename: str, pin: Pin, wheel_target: WheelTarget) -> Path:
            return build_wheel(sdist, filename, pin, target=wheel_target, index=index, cache=ctx.cache,
                               cancel=ctx.cancel)

        return [WheelFetcher(target, sources, ctx.fallback, cache=ctx.cache, builder=builder, stop=ctx.cancel,
                             pages=ctx.pages)
                for target in lock.targets]

    def plan(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,  # noqa: ARG002 - the Kind interface
             site: Site | None = None) -> FetchPlan:
        pieces: dict[str, Planned] = {}    # a file that serves several platforms, once
        for fetcher in self._fetchers(profile, lock, ctx):
            for piece in plan_wheels(lock.pins(), fetcher, ctx.jobs):
                held = site is not None and bool(piece.digest) and site.has_wheel(piece.digest)
                pieces.setdefault(piece.name, replace(piece, held=held))
        return FetchPlan(self.name, list(pieces.values()))

    def fetch(self, profile: Profile, lock: Lock, ctx: BuildContext, *, options: BuildOptions,  # noqa: ARG002 - the Kind interface
              site: Site | None = None) -> Fetched:  # noqa: ARG002 - the Kind interface
        stats = FetchStats()
        found: dict[str, tuple[Wheel, list[str]]] = {}    # sha256 -> the wheel, and the platforms it serves
        for fetcher in self._fetchers(profile, lock, ctx):   # one wheel file serves every platform it fits
            for wheel in fetch_wheels(lock.pins(), fetcher, ctx.jobs, progress=ctx.progress, stats=stats):
                found.setdefault(wheel.sha256, (wheel, []))[1].append(str(fetcher.target.platform))
        wheels = [wheel for wheel, _ in found.values()]
        built = {w.name: [w.sha256] for w in wheels if w.built}
        requirements = add_hashes(lock.requirements, built).encode()
        members = [Member(wheel_path(w.filename), w.size, w.sha256,
                          file=ctx.cache.used(ctx.cache.path(Digest.from_hex(w.sha256))),
                          verified=Digest.from_hex(w.sha256) in ctx.cache.fresh) for w in wheels]
        members.append(Member(REQUIREMENTS, len(requirements), Digest.of(requirements).hex, data=requirements))
        several = len(lock.platforms) > 1
        entries = tuple(WheelEntry(name=w.name, version=w.version, filename=w.filename, sha256=w.sha256, size=w.size,
                                   built=w.built, platforms=tuple(platforms) if several else ())
                        for w, platforms in found.values())
        notes = [f"{name}: built a wheel from its sdist (pure Python)" for name in built]
        return Fetched(members=members, wheels=entries, stats=stats, notes=notes)

    def delta(self, fetched: Fetched, site: Site, ctx: BuildContext) -> Fetched:  # noqa: ARG002 - the Kind interface
        reduced, held = drop_members(fetched, {m.path: m.sha256 for m in fetched.members
                                               if m.path.startswith(f"{WHEELS_DIR}/") and site.has_wheel(m.sha256)})
        return replace(reduced, needs=replace(reduced.needs, wheels=held))

    def in_head(self, head: Head) -> bool:
        return bool(head.wheels)

    def items(self, head: Head) -> list[Item]:
        """Each wheel with the platforms it serves: a project has a file per platform (native code) or
        one for all (pure Python), and each platform's file may change on its own."""
        return [Item(key=canonicalize_name(w.name), version=w.version, size=w.size, detail=w.filename,
                     platforms=w.platforms or head.target.platforms, sha256=w.sha256) for w in head.wheels]

    def lock_items(self, lock: Lock) -> list[Item]:
        """Each pin with the platforms it applies to. Its hashes are those of every file of the version,
        not the one a platform takes: a lock says versions, not files."""
        targets = lock.targets
        if not targets:
            return [Item(key=pin.name, version=pin.version) for pin in lock.pins()]
        pinned = [(pin, tuple(str(t.platform) for t in targets if pin.applies_to(t))) for pin in lock.pins()]
        return [Item(key=pin.name, version=pin.version, platforms=platforms) for pin, platforms in pinned if platforms]
