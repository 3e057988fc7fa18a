"""Python wheels: requirements resolved by uv for the target and locked with hashes, each wheel
fetched through the PyPI mirrors into the cache, carried with the pip-tools lock, installed into
an offline venv (or served as a PEP 503 index)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bundler.kinds import Fetched, FetchPlan, FetchStats, Item, Planned

if TYPE_CHECKING:
    from bundler.bundle import BuildOptions
    from bundler.context import Context
    from bundler.format import Head
    from bundler.inventory import Inventory, InventoryOptions, Site
    from bundler.lockfile import Lock
    from bundler.profile import Profile
    from bundler.restore import RestoreOptions
    from bundler.venv import WheelsRestorer
    from bundler.wheels import WheelFetcher


class Wheels:
    name = "wheels"
    parts = ""

    def in_profile(self, profile: Profile) -> bool:
        return profile.python is not None

    def pinned(self, lock: Lock) -> bool:
        return lock.requirements is not None

    def pin(self, profile: Profile, ctx: Context) -> dict:
        from bundler.errors import LockError
        from bundler.machine import DEFAULT_GLIBC
        from bundler.progress import waiting
        from bundler.requirements import WheelTarget, merge_locks, parse_lock
        from bundler.resolve import resolve
        from bundler.yamlfile import read_text
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
                locks[target] = resolve(spec, target, ctx.mirrors.for_pypi(), ctx.fallback, ctx.cache, ctx.cancel)
        return {"requirements": merge_locks(locks)}

    def _fetchers(self, profile: Profile, lock: Lock, ctx: Context) -> list[WheelFetcher]:
        """A fetcher for each platform's target; they share the run's index pages."""
        from bundler.resolve import build_wheel, default_index_url
        from bundler.wheels import WheelFetcher, sources_for
        spec = profile.python
        pypi = ctx.mirrors.for_pypi()
        sources = sources_for(pypi, default_index_url, spec.extra_index_urls if spec else (),
                              spec.find_links if spec else ())
        index = pypi[0] if pypi else None

        def builder(sdist: Path, filename: str, pin, wheel_target) -> Path:  # noqa: ANN001
            return build_wheel(sdist, filename, pin, wheel_target, index, ctx.cache, ctx.cancel)

        return [WheelFetcher(target, sources, ctx.fallback, ctx.cache, builder, ctx.cancel, ctx.pages)
                for target in lock.targets]

    def plan(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions,  # noqa: ARG002 - the Kind interface
             site: Site | None = None) -> FetchPlan:
        from dataclasses import replace

        from bundler.wheels import plan_wheels
        pieces: dict[str, Planned] = {}    # a file that serves several platforms, once
        for fetcher in self._fetchers(profile, lock, ctx):
            for piece in plan_wheels(lock.pins(), fetcher, ctx.jobs):
                held = site is not None and bool(piece.digest) and site.has_wheel(piece.digest)
                pieces.setdefault(piece.name, replace(piece, held=held))
        return FetchPlan(self.name, list(pieces.values()))

    def fetch(self, profile: Profile, lock: Lock, ctx: Context, options: BuildOptions) -> Fetched:  # noqa: ARG002 - the Kind interface
        from bundler.format import REQUIREMENTS, Digest, WheelEntry, wheel_path
        from bundler.pack import Member
        from bundler.requirements import add_hashes
        from bundler.wheels import Wheel, fetch_wheels
        stats = FetchStats()
        found: dict[str, tuple[Wheel, list[str]]] = {}    # sha256 -> the wheel, and the platforms it serves
        for fetcher in self._fetchers(profile, lock, ctx):   # one wheel file serves every platform it fits
            for wheel in fetch_wheels(lock.pins(), fetcher, ctx.jobs, ctx.progress, stats):
                found.setdefault(wheel.sha256, (wheel, []))[1].append(str(fetcher.target.platform))
        wheels = [wheel for wheel, _ in found.values()]
        built = {w.name: [w.sha256] for w in wheels if w.built}
        requirements = add_hashes(lock.requirements, built).encode()
        members = [Member(wheel_path(w.filename), w.size, w.sha256,
                          file=ctx.cache.used(ctx.cache.path(Digest.from_hex(w.sha256))),
                          verified=Digest.from_hex(w.sha256) in ctx.cache.fresh) for w in wheels]
        members.append(Member(REQUIREMENTS, len(requirements), Digest.of(requirements).hex, data=requirements))
        several = len(lock.platforms) > 1
        entries = tuple(WheelEntry(w.name, w.version, w.filename, w.sha256, w.size, w.built,
                                   tuple(platforms) if several else ()) for w, platforms in found.values())
        notes = [f"{name}: built a wheel from its sdist (pure Python)" for name in built]
        return Fetched(members, {"wheels": entries}, stats, notes=notes)

    def in_head(self, head: Head) -> bool:
        return bool(head.wheels)

    def items(self, head: Head) -> list[Item]:
        from packaging.utils import canonicalize_name
        return [Item(canonicalize_name(w.name), w.version, w.size, w.filename) for w in head.wheels]

    def lock_items(self, lock: Lock) -> list[Item]:
        targets = lock.targets
        return [Item(pin.name, pin.version) for pin in lock.pins()
                if not targets or any(pin.applies_to(target) for target in targets)]

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> WheelsRestorer:
        from bundler.venv import WheelsRestorer
        return WheelsRestorer(head, options, ctx)

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:  # noqa: ARG002 - the Kind interface
        """The wheels of earlier restores: DEST/wheels, and the files of an --index-dir."""
        from bundler import __version__
        from bundler.files import sha256_file
        from bundler.format import WHEELS_DIR
        from bundler.inventory import Inventory, SiteWheel, restored_folders
        folders = restored_folders(options.dests, WHEELS_DIR) + [d / "files" for d in options.index_dirs
                                                                 if (d / "files").is_dir()]
        wheels = {SiteWheel(path.name, sha256_file(path)): None for folder in folders
                  for path in sorted(folder.glob("*.whl")) if path.is_file()}
        return Inventory(f"bundler {__version__}", tuple(f"wheels {f}" for f in folders), wheels=tuple(wheels))

    def delta(self, fetched: Fetched, site: Site, ctx: Context) -> Fetched:  # noqa: ARG002 - the Kind interface
        from bundler.delta import drop_members
        from bundler.format import WHEELS_DIR
        held = {m.path: m.sha256 for m in fetched.members
                if m.path.startswith(f"{WHEELS_DIR}/") and site.has_wheel(m.sha256)}
        return drop_members(fetched, held, "wheels")
