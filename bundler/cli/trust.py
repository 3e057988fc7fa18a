"""The command line of trust and the SBOM: ``--trust FILE`` on the verbs that read a bundle, and
``bundler sbom`` (``build --sign KEY`` is the connected side's: cli/build.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bundler.cli.common import EXIT_OK, Subcommand, bundle_path, progress_for, say
from bundler.files import removed_on_failure
from bundler.format.trust import configured_trust, read_trust_file
from bundler.restore.inspection import read_sbom
from bundler.restore.sbomview import image_sbom


def add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="accept only bundles signed by a key this file lists (ssh-keygen's allowed_signers "
                        "format, or public key lines); exit 3 otherwise, with nothing loaded. Default: trust: "
                        "in config.yaml of the user's or the site's bundler config folder")


def trust_for(args: argparse.Namespace):  # noqa: ANN201 - a trust.TrustFile, or None
    path = configured_trust(getattr(args, "trust", None))
    return read_trust_file(path) if path is not None else None


def cmd_sbom(args: argparse.Namespace) -> int:
    data, signature = read_sbom(args.bundle, trust_for(args))
    progress_for(args).note(signature.describe())
    if args.image is not None:
        data = image_sbom(data, args.image, str(args.bundle))
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    with removed_on_failure(args.output.with_name(args.output.name + ".partial"), f"writing {args.output}") as tmp:
        tmp.write_bytes(data)
        tmp.replace(args.output)
    if not getattr(args, "quiet", False):
        say(f"wrote {args.output}: the CycloneDX 1.6 SBOM of {args.bundle} ({len(data)} bytes)")
    return EXIT_OK


def add_sbom(command: Subcommand) -> None:
    p = command.parser(cmd_sbom,
                       "Write the bundle's SBOM (CycloneDX 1.6 JSON: each image, its layers, distribution, "
                       "OS packages and Python distributions, and every wheel with the lock's dependency "
                       "edges), checked against bundle.json and its signature. Reads only the start of the "
                       "file, however large the bundle is. grype sbom:FILE and trivy sbom FILE read it.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or its first volume)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it here (default: stdout)")
    p.add_argument("--image", metavar="NAME",
                   help="only this image (its name or tag as inspect shows it) as the SBOM's subject: for "
                        "scanners that take one image and one distribution per file, as trivy does")
    add_trust_option(p)
