"""The build verb.

``build`` pins a profile (or takes its lock), has every payload kind (kinds/) fetch what the lock
pins into the cache at the same time, then streams their members into one bundle behind its head
(format.py): bundle.json first (and its signature, with ``--sign``), then the SBOM of everything
inside (sbom.py), then the images as one OCI layout under ``images/``, the wheels under
``wheels/`` and ``requirements.lock``. The same pins give a byte-identical bundle: members
are sorted, owners fixed, and every timestamp is the lock's date, SOURCE_DATE_EPOCH, or a date the
pinned content itself carries; never the clock. A bundle is written in the lowest format that holds
what it carries (format 1 unless it carries models, exact images or several platforms), so older
releases read what they can.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bundler import __version__
from bundler.context import Context
from bundler.errors import BundlerError, DiskError, InputError
from bundler.files import free_space, human_size
from bundler.format import FORMAT, NO_DATE, Head, MemberEntry, ProfileInfo, RestorerEntry, Target, restorer_beside
from bundler.format_delta import Delta
from bundler.inventory import Site, read_site
from bundler.kinds import NAMES, Fetched, FetchStats, Kind, select
from bundler.lockfile import Lock, check_lock_fits, dump_lock, lock, pin, read_lock
from bundler.pack import DEFAULT_LEVEL, SIGNATURE_SUFFIX, Member, existing_outputs, write_bundle
from bundler.parallel import run_parallel
from bundler.plan import BuildPlan, check_free_space, plan_fetch
from bundler.profile import Profile
from bundler.restorer import RestorerFile, make_restorer, pythons_for, stage_copy, unsupported

if TYPE_CHECKING:
    from bundler.sbom import SbomInput
    from bundler.sshsig import SigningKey

# Expected bundle size per byte of uncompressed layer: zstd -3 leaves 25-45% of real layers.
LAYER_RATIO_ESTIMATE = 0.5


@dataclass
class BuildOptions:
    output: Path
    lock_file: Path | None = None
    level: int = DEFAULT_LEVEL
    split: int | None = None
    kinds: tuple[str, ...] = NAMES       # what to bundle: --images-only, --wheels-only, --models-only
    force: bool = False
    restorer: bool = True                # write OUT.pyz, the one-file restorer (--no-restorer: not)
    exact_images: bool = False           # carry images as their registry serves them (a profile's exact: wins)
    since: tuple[Path, ...] = ()         # a delta: earlier bundles or site inventories (inventory.py)
    sign: SigningKey | None = None       # signs bundle.json: the signature follows it, and OUT.sig beside


@dataclass
class BuildResult:
    paths: list[Path]
    head: Head
    size: int
    fetch_seconds: float = 0.0   # locking and fetching into the cache
    pack_seconds: float = 0.0    # writing the bundle from the cache
    restorer: Path | None = None  # OUT.pyz
    stats: dict[str, FetchStats] = field(default_factory=dict)   # each kind's fetch


def _check_output(options: BuildOptions) -> None:
    if not 1 <= options.level <= 22:
        raise InputError(f"--level {options.level}: zstd levels run from 1 to 22")
    folder = options.output.parent
    if not folder.is_dir():
        raise InputError(f"{options.output}: folder {folder} does not exist")
    taken = existing_outputs(options.output)
    if taken and not options.force:
        raise InputError(f"{taken[0]}: already exists (use --force to replace it)")


def plan(profile: Profile, ctx: Context, options: BuildOptions, site: Site | None = None) -> BuildPlan:
    """What ``build`` would fetch: the pins (the lock, or a fresh resolve), and every kind's pieces with
    their sizes, what the cache has, where the rest comes from, and (a delta) what the site holds.
    Downloads no payload."""
    if site is None and options.since:
        site = read_site(options.since)
    kinds = [kind for kind in select(options.kinds) if kind.in_profile(profile)]
    if options.lock_file is not None:
        pinned = read_lock(options.lock_file)
        pinned = check_lock_fits(pinned, profile, options.lock_file)
        pinned = _complete(pinned, profile, ctx, kinds, options.lock_file)
    else:
        pinned = lock(profile, ctx, [kind.name for kind in kinds])
    return plan_fetch(profile, pinned, ctx, [kind for kind in kinds if kind.pinned(pinned)], options, site)


def build(profile: Profile, ctx: Context, options: BuildOptions) -> BuildResult:
    """Fetch everything the profile (or its lock) names, then stream it into one bundle."""
    _check_output(options)
    started = time.monotonic()
    site = read_site(options.since) if options.since else None   # a bad base fails before anything is fetched
    planned = plan(profile, ctx, options, site)
    pinned = planned.pinned
    restorer = _restorer(pinned, ctx) if options.restorer else None   # before the payloads: it fails early
    check_free_space(planned, options.output.parent, ctx.cache.root)   # before hours of downloading
    fetched = everything = _fetch(profile, pinned, ctx, planned.kinds, options)
    if site is not None:   # only what the site lacks (delta.py); the SBOM still tells what it will hold
        fetched = {name: next(k for k in planned.kinds if k.name == name).delta(part, site, ctx)
                   for name, part in fetched.items()}
    fetch_seconds = time.monotonic() - started

    if pinned.created is None:   # no lock and no SOURCE_DATE_EPOCH: a date the pins determine
        dates = [part.created for part in fetched.values() if part.created is not None]
        pinned = replace(pinned, created=max(dates, default=NO_DATE))
    members = sorted((m for part in fetched.values() for m in part.members), key=lambda m: m.path)
    from bundler.sbom import sbom_member  # after fetching: its library's import does not delay the downloads
    sbom = _sbom_input(profile, pinned, everything, sorted((m for part in everything.values() for m in part.members),
                                                           key=lambda m: m.path))
    if site is not None:   # a delta's SBOM: what the site holds after it, and how each piece gets there
        needs = {key: entries for part in fetched.values() for key, entries in part.needs.items()}
        delivery = {str(d): "on the site" for key in ("layers", "wheels", "models") for d in needs.get(key, ())}
        delivery.update({str(p.layer): "as a patch" for p in needs.get("patches", ())})
        sbom = replace(sbom, delivery=delivery)
    members.insert(0, sbom_member(sbom))
    head = make_head(profile, pinned, fetched, members, options.split, restorer.entry() if restorer else None,
                     site)
    _check_space(options.output.parent, head)
    started = time.monotonic()
    data = head.to_json()
    signature = options.sign.sign(data) if options.sign is not None else None
    beside = options.output.with_name(restorer_beside(options.output.name))
    staged = stage_copy(restorer, beside) if restorer else None
    try:
        with ctx.progress.bar("packing", head.member_bytes) as bar:
            paths = write_bundle(options.output, data, members, head.created, options.level, options.split,
                                 bar.update, signature)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    if options.force:  # volumes of an older, longer bundle would read as extra volumes of this one
        for stale in existing_outputs(options.output):
            if stale not in paths and not stale.name.endswith((".sha256", SIGNATURE_SUFFIX)):
                stale.unlink()
        if signature is None:
            options.output.with_name(options.output.name + SIGNATURE_SUFFIX).unlink(missing_ok=True)
        if options.split is None:
            options.output.with_name(options.output.name + ".sha256").unlink(missing_ok=True)
    if staged is not None:
        os.replace(staged, beside)
    return BuildResult(paths, head, sum(p.stat().st_size for p in paths), fetch_seconds, time.monotonic() - started,
                       beside if staged else None, {name: part.stats for name, part in fetched.items()})


def _restorer(pinned: Lock, ctx: Context) -> RestorerFile | None:
    """The one-file restorer for every platform the bundle targets (one file serves them all), from the
    cache or made now; a platform it cannot be made for is left out with a note, and with none left,
    there is no restorer."""
    platforms = []
    for platform in pinned.platforms:
        problem = unsupported(platform)
        if problem is not None:
            ctx.progress.note(f"no restorer for {platform} beside the bundle: {problem}")
        else:
            platforms.append(platform)
    if not platforms:
        return None
    started = time.monotonic()
    try:
        made = make_restorer(tuple(platforms), pythons_for(pinned.python), ctx)
    except BundlerError as exc:   # the same kind of error, saying what it was for
        raise type(exc)(f"making the restorer (--no-restorer builds without it): {exc}") from None
    how = f"made in {time.monotonic() - started:.1f} s" if made.made else "taken from the cache"
    ctx.progress.note(f"restorer for CPython {', '.join(made.pythons)} on {', '.join(made.platforms)}: {how}")
    return made


def _complete(pinned: Lock, profile: Profile, ctx: Context, kinds: list[Kind], lock_file: Path) -> Lock:
    """A lock made with --images-only or --wheels-only pins part of a profile: pin the rest now."""
    missing = [kind.name for kind in kinds if not kind.pinned(pinned)]
    if not missing:
        return pinned
    fields = pin(profile, ctx, [kind for kind in kinds if kind.name in missing])
    ctx.progress.note(f"{lock_file} pins no {' and '.join(missing)}; resolved them now")
    return replace(pinned, **fields)


def _fetch(profile: Profile, pinned: Lock, ctx: Context, kinds: list[Kind],
           options: BuildOptions) -> dict[str, Fetched]:
    """Every kind fetches at once (registries and indexes are different places); the first failure
    stops the others and is raised at once."""
    fetched: dict[str, Fetched] = {}

    def one(kind: Kind, _stop: object) -> None:  # the kinds watch ctx.cancel themselves
        fetched[kind.name] = kind.fetch(profile, pinned, ctx, options)

    run_parallel(kinds, one, len(kinds), ctx.cancel)
    for part in fetched.values():
        for note in part.notes:
            ctx.progress.note(note)
    return {kind.name: fetched[kind.name] for kind in kinds}


def _check_space(folder: Path, head: Head) -> None:
    needed = int(head.image_bytes * LAYER_RATIO_ESTIMATE) + head.member_bytes - head.image_bytes
    free = free_space(folder)
    if free < needed:
        raise DiskError(f"{folder}: the bundle needs about {human_size(needed)}, only {human_size(free)} is free")


def _sbom_input(profile: Profile, pinned: Lock, fetched: dict[str, Fetched], members: list[Member]) -> SbomInput:
    from bundler.sbom import SbomInput
    images = fetched.get("images")
    wheels = fetched.get("wheels")
    seed = hashlib.sha256("".join(f"{m.path}:{m.sha256}\n" for m in members).encode()).hexdigest()
    models = fetched.get("models")
    return SbomInput(profile.name, profile.description, ", ".join(pinned.platforms), pinned.python, pinned.created,
                     pinned.requirements, images.sections["images"] if images else (),
                     images.contents if images else (), wheels.sections["wheels"] if wheels else (), seed,
                     models.sections["models"] if models else ())


def make_head(profile: Profile, pinned: Lock, fetched: dict[str, Fetched], members: list[Member],
              split: int | None, restorer: RestorerEntry | None = None, site: Site | None = None) -> Head:
    sections = {key: entries for part in fetched.values() for key, entries in part.sections.items()}
    needs = {key: entries for part in fetched.values() for key, entries in part.needs.items()}
    delta = None if site is None else Delta(site.bases, needs.get("layers", ()), needs.get("wheels", ()),
                                            needs.get("models", ()), needs.get("patches", ()))
    head = Head(
        format=FORMAT, tool=f"bundler {__version__}", created=pinned.created,
        profile=ProfileInfo(profile.name, profile.description, profile.check, profile.source_text),
        target=Target(pinned.platform, pinned.python, pinned.platforms, pinned.glibc), lock=dump_lock(pinned),
        split=split,
        images=sections.get("images", ()), wheels=sections.get("wheels", ()), indexes=sections.get("indexes", ()),
        models=sections.get("models", ()), members=tuple(MemberEntry(m.path, m.size, m.sha256) for m in members),
        restorer=restorer, delta=delta)
    # the oldest format that says it all: a bundle that needs nothing new stays readable by older bundlers
    return replace(head, format=head.needed_format())
