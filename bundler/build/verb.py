"""The connected side's verbs: ``lock``, ``plan`` and ``build``.

``build`` pins a profile (or takes its lock), has every payload kind (kinds.py) fetch what the lock
pins into the cache at the same time while the one-file restorer is made beside them, then streams
their members into one bundle behind its head (format/head.py): bundle.json first (and its
signature, with ``--sign``), then the SBOM of everything inside (sbom.py), then the images as one
OCI layout under ``images/``, the wheels under ``wheels/`` and ``requirements.lock``. The same pins
give a byte-identical bundle: members are sorted, owners fixed, and every timestamp is the lock's
date, SOURCE_DATE_EPOCH, or a date the pinned content itself carries; never the clock. A bundle is
written in the lowest format that holds what it carries (format 1 unless it carries models, exact
images or several platforms), so older releases read what they can.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bundler import __version__
from bundler.build.context import BuildContext
from bundler.build.kinds import Kind, select
from bundler.build.lockfile import Lock, check_lock_fits, dump_lock, read_lock, source_date_epoch
from bundler.build.options import BuildOptions, BuildResult, Fetched, combined
from bundler.build.pack import Member, existing_outputs, write_bundle
from bundler.build.plan import BuildPlan, check_free_space, plan_fetch
from bundler.build.profile import Profile
from bundler.build.restorer import RestorerFile, make_restorer, pythons_for, stage_copy, unsupported
from bundler.build.signing import SigningKey
from bundler.build.since import read_site
from bundler.errors import BundlerError, DiskError, InputError
from bundler.files import free_space, human_size, removed_on_failure
from bundler.format.delta import Delta
from bundler.format.head import FORMAT, NO_DATE, Head, MemberEntry, ProfileInfo, RestorerEntry, Target
from bundler.format.inventory import Site
from bundler.format.paths import blob_path, layout_path, restorer_beside, signature_beside
from bundler.parallel import run_parallel

if TYPE_CHECKING:
    from bundler.build.sbom import SbomInput


# Expected bundle size per byte of uncompressed layer: zstd -3 leaves 25-45% of real layers.
LAYER_RATIO_ESTIMATE = 0.5


def pin(profile: Profile, ctx: BuildContext, kinds: Collection[Kind]) -> dict:
    """The lock's fields for ``kinds``, each pinned at the same time (registries and indexes are
    different places); the first failure stops the others."""
    fields: dict = {}

    def one(kind: Kind, _stop: object) -> None:  # the kinds watch ctx.cancel themselves
        fields.update(kind.pin(profile, ctx))

    run_parallel(kinds, one, max(1, len(kinds)), ctx.cancel)
    return fields


def lock(profile: Profile, ctx: BuildContext, kinds: Collection[str] | None = None) -> Lock:
    """Pin the profile (or only the ``kinds`` named): image tags to manifest digests, requirements to
    exact versions with hashes. ``created`` is SOURCE_DATE_EPOCH, or None: the build then dates the
    bundle from what it fetched, and ``bundler lock`` with the time it wrote the file."""
    chosen = [kind for kind in select(kinds) if kind.in_profile(profile)]
    platforms = tuple(str(p) for p in profile.target.platforms)
    return Lock(profile.name, platforms[0], profile.target.python, source_date_epoch(),
                **pin(profile, ctx, chosen), platforms=platforms, glibc=profile.target.glibc)


def _check_output(options: BuildOptions) -> None:
    if not 1 <= options.level <= 22:
        raise InputError(f"--level {options.level}: zstd levels run from 1 to 22")
    folder = options.output.parent
    if not folder.is_dir():
        raise InputError(f"{options.output}: folder {folder} does not exist")
    taken = existing_outputs(options.output)
    if taken and not options.force:
        raise InputError(f"{taken[0]}: already exists (use --force to replace it)")


def plan(profile: Profile, ctx: BuildContext, options: BuildOptions, site: Site | None = None) -> BuildPlan:
    """What ``build`` would fetch: the pins (the lock, or a fresh resolve), and every kind's pieces with
    their sizes, what the cache has, where the rest comes from, and (a delta) what the site holds.
    Downloads no payload."""
    if site is None and options.since:
        site = read_site(options.since)
    kinds = [kind for kind in select(options.kinds) if kind.in_profile(profile)]
    if options.lock_file is not None:
        pinned = read_lock(options.lock_file)
        pinned = check_lock_fits(pinned, profile, options.lock_file)
        pinned = _complete(pinned, profile, ctx, kinds=kinds, lock_file=options.lock_file)
    else:
        pinned = lock(profile, ctx, [kind.name for kind in kinds])
    return plan_fetch(profile, pinned, ctx, kinds=[kind for kind in kinds if kind.pinned(pinned)], options=options,
                      site=site)


def build(profile: Profile, ctx: BuildContext, options: BuildOptions) -> BuildResult:
    """Fetch everything the profile (or its lock) names, then stream it into one bundle."""
    _check_output(options)
    started = time.monotonic()
    site = read_site(options.since) if options.since else None   # a bad base fails before anything is fetched
    planned = plan(profile, ctx, options, site)
    pinned = planned.pinned
    check_free_space(planned, options.output.parent, ctx.cache.root)   # before hours of downloading
    restorer, parts = _fetch_and_make_restorer(profile, pinned, ctx, kinds=planned.kinds, options=options, site=site)
    everything = combined([part for _, part in parts])
    if site is not None:   # only what the site lacks (delta.py); the SBOM still tells what it will hold
        parts = [(kind, kind.delta(part, site, ctx)) for kind, part in parts]
    fetched = combined([part for _, part in parts])
    fetch_seconds = time.monotonic() - started

    if pinned.created is None:   # no lock and no SOURCE_DATE_EPOCH: a date the pins determine
        pinned = replace(pinned, created=fetched.created if fetched.created is not None else NO_DATE)
    members = member_order(fetched)
    from bundler.build.sbom import sbom_member  # after fetching: its library's import does not delay the downloads
    sbom = _sbom_input(profile, pinned, everything)
    if site is not None:   # a delta's SBOM: what the site holds after it, and how each piece gets there
        needs = fetched.needs
        delivery = {str(d): "on the site" for d in (*needs.layers, *needs.wheels, *needs.models)}
        delivery.update({str(p.layer): "as a patch" for p in needs.patches})
        sbom = replace(sbom, delivery=delivery)
    members.insert(0, sbom_member(sbom))
    head = make_head(profile, pinned, fetched, members=members, split=options.split,
                     restorer=restorer.entry() if restorer else None, site=site)
    _check_space(options.output.parent, head)
    started = time.monotonic()
    data = head.to_json()
    signature = options.sign.sign(data) if options.sign is not None else None
    staged = _stage_restorer(restorer, options.output, options.sign) if restorer else []
    try:
        with ctx.progress.bar("packing", head.member_bytes) as bar:
            paths = write_bundle(options.output, data, members, head.created, options.level, options.split,
                                 bar.update, signature)
    except BaseException:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        raise
    finals = [final for _, final in staged]
    if options.force:  # what an older build left that this one did not write (extra volumes would read as ours)
        kept = {*paths, *finals}
        if signature is not None:
            kept.add(options.output.with_name(signature_beside(options.output.name)))
        if options.split is not None:
            kept.add(options.output.with_name(options.output.name + ".sha256"))
        for stale in existing_outputs(options.output):
            if stale not in kept:
                stale.unlink()
    for partial, final in staged:   # the restorer, then its signature
        os.replace(partial, final)
    return BuildResult(paths=paths, head=head, size=sum(p.stat().st_size for p in paths), fetch_seconds=fetch_seconds,
                       pack_seconds=time.monotonic() - started, restorer=finals[0] if finals else None,
                       restorer_signature=finals[1] if len(finals) > 1 else None,
                       stats={kind.name: part.stats for kind, part in parts})


def _stage_restorer(restorer: RestorerFile, output: Path, sign: SigningKey | None) -> list[tuple[Path, Path]]:
    """The restorer beside the bundle (OUT.pyz) and, with ``sign``, its own signature (OUT.pyz.sig: a site
    checks it with ssh-keygen before running it), as partial files with the names the caller renames them
    to once the bundle is written."""
    final = output.with_name(restorer_beside(output.name))
    copy = stage_copy(restorer, final)
    if sign is None:
        return [(copy, final)]
    signed = final.with_name(signature_beside(final.name))
    partial = signed.with_name(signed.name + ".partial")
    try:
        with removed_on_failure(partial, f"writing {partial}"):
            partial.write_bytes(sign.sign_file(copy))   # the copy: stage_copy checked it against the sha256
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return [(copy, final), (partial, signed)]


def _fetch_and_make_restorer(profile: Profile, pinned: Lock, ctx: BuildContext, *, kinds: list[Kind],
                             options: BuildOptions, site: Site | None = None
                             ) -> tuple[RestorerFile | None, list[tuple[Kind, Fetched]]]:
    """The kinds fetch while the restorer is made beside them (its wheels come from the PyPI mirrors, then
    seconds of unpacking and zipping), so that a cold build costs the longer of the two, not their sum.
    The first failure of either stops the other (ctx.cancel) and is raised at once: a restorer that
    cannot be made still fails the build early, before the layers are all in."""
    done: dict[str, object] = {}
    work = {"payloads": lambda: _fetch(profile, pinned, ctx, kinds=kinds, options=options, site=site)}
    if options.restorer:
        work["restorer"] = lambda: _restorer(pinned, ctx)

    def one(name: str, _stop: object) -> None:   # each watches ctx.cancel itself
        done[name] = work[name]()

    run_parallel(work, one, len(work), ctx.cancel)
    return done.get("restorer"), done["payloads"]


def _restorer(pinned: Lock, ctx: BuildContext) -> RestorerFile | None:
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


def _complete(pinned: Lock, profile: Profile, ctx: BuildContext, *, kinds: list[Kind], lock_file: Path) -> Lock:
    """A lock made with --images-only or --wheels-only pins part of a profile: pin the rest now."""
    missing = [kind.name for kind in kinds if not kind.pinned(pinned)]
    if not missing:
        return pinned
    fields = pin(profile, ctx, [kind for kind in kinds if kind.name in missing])
    ctx.progress.note(f"{lock_file} pins no {' and '.join(missing)}; resolved them now")
    return replace(pinned, **fields)


def _fetch(profile: Profile, pinned: Lock, ctx: BuildContext, *, kinds: list[Kind], options: BuildOptions,
           site: Site | None) -> list[tuple[Kind, Fetched]]:
    """Every kind fetches at once (registries and indexes are different places); the first failure
    stops the others and is raised at once."""
    fetched: dict[int, Fetched] = {}

    def one(kind: Kind, _stop: object) -> None:  # the kinds watch ctx.cancel themselves
        fetched[id(kind)] = kind.fetch(profile, pinned, ctx, options=options, site=site)

    run_parallel(kinds, one, len(kinds), ctx.cancel)
    parts = [(kind, fetched[id(kind)]) for kind in kinds]
    for _, part in parts:
        for note in part.notes:
            ctx.progress.note(note)
    return parts


def _check_space(folder: Path, head: Head) -> None:
    needed = int(head.image_bytes * LAYER_RATIO_ESTIMATE) + head.member_bytes - head.image_bytes
    free = free_space(folder)
    if free < needed:
        raise DiskError(f"{folder}: the bundle needs about {human_size(needed)}, only {human_size(free)} is free")


def member_order(fetched: Fetched) -> list[Member]:
    """The bundle's members: every image's layers from the bottom up (each image's first layer, then
    each second one, ...), then the rest by path. A restore into docker registers a layer while the
    bundle streams, and a layer only once the ones below it are in (restore/images/docker.py): a base
    that came after the tops above it kept them waiting. A reader takes the members in any order."""
    depth: dict[str, tuple[int, int]] = {}
    for number, image in enumerate(fetched.images):
        for height, blob in enumerate(image.blobs):
            depth.setdefault(layout_path(blob_path(blob.digest)), (height, number))
    return sorted(fetched.members, key=lambda m: (0, *depth[m.path], m.path) if m.path in depth else (1, 0, 0, m.path))


def _sbom_input(profile: Profile, pinned: Lock, fetched: Fetched) -> SbomInput:
    from bundler.build.sbom import SbomInput
    members = sorted(fetched.members, key=lambda m: m.path)
    seed = hashlib.sha256("".join(f"{m.path}:{m.sha256}\n" for m in members).encode()).hexdigest()
    return SbomInput(profile=profile.name, description=profile.description, platform=", ".join(pinned.platforms),
                     python=pinned.python, created=pinned.created, lock_text=pinned.requirements,
                     images=fetched.images, contents=fetched.contents, wheels=fetched.wheels, seed=seed,
                     models=fetched.models)


def make_head(profile: Profile, pinned: Lock, fetched: Fetched, *, members: list[Member], split: int | None,
              restorer: RestorerEntry | None = None, site: Site | None = None) -> Head:
    needs = fetched.needs
    delta = None if site is None else Delta(bases=site.bases, layers=needs.layers, wheels=needs.wheels,
                                            models=needs.models, patches=needs.patches)
    head = Head(
        format=FORMAT, tool=f"bundler {__version__}", created=pinned.created,
        profile=ProfileInfo(profile.name, profile.description, profile.check, source=profile.source_text),
        target=Target(pinned.platform, pinned.python, pinned.platforms, pinned.glibc), lock=dump_lock(pinned),
        split=split, images=fetched.images, wheels=fetched.wheels, indexes=fetched.indexes, models=fetched.models,
        members=tuple(MemberEntry(m.path, m.size, m.sha256) for m in members), restorer=restorer, delta=delta)
    # the oldest format that says it all: a bundle that needs nothing new stays readable by older bundlers
    return replace(head, format=head.needed_format())
