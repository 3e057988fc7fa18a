"""The site's registry, for a whole cluster: ``bundler push``, and ``bundler serve`` for a site that has
no registry of its own."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from bundler.cli.common import EXIT_OK, Subcommand, bundle_path, interrupted_status, progress_for, run_context, say
from bundler.cli.trust import add_trust_option, trust_for
from bundler.files import human_size
from bundler.restore.push import PushOptions, Target, push
from bundler.restore.serve import (
    DEFAULT_LISTEN,
    INDEX_PORT,
    PUSH_PORT,
    REGISTRY_PORT,
    REPOSITORY,
    ServeOptions,
    Site,
    serve,
    site_host,
)


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


# ---- serve -------------------------------------------------------------------------------------

_STDOUT = threading.Lock()


def whole_line(text: str) -> None:
    """One line on stdout in one write: the index's threads and the registries' relays write at once,
    and print() writes a line and its end apart, so two lines could end up glued together."""
    with _STDOUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def log_line(line: str) -> None:
    """One line of the site's log on stdout, after the time (UTC, to the second)."""
    whole_line(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")


def cmd_serve(args: argparse.Namespace) -> int:
    options = ServeOptions(root=args.root, listen=args.listen, registry_port=args.registry_port,
                           index_port=args.index_port, push_port=args.push_port, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, trust=trust_for(args), log=log_line)
    site = serve(args.bundles, options, run_context(args))
    try:
        for line in site_lines(site):
            whole_line(line)
        site.wait()
    except KeyboardInterrupt as exc:   # Ctrl-C or SIGTERM: how a site is stopped, not a failure
        site.stop()
        whole_line(f"{interrupted_status(exc)[0]}: every process serve started has stopped")
        return EXIT_OK
    finally:
        site.stop()
    return EXIT_OK


def site_lines(site: Site) -> list[str]:
    """What the site serves, its addresses, and the lines each node needs once."""
    options = site.options
    host = site_host(options.listen)
    registry = f"{site.scheme}://{host}:{options.registry_port}"
    index = f"{site.scheme}://{host}:{options.index_port}"
    plain = " --plain-http" if site.scheme == "http" else ""
    lines = [f"serving {len(site.bundles)} bundle{'s' if len(site.bundles) != 1 else ''} from {options.root} with "
             f"CNCF distribution ({site.program.what})"]
    for bundle in site.bundles:
        report = bundle.pushed
        done = "served already" if report is None else (f"pushed: {report.blobs_sent} blobs sent "
                                                         f"({human_size(report.bytes_sent)}), {report.blobs_held} "
                                                         "already there")
        lines.append(f"  {REPOSITORY}:{bundle.tag}  {bundle.path.name}, {done}")
    lines += [f"registry  {registry}  read-only; images by their own names ({host}:{options.registry_port}/REPO:TAG)",
              f"index     {index}/simple/  PEP 503 and PEP 691: pip, uv",
              f"hf        {index}  Hugging Face endpoint: HF_ENDPOINT for huggingface_hub",
              f"push      {site.push_host}  this machine only: bundler push BUNDLE {site.push_host}/{REPOSITORY}:TAG "
              "--plain-http (a delta too)",
              "each node, once:",
              f"  bundler mirrors config docker --site {registry} --write    (then restart docker)",
              f"  bundler mirrors config containerd --site {registry} --write",
              f"  bundler mirrors config pip --site {index} --write",
              f"  bundler mirrors config hf --site {index} --write"]
    lines += [f"  bundler restore oci://{host}:{options.registry_port}/{REPOSITORY}:{b.tag}{plain}    (the whole "
              "bundle, on one node)" for b in site.bundles[:1]]
    lines.append("serving; Ctrl-C or SIGTERM stops it")
    return lines


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return value


def add_serve(command: Subcommand) -> None:
    p = command.parser(cmd_serve,
                       "Serve bundles to every node of a site that has no registry: a real CNCF distribution "
                       "registry (the registry or docker-registry program installed here, else the registry:2 "
                       "image through docker or containerd, which a bundle can carry) with its storage under DIR, "
                       "read-only to clients, holding each bundle as `bundler push` puts it there (verified first: a "
                       "damaged bundle is refused, exit 3, and nothing is served); and on the index port a PEP 503 "
                       "index of every wheel and a Hugging Face endpoint of every model, their bytes the "
                       "registry's one copy. Runs in the foreground, logging each request; Ctrl-C or SIGTERM stops "
                       "everything it started. Run again on the same DIR, it serves at once without pushing "
                       "again; add a bundle (a delta) to a running site with `bundler push` to its push address.")
    p.add_argument("bundles", type=bundle_path, nargs="*", metavar="BUNDLE",
                   help="bundles to serve (any of a split bundle's volumes); none: what DIR holds already (a "
                        "restart), or nothing yet, for `bundler push` to add")
    p.add_argument("--root", type=Path, required=True, metavar="DIR",
                   help="the site's folder: the registry's storage, its configuration, what serve remembers")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR",
                   help=f"the address nodes reach the site at (default {DEFAULT_LISTEN}; 0.0.0.0 for a real site)")
    p.add_argument("--registry-port", type=port, default=REGISTRY_PORT, metavar="N",
                   help=f"the registry's port (default {REGISTRY_PORT})")
    p.add_argument("--index-port", type=port, default=INDEX_PORT, metavar="N",
                   help=f"the PEP 503 index and Hugging Face endpoint's port (default {INDEX_PORT})")
    p.add_argument("--push-port", type=port, default=PUSH_PORT, metavar="N",
                   help=f"the port on 127.0.0.1 that takes pushes (default {PUSH_PORT})")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="the site's certificate (PEM), for HTTPS")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    add_trust_option(p)
