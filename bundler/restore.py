"""Restore: a bundle back into images, a working Python environment and models, with no network.

First the head, and its signature (trust.py): with a trust file, a bundle that is not signed by a
key it lists stops here. Then one pass over the bundle: every member is checked against
bundle.json as it streams, and goes to the restorer of its kind (kinds/): image blobs straight
into the chosen loader (docker engine, registry, containerd), wheels into ``DEST/wheels`` under
temporary names. Nothing is committed (the loader's stream ended, a wheel renamed, pip run) until
the last member was verified; then the kinds commit at the same time (pip installs while docker
registers the layers).

This is the air-gapped side: it imports the format, the archive and the kinds' restorers, never
the connected side (registry pulls, uv, the resolver), and keeps to what CPython 3.9 supports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from bundler.archive import iter_members
from bundler.bases import delta_site
from bundler.context import Context
from bundler.errors import InputError
from bundler.format import Head
from bundler.kinds import NAMES, Restorer, select
from bundler.machine import check_machine, runs_here
from bundler.reference import Platform
from bundler.trust import CheckedHead, TrustFile, open_bundle


@dataclass
class RestoreOptions:
    dest: Path | None = None            # default: ./<profile name>
    venv: Path | None = None            # default: DEST/venv
    python: str | None = None           # default: python3.X on PATH for the target's version
    registry: str | None = None
    insecure: bool = False
    containerd: bool = False
    containerd_address: str | None = None
    namespace: str = "k8s.io"
    index_dir: Path | None = None
    make_venv: bool = True                 # False: the wheels (and --index-dir) only, for another machine
    check: bool = False
    compile: bool = False                  # byte-compile the installed modules now (pip's own default)
    kinds: tuple[str, ...] = NAMES         # what to restore: --images-only, --wheels-only, --models-only
    platform: str | None = None            # the platform restored here (default: this machine's), chosen among
                                           # a bundle's several, and compared with its target
    hf_home: Path | None = None            # models: default DEST/huggingface (see modelcache.py)
    modelscope_cache: Path | None = None   # default DEST/modelscope
    models_dir: Path | None = None         # plain folders instead of the hubs' caches
    bases: tuple[Path, ...] = ()           # a delta: earlier bundles that may hold what the site lacks
    trust: TrustFile | None = None         # with one, only bundles signed by a key it lists (trust.py)


@dataclass
class RestoreReport:
    notes: list[str] = field(default_factory=list)
    venv: Path | None = None
    check: tuple[str, int, str] | None = None    # command, exit code, output


def platform_for(head: Head, requested: str | None) -> str:
    """The one platform a restore into this machine (docker, containerd, a venv) takes from the bundle:
    ``requested`` (--platform), else the bundle's only one, else this machine's."""
    if requested is not None:
        wanted = Platform.parse(requested)
    elif len(head.platforms) == 1:
        return head.target.platform
    else:
        wanted = Platform.of_this_machine()
    for platform in head.platforms:
        found = Platform.parse(platform)
        if found.matches(wanted.os, wanted.architecture, wanted.variant):
            return platform
    source = "--platform" if requested is not None else "this machine"
    raise InputError(f"the bundle holds {', '.join(head.platforms)}; {source} is {wanted}: pass --platform, or "
                     "use --registry or --index-dir, which take every platform")


def restore(path: Path, options: RestoreOptions, ctx: Context | None = None) -> RestoreReport:
    ctx = ctx or Context()
    checked = open_bundle(path, options.trust)   # before anything is loaded: who signed it, and is it theirs
    head = checked.head
    needs = runs_here(head, options)
    if needs:   # before anything is written: a bundle this machine cannot run is refused, naming both
        check_machine(platform_for(head, options.platform), head.target.wheels_glibc, needs, str(path),
                      options.platform)
    report = RestoreReport([checked.signature.describe()])
    restorers: list[Restorer] = [kind.restorer(head, options, ctx) for kind in select(options.kinds)
                                 if kind.in_head(head)]
    for restorer in restorers:
        restorer.plan(report)
    with delta_site(head, restorers, options.bases, options.dest or Path(), ctx):
        if all(r.done() for r in restorers):
            report.notes.append("nothing to do: everything in the bundle is already restored")
        else:
            _stream(path, checked, restorers, ctx)
            try:
                _commit(restorers, report, ctx)
            except KeyboardInterrupt:   # programs were stopped half way (pip, venv): leave nothing half made
                for restorer in restorers:
                    restorer.abort()
                raise
    for restorer in restorers:
        restorer.finish(report)
    return report


def _stream(path: Path, checked: CheckedHead, restorers: list[Restorer], ctx: Context) -> None:
    """Every member, verified as it streams, to the restorer of its kind; on any failure, none is left half done."""
    try:
        for restorer in restorers:
            restorer.start()
        with ctx.progress.bar("restoring", checked.head.member_bytes) as bar:
            for member in iter_members(path, checked.head, checked.head_sha256):
                owner = next((r for r in restorers if r.wants(member.name)), None)
                if owner is not None:
                    owner.member(member.name, member)
                member.finish()
                bar.update(member.size)
    except BaseException:
        ctx.cancel.set()   # a program a restorer started (venv) stops before the restorer cleans up
        for restorer in restorers:
            restorer.abort()
        raise


def _commit(restorers: list[Restorer], report: RestoreReport, ctx: Context) -> None:
    """Every kind commits at once (pip installs while docker registers layers); the first failure is raised
    once all have ended, so none is cut off half way. Notes come in the kinds' order."""
    failures: list[BaseException] = []
    reports = [RestoreReport() for _ in restorers]

    def commit(index: int) -> None:
        try:
            restorers[index].commit(reports[index])
        except KeyboardInterrupt:   # Ctrl-C, in the main thread: the others (pip) stop now, not when done
            ctx.cancel.set()
            raise
        except BaseException as exc:  # noqa: BLE001 - raised below
            failures.append(exc)

    threads = [threading.Thread(target=commit, args=(i,), name="commit") for i in range(1, len(restorers))]
    for thread in threads:
        thread.start()
    try:
        if restorers:
            commit(0)
    finally:
        for thread in threads:
            thread.join()
    for part in reports:
        report.notes += part.notes
    if failures:
        raise failures[0]
