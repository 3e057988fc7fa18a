"""The command line of trust and the SBOM: ``build --sign KEY``, ``--trust FILE`` on the verbs that
read a bundle, and ``bundler sbom``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bundler.cli_common import EXIT_OK, bundle_path, progress_for, say

PASSPHRASE_ENV = "BUNDLER_KEY_PASSPHRASE"  # noqa: S105 - the name of a variable, not its value


def add_sign_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign", type=Path, metavar="KEY",
                   help="sign bundle.json with this OpenSSH ed25519 private key (ssh-keygen -t ed25519): the "
                        "signature travels in the bundle and beside it as OUT.sig, which ssh-keygen -Y verify "
                        f"checks without bundler; a passphrase is read from {PASSPHRASE_ENV}, or asked on a terminal")


def add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="accept only bundles signed by a key this file lists (ssh-keygen's allowed_signers "
                        "format, or public key lines); exit 3 otherwise, with nothing loaded. Default: trust: "
                        "in config.yaml of the user's or the site's bundler config folder")


def signing_key(args: argparse.Namespace):  # noqa: ANN201 - an sshsig.SigningKey, or None
    """The --sign key, loaded before anything is fetched: a wrong passphrase fails at once."""
    if args.sign is None:
        return None
    from bundler.sshsig import key_needs_passphrase, load_signing_key
    passphrase = None
    if key_needs_passphrase(args.sign):
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None and sys.stdin.isatty():
            import getpass
            passphrase = getpass.getpass(f"passphrase for {args.sign}: ")
    return load_signing_key(args.sign, passphrase)


def trust_for(args: argparse.Namespace):  # noqa: ANN201 - a trust.TrustFile, or None
    from bundler.trust import configured_trust, read_trust_file
    path = configured_trust(getattr(args, "trust", None))
    return read_trust_file(path) if path is not None else None


def cmd_sbom(args: argparse.Namespace) -> int:
    from bundler.inspection import read_sbom
    data, signature = read_sbom(args.bundle, trust_for(args))
    progress_for(args).note(signature.describe())
    if args.image is not None:
        from bundler.sbomview import image_sbom
        data = image_sbom(data, args.image, str(args.bundle))
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    from bundler.files import removed_on_failure
    with removed_on_failure(args.output.with_name(args.output.name + ".partial"), f"writing {args.output}") as tmp:
        tmp.write_bytes(data)
        tmp.replace(args.output)
    if not getattr(args, "quiet", False):
        say(f"wrote {args.output}: the CycloneDX 1.6 SBOM of {args.bundle} ({len(data)} bytes)")
    return EXIT_OK


def add_sbom_parser(command) -> None:  # noqa: ANN001 - cli.build_parser's command()
    p = command("sbom", cmd_sbom, help="write out the SBOM of everything a bundle holds (reads only its start)",
                description="Write the bundle's SBOM (CycloneDX 1.6 JSON: each image, its layers, distribution, "
                            "OS packages and Python distributions, and every wheel with the lock's dependency "
                            "edges), checked against bundle.json and its signature. Reads only the start of the "
                            "file, however large the bundle is. grype sbom:FILE and trivy sbom FILE read it.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or its first volume)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it here (default: stdout)")
    p.add_argument("--image", metavar="NAME",
                   help="only this image (its name or tag as inspect shows it) as the SBOM's subject: for "
                        "scanners that take one image and one distribution per file, as trivy does")
    add_trust_option(p)
