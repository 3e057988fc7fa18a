"""The commands that read a bundle without restoring it: ``inspect`` (its head alone) and ``verify``
(every member), and what they print."""

from __future__ import annotations

import argparse
import datetime
import json

from bundler.cli.common import EXIT_OK, Subcommand, bundle_path, labelled, progress_for, say
from bundler.cli.trust import add_trust_option, trust_for
from bundler.files import human_size
from bundler.format.head import NO_DATE, Head
from bundler.format.paths import SBOM
from bundler.restore.inspection import Inspection, inspect, restorer_signature_path, verify


def cmd_inspect(args: argparse.Namespace) -> int:
    found = inspect(args.bundle)
    if args.json:
        signer = found.signature.signer
        data = found.head.summary() | {"volumes": [str(p) for p in found.volumes], "bundle_size": found.size,
                                       "signed_by": signer.fingerprint if signer else None}
        say(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    for line in render_inspect(found):
        say(line)
    return EXIT_OK


def render_inspect(found: Inspection) -> list[str]:
    head, volumes = found.head, found.volumes
    profile, target = head.profile, head.target
    created = datetime.datetime.fromtimestamp(head.created, datetime.timezone.utc)
    dated = "no date (its pins carry none)" if head.created == NO_DATE else f"{created:%Y-%m-%d %H:%M:%S} UTC"
    lines = [f"bundle    {volumes[0]} ({human_size(found.size)}" + (f", {len(volumes)} volumes" if len(volumes) > 1
                                                                   else "") + ")",
             f"profile   {profile.name}" + (f": {profile.description}" if profile.description else ""),
             f"target    {', '.join(target.platforms)}" + (f", CPython {target.python}" if target.python else "")
             + (f", glibc {target.wheels_glibc} (manylinux_{target.wheels_glibc.replace('.', '_')} wheels)"
                if target.wheels_glibc and head.wheels else ""),
             f"created   {dated}   by {head.tool}, format {head.format}"]
    if head.images:
        lines.append(f"images    {len(head.images)}, {human_size(head.image_bytes)} of layers "
                     f"({head.unique_layers} unique)")
    for image in head.images:
        tag = ", ".join(image.tags) or image.ref
        how = "  exact" if image.exact else "  (from the local docker engine)" if image.source == "docker" else ""
        lines.append(f"  {tag}  {image.digest[:19]}..  {image.platform}  {human_size(image.size)}  "
                     f"{image.layer_count} layer{'s' if image.layer_count != 1 else ''}{how}")
        lines.append(f"      pin on the site: {image.name.split('@')[0].rsplit(':', 1)[0]}@{image.pinnable}"
                     + ("  (the registry's own digest)" if image.exact else "  (after restore --registry)"))
    for index in head.indexes:
        kind = "the registry's own index" if index.upstream else "an index made here"
        lines.append(f"  {', '.join(index.tags) or index.name}: {len(index.manifests)} platforms, {kind}; pin on the "
                     f"site: {index.name.split('@')[0].rsplit(':', 1)[0]}@{index.digest}")
    if head.wheels:
        lines.append(f"wheels    {len(head.wheels)}, {human_size(head.wheel_bytes)}")
    for wheel in head.wheels:
        lines.append(f"  {wheel.name} {wheel.version}  {wheel.filename}  {human_size(wheel.size)}"
                     + ("  (built from sdist)" if wheel.built else ""))
    if head.format >= 2:
        lines.append(f"models    {len(head.models)}, {human_size(head.model_bytes)}")
        for model in head.models:
            commit = f"  commit {model.commit[:12]}" if model.commit and model.commit != model.revision else ""
            count = f"{len(model.files)} file" + ("s" if len(model.files) != 1 else "")
            lines.append(f"  {model.name}{commit}  {count}  {human_size(model.size)}")
    lines += delta_lines(head)
    if profile.check:
        lines += labelled("check     ", profile.check)
    lines.append(f"members   {len(head.members)}, {human_size(head.member_bytes)} uncompressed")
    if head.restorer is not None:
        lines.append(f"restorer  {found.restorer.name}: CPython {', '.join(head.restorer.pythons)} on "
                     f"{', '.join(head.restorer.runs_on)}, {human_size(head.restorer.size)}"
                     + ("" if found.restorer.exists() else " (not beside the bundle)"))
    sbom = head.member(SBOM)
    if sbom is not None:
        lines.append(f"sbom      {SBOM}, {human_size(sbom.size)} (bundler sbom BUNDLE writes it out)")
    signer = found.signature.signer
    lines.append(f"signed    by {signer.describe()}; the signature matches bundle.json" if signer else
                 "signed    no")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify(args.bundle, progress_for(args), trust_for(args))
    if not getattr(args, "quiet", False):
        say(f"{args.bundle}: {result.signature.describe()}")
    say(f"{args.bundle}: all {result.members} members match bundle.json ({human_size(result.bytes)})"
        + (f"; so does the restorer {result.restorer.name}" if result.restorer else ""))
    if result.restorer_signature is not None:
        say(f"{restorer_signature_path(result.restorer)}: {result.restorer_signature.describe()}")
    return EXIT_OK


def delta_lines(head: Head) -> list[str]:
    """inspect's lines for a delta: against what, and what it needs from the site."""
    delta = head.delta
    if delta is None:
        return []
    sizes = {b.digest: b.size for i in head.images for b in i.blobs}
    wheels = {w.sha256: w.size for w in head.wheels}
    models = {f.sha256: f.size for m in head.models for f in m.files}
    lines = ["delta     against " + ", ".join(f"{b.name} ({b.kind}, sha256 {b.sha256[:12]}..)" for b in delta.bases)]
    needed = sum(sizes.get(d, 0) for d in delta.layers)
    lines.append(f"  needs from the site: {len(delta.layers)} layers ({human_size(needed)}), {len(delta.wheels)} "
                 f"wheels ({human_size(sum(wheels.get(s, 0) for s in delta.wheels))}), {len(delta.models)} model "
                 f"files ({human_size(sum(models.get(s, 0) for s in delta.models))})")
    for patch in delta.patches:
        member = head.member(patch.member)
        lines.append(f"  layer {patch.layer[:19]}.. ({human_size(patch.size)}) rebuilt from the site's "
                     f"{patch.base[:19]}.. by a {human_size(member.size if member else 0)} patch")
    return lines


def add_inspect(command: Subcommand) -> None:
    p = command.parser(cmd_inspect,
                       "Show a bundle's profile, target, images and wheels. Reads only bundle.json at "
                       "the head of the file, so it answers at once however large the bundle is; works "
                       "on the first volume of a split bundle.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or its first volume)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_verify(command: Subcommand) -> None:
    p = command.parser(cmd_verify,
                       "Decompress the bundle and check every member's size and sha256 against "
                       "bundle.json (and every volume against OUT.sha256). Exit 0 only if all match; "
                       "exit 3 naming the first member or volume that does not.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or any of its volumes)")
    add_trust_option(p)
