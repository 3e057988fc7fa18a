"""Restore: a bundle back into images, a working Python environment and models, with no network.

First the head, and its signature (trust.py): with a trust file, a bundle that is not signed by a
key it lists stops here. Then one pass over the bundle: every member is checked against
bundle.json as it streams, and goes to the restorer of its kind (kinds.py): image blobs straight
into the chosen loader (docker engine, registry, containerd), wheels into ``DEST/wheels`` under
temporary names. Nothing is committed (the loader's stream ended, a wheel renamed, pip run) until
the last member was verified; then the kinds commit at the same time (pip installs while docker
registers the layers).

``take_inventory`` is the other verb of this side: what a site already holds, for the next update.

This is the air-gapped side: it imports the format, the archive and the kinds' restorers, never
the connected side (registry pulls, uv, the resolver), and keeps to what CPython 3.9 supports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from bundler.context import Context
from bundler.format.archive import MemberReader, iter_members
from bundler.format.inventory import Inventory
from bundler.format.trust import CheckedHead, TrustFile, open_bundle
from bundler.oci.site import SiteRegistry
from bundler.parallel import despite_interrupts
from bundler.restore.bases import delta_site
from bundler.restore.kinds import KINDS, select
from bundler.restore.machine import check_machine, platform_for, runs_here
from bundler.restore.oci import RegistryBundle, pushed_bundles
from bundler.restore.options import InventoryOptions, Piece, RestoreOptions, Restorer, RestoreReport


class BundleFile:
    """A bundle file (or its volumes), read from start to end; the other source is a registry (oci.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def open(self, trust: TrustFile | None) -> CheckedHead:
        return open_bundle(self.path, trust)

    def members(self, checked: CheckedHead, needed: Callable[[str], bool]) -> Iterator[MemberReader]:  # noqa: ARG002
        """Every member: a file is read through, what is not needed included (its checksums cover it)."""
        return iter_members(self.path, checked.head, checked.head_sha256)

    def bytes_to_read(self, checked: CheckedHead, needed: Callable[[str], bool]) -> int:  # noqa: ARG002
        return checked.head.member_bytes

    def provide(self, piece: Piece, target: Path) -> bool:  # noqa: ARG002 - a bundle file is no site
        return False


def restore(bundle: Path | RegistryBundle, options: RestoreOptions, ctx: Context | None = None) -> RestoreReport:
    """Restore ``bundle``: a file (or its volumes), or a bundle pushed to a registry (oci.py)."""
    ctx = ctx or Context()
    source = BundleFile(bundle) if isinstance(bundle, Path) else bundle
    path = str(source)
    checked = source.open(options.trust)   # before anything is loaded: who signed it, and is it theirs
    head = checked.head
    needs = runs_here(head, options)
    if needs:   # before anything is written: a bundle this machine cannot run is refused, naming both
        check_machine(platform_for(head, options.platform), head.target.wheels_glibc, needs, where=str(path),
                      given=options.platform)
    report = RestoreReport([checked.signature.describe()])
    restorers: list[Restorer] = [kind.restorer(head, options, ctx) for kind in select(options.kinds)
                                 if kind.in_head(head)]
    for restorer in restorers:
        restorer.plan(report)
    with delta_site(head, restorers, options.bases, folder=options.dest or Path(), ctx=ctx, site=source):
        if all(r.done() for r in restorers):
            report.notes.append("nothing to do: everything in the bundle is already restored")
        else:
            _stream(source, checked, restorers, ctx=ctx)
            try:
                _commit(restorers, report, ctx)
            except KeyboardInterrupt:   # programs were stopped half way (pip, venv): leave nothing half made
                _abort(restorers)
                raise
    for restorer in restorers:
        restorer.finish(report)
    return report


def _stream(source: BundleFile | RegistryBundle, checked: CheckedHead, restorers: list[Restorer], *,
            ctx: Context) -> None:
    """Every member the restorers need (a file's every member), verified as it streams, to the restorer
    of its kind; on any failure, none is left half done."""
    def needed(path: str) -> bool:
        return any(r.wants(path) and r.needs(path) for r in restorers)

    try:
        for restorer in restorers:
            restorer.start()
        with ctx.progress.bar("restoring", source.bytes_to_read(checked, needed)) as bar:
            for member in source.members(checked, needed):
                owner = next((r for r in restorers if r.wants(member.name)), None)
                if owner is not None:
                    owner.member(member.name, member)
                member.finish()
                bar.update(member.size)
    except BaseException:
        ctx.cancel.set()   # a program a restorer started (venv) stops before the restorer cleans up
        _abort(restorers)
        raise


def _abort(restorers: list[Restorer]) -> None:
    """Every restorer removes what this run began; a second Ctrl-C does not leave that half done."""
    for restorer in restorers:
        despite_interrupts(restorer.abort)


def _commit(restorers: list[Restorer], report: RestoreReport, ctx: Context) -> None:
    """Every kind commits at once (pip installs while docker registers layers): the first in this thread,
    each other on a thread of its own. The first failure is raised once all have ended, so none is cut
    off half way. Ctrl-C or SIGTERM (raised in this thread, whatever it was doing) cancels the others
    and still waits for them to end: their programs (pip) are stopped and reaped before anything is
    cleaned up under them. Notes come in the kinds' order."""
    failures: list[BaseException] = []
    reports = [RestoreReport() for _ in restorers]
    # Events, not Thread.join: a join that Ctrl-C interrupts marks the thread ended while it still
    # runs (CPython 3.11), and the interpreter's exit would then not wait for it either.
    ended = [threading.Event() for _ in restorers[1:]]

    def commit(index: int) -> None:
        try:
            restorers[index].commit(reports[index])
        except BaseException as exc:  # noqa: BLE001 - raised below
            failures.append(exc)
        finally:
            ended[index - 1].set()

    for index in range(1, len(restorers)):
        threading.Thread(target=commit, args=(index,), name="commit").start()
    try:
        if restorers:
            try:
                restorers[0].commit(reports[0])
            except Exception as exc:  # noqa: BLE001 - raised below, once the others have ended
                failures.append(exc)
        for event in ended:
            event.wait()
    except BaseException:   # Ctrl-C or SIGTERM: the others (pip) stop now, not when done
        ctx.cancel.set()
        for event in ended:
            despite_interrupts(event.wait)
        raise
    for part in reports:
        report.notes += part.notes
    if failures:
        raise failures[0]


def take_inventory(options: InventoryOptions, ctx: Context) -> Inventory:
    """Ask every payload kind what the named sources hold; of a registry, also every bundle pushed to it
    (its wheels and model files are there, and its layers, by diff_id, for push and restore oci://)."""
    parts = [kind.inventory(options, ctx) for kind in KINDS]
    if options.registry:
        site = SiteRegistry(options.registry, ctx.policy, plain_http=options.insecure)
        repositories = options.repositories or tuple(site.catalog())
        parts += [Inventory.of_bundle(head, str(ref)) for ref, head in pushed_bundles(site, repositories)]
    return Inventory.merge(parts)
