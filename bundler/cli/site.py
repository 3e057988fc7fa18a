"""The site's registry, for a whole cluster: ``bundler push``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundler.cli.common import EXIT_OK, Subcommand, bundle_path, progress_for, run_context, say
from bundler.cli.trust import add_trust_option, trust_for
from bundler.files import human_size
from bundler.restore.push import PushOptions, Target, push


def cmd_push(args: argparse.Namespace) -> int:
    target = Target.parse(args.target)
    report = push(args.bundle, target, PushOptions(plain_http=args.plain_http, trust=trust_for(args),
                                                   docker_config=args.docker_config), run_context(args))
    if args.json:
        say(json.dumps({"reference": report.reference, "digest": report.digest, "blobs_sent": report.blobs_sent,
                        "bytes_sent": report.bytes_sent, "blobs_held": report.blobs_held, "notes": report.notes},
                       indent=2))
        return EXIT_OK
    progress = progress_for(args)
    for note in report.notes:
        progress.note(note)
    say(f"pushed {args.bundle} to {report.reference}@{report.digest}: {report.blobs_sent} blobs sent "
        f"({human_size(report.bytes_sent)}), {report.blobs_held} already there; restore it on a node with "
        f"bundler restore oci://{report.reference}" + (" --plain-http" if args.plain_http else ""))
    return EXIT_OK


def add_push(command: Subcommand) -> None:
    p = command.parser(cmd_push,
                       "Put a whole bundle into the site's registry (Harbor, distribution, zot), for every node "
                       "of a cluster to take what it lacks. The bundle is verified first: a damaged one is "
                       "refused (exit 3) and nothing is sent. Its images go under their own names, so nodes pull "
                       "them by the names they already type (layers gzip-compressed on the way); its models "
                       "as CNCF ModelPack artifacts; and at REPO:TAG, an OCI index of all of it, with the wheels, "
                       "the lock, the SBOM and the signature, which `bundler restore oci://HOST/REPO:TAG` reads "
                       "and `skopeo copy --all` copies between registries. Blobs the registry holds are not sent "
                       "again; a delta needs the bundle it was made against pushed there first.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or any of its volumes)")
    p.add_argument("target", metavar="HOST[:PORT]/REPO[:TAG]",
                   help="where the bundle goes (default tag: latest), e.g. harbor.example/ml/torch:2.1")
    p.add_argument("--plain-http", action="store_true", help="the registry speaks HTTP, not HTTPS")
    p.add_argument("--json", action="store_true", help="print the result as JSON (the index's digest, what was sent)")
    p.add_argument("--docker-config", type=Path, metavar="FILE",
                   help="the logins (default: docker's own, $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    add_trust_option(p)
