"""``bundler mirrors list | check | config``: the mirror layers for people."""

from __future__ import annotations

import argparse
import sys

from bundler.build.mirrorcheck import check, upstreams
from bundler.build.mirrorconfig import plan_daemon_json, plan_pip_conf
from bundler.build.mirrors import effective_mirrors
from bundler.build.profile import load_profile
from bundler.cli.common import (
    EXIT_OK,
    Parser,
    Subcommand,
    existing_file,
    progress_for,
    say,
    seconds,
    usage_error,
)
from bundler.cli.node import AFTER_WRITING, SITE_DESCRIPTION, add_config_options, site_config
from bundler.configfile import write_config
from bundler.context import DEFAULT_RETRY
from bundler.errors import NetworkError
from bundler.oci.reference import ImageRef


def cmd_mirrors(args: argparse.Namespace) -> int:
    if args.action == "config" and args.site is not None:
        return _site_config(args)
    if args.action == "config":
        _catalog_config_args(args)
    profile = load_profile(args.profile) if args.profile else None
    mirrors = effective_mirrors(args.mirrors, profile.mirrors if profile else None)
    verbs = {"list": _mirrors_list, "check": _mirrors_check, "config": _mirrors_config}
    return verbs[args.action](args, mirrors, profile)


def _mirrors_list(args: argparse.Namespace, mirrors, profile) -> int:  # noqa: ANN001
    import json

    found = upstreams(mirrors, profile)
    if args.json:
        say(json.dumps({"upstreams": [u.as_dict() for u in found]}, indent=2))
        return EXIT_OK
    for line in _table(["UPSTREAM", "#", "ENDPOINT", "ORIGIN"],
                       [[u.name, str(n), e.url, e.origin] for u in found for n, e in enumerate(u.endpoints, 1)]):
        say(line)
    return EXIT_OK


def _mirrors_check(args: argparse.Namespace, mirrors, profile) -> int:  # noqa: ANN001
    import json

    image = ImageRef.parse(args.tag) if args.tag else None
    report = check(upstreams(mirrors, profile, image), args.timeout, image, args.project)
    for line in [json.dumps(report.as_dict(), indent=2)] if args.json else _render_check(report):
        say(line)
    failure = report.failure()
    if failure:
        raise NetworkError(failure)
    return EXIT_OK


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def latency_text(seconds: float | None, missing: str = "-") -> str:
    return missing if seconds is None else f"{seconds * 1000:.0f} ms"


def _render_check(report) -> list[str]:  # noqa: ANN001
    image = report.image
    rows = []
    for probe in report.probes:
        endpoint = f"official ({probe.url})" if probe.endpoint.official else probe.endpoint.url
        row = [probe.upstream, endpoint, probe.endpoint.origin, ("ok, " if probe.alive else "") + probe.status,
               latency_text(probe.latency)]
        if image is not None:
            theirs = probe.upstream == image.registry
            row.append("" if not theirs else probe.manifest[:19] + ".." if probe.manifest
                       else probe.manifest_problem or "-")
        rows.append(row)
    lines = _table(["UPSTREAM", "ENDPOINT", "ORIGIN", "STATUS", "LATENCY"] + (["IMAGE"] if image else []), rows)
    lines.append("")
    for upstream in report.upstreams:
        working = [p for p in report.of(upstream.name) if p.ok]
        line = f"{upstream.name}: {len(working)} of {len(upstream.endpoints)} working"
        if working:
            fastest = min(working, key=lambda p: p.latency or 0.0)
            line += f", fastest {fastest.endpoint.url} ({latency_text(fastest.latency)})"
        lines.append(line)
    if len({p.manifest for p in report.probes if p.manifest}) > 1:
        lines.append(f"{image}: the endpoints disagree on its digest; one that serves an older one is stale")
    return lines


SITE_ONLY = ("containerd", "hf")


def _catalog_config_args(args: argparse.Namespace) -> None:
    """The catalog's configuration is Docker's and pip's; the site's options need --site."""
    if args.tool in SITE_ONLY:
        raise usage_error(f"mirrors config {args.tool}: only with --site URL (a node's configuration for the site); "
                          "the mirror catalog configures docker and pip")
    given = [flag for flag, value in (("--upstream", args.upstream), ("--repository", args.repository),
                                      ("--skip-verify", args.skip_verify)) if value]
    if given:
        raise usage_error(f"{', '.join(given)}: only with --site URL")


def _mirrors_config(args: argparse.Namespace, mirrors, profile) -> int:  # noqa: ANN001, ARG001
    plan = (plan_daemon_json if args.tool == "docker" else plan_pip_conf)(mirrors, args.path)
    progress = progress_for(args)
    for note in plan.notes:
        progress.note(note)
    if plan.text is None:
        say(plan.reason)
    elif not args.write:
        sys.stdout.write(plan.text)
    elif not plan.changed:
        say(f"{plan.path} already says this; nothing written")
    else:
        backup = write_config(plan)
        say(f"wrote {plan.path}" + (f" (the old one is {backup})" if backup else ""))
        say(AFTER_WRITING["docker"] if args.tool == "docker" else AFTER_WRITING["pip"])
    return EXIT_OK


def _site_config(args: argparse.Namespace) -> int:
    if args.mirrors or args.profile:
        raise usage_error("--mirrors and --profile choose the mirror catalog; with --site the node is configured "
                          "for the site alone: leave them out")
    return site_config(args)


def add_mirrors(command: Subcommand) -> None:
    common = command.common
    layers = Parser(add_help=False)
    layers.add_argument("--mirrors", type=existing_file, metavar="FILE",
                        help="a mirrors file over the profile's and the user's, as for build")
    layers.add_argument("--profile", metavar="P", help="a profile file or built-in name: its mirrors: layer, and "
                                                        "only the upstreams its build uses")
    p = command.parser(cmd_mirrors,
                       "The effective mirror endpoints for each upstream (layers, highest first: "
                       "--mirrors FILE, the profile's mirrors:, the user's mirrors.yaml, the built-in "
                       "catalog), their health, and Docker's and pip's configuration for them; with "
                       "config --site URL, a node's configuration for the site instead.")
    verbs = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    v = verbs.add_parser("list", parents=[common, layers], help="each upstream's endpoints in order, and their origin",
                         description="For each upstream, the endpoints tried in order and the layer each came from.")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v = verbs.add_parser("check", parents=[common, layers], help="probe every endpoint at once",
                         description="Probe every endpoint concurrently: a registry answers GET /v2/ with 200 or "
                                     "401, an index serves the simple page of --project. Exit 1 when an upstream "
                                     "has no working endpoint.")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.add_argument("--timeout", type=seconds, default=DEFAULT_RETRY.connect_timeout, metavar="S",
                   help=f"longest wait for each endpoint, in seconds (default {DEFAULT_RETRY.connect_timeout:g})")
    v.add_argument("--tag", metavar="IMAGE", help="also ask each endpoint of the image's registry for its manifest: "
                                                  "a mirror that answers but never synced it is stale")
    v.add_argument("--project", default="pip", metavar="NAME",
                   help="the project whose simple page an index must serve (default pip)")
    v = verbs.add_parser("config", parents=[common, layers], help="print or write a tool's configuration",
                         description="Without --site: the configuration Docker (registry-mirrors in daemon.json, "
                                     "docker.io only) or pip (index-url, extra-index-url, trusted-host for "
                                     "plain-HTTP mirrors, timeout in pip.conf) needs for the mirror catalog. With "
                                     "--site URL: " + SITE_DESCRIPTION)
    add_config_options(v, site_required=False)
