"""``bundler restore``: its options, grouped by where each payload goes, and what it prints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundler.cli.common import (
    EXIT_OK,
    Subcommand,
    add_only_flags,
    bundle_path,
    kinds_for,
    labelled,
    platform_arg,
    run_context,
    say,
    usage_error,
)
from bundler.cli.trust import add_trust_option, trust_for
from bundler.errors import OperationalError
from bundler.restore.oci import is_oci, open_registry_bundle
from bundler.restore.options import RestoreOptions, RestoreReport
from bundler.restore.verb import restore


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    if args.images_only and (args.venv or args.python or args.index_dir or args.check):
        raise usage_error("restore: --images-only takes no --venv, --python, --index-dir or --check")
    if sum(map(bool, (args.registry, args.containerd))) > 1:
        raise usage_error("restore: choose one of --registry and --containerd")
    if args.models_dir and (args.hf_home or args.modelscope_cache):
        raise usage_error("restore: --models-dir takes the place of --hf-home and --modelscope-cache")
    # --index-dir alone writes an index for other machines; a venv-only flag asks for the venv as well
    make_venv = not args.index_dir or bool(args.venv or args.python or args.check or args.compile)
    options = RestoreOptions(dest=args.dest, venv=args.venv, python=args.python, registry=args.registry,
                             insecure=args.insecure, containerd=args.containerd, containerd_address=args.address,
                             namespace=args.namespace, index_dir=args.index_dir, make_venv=make_venv,
                             check=args.check, compile=args.compile, kinds=kinds_for(args), platform=args.platform,
                             hf_home=args.hf_home, modelscope_cache=args.modelscope_cache, models_dir=args.models_dir,
                             bases=tuple(args.base or ()), trust=trust_for(args))
    started = time.monotonic()
    ctx = run_context(args)
    bundle = open_registry_bundle(args.bundle, plain_http=args.plain_http, ctx=ctx) if is_oci(args.bundle) \
        else Path(args.bundle)
    report = restore(bundle, options, ctx)
    if args.json:
        say(json.dumps(restore_summary(args.bundle, report, time.monotonic() - started), indent=2))
        if report.check is not None and report.check[1] != 0:
            raise OperationalError(f"the profile's check exited with {report.check[1]} in {report.venv}")
        return EXIT_OK
    if not getattr(args, "quiet", False):
        for note in report.notes:
            say(note)
    say(restore_line(args.bundle, report, time.monotonic() - started))
    if report.check is not None:
        command, code, output = report.check
        for line in labelled("check: ", command):
            say(line)
        for line in output.splitlines():
            say(f"  {line}")
        if code != 0:
            raise OperationalError(f"the profile's check exited with {code} in {report.venv}")
        say("check passed")
    return EXIT_OK


def restore_summary(bundle: Path, report: RestoreReport, seconds: float) -> dict:
    check = None
    if report.check is not None:
        command, code, output = report.check
        check = {"command": command, "exit": code, "output": output}
    return {"bundle": str(bundle), "notes": list(report.notes), "venv": str(report.venv) if report.venv else None,
            "check": check, "seconds": round(seconds, 3)}


def restore_line(bundle: Path, report: RestoreReport, seconds: float) -> str:
    return f"restored {bundle} in {seconds:.1f} s" + (f" (venv {report.venv})" if report.venv else "")


def bundle_or_oci(text: str) -> str:
    """A bundle's path, or a bundle pushed to a registry (oci://...)."""
    return text if is_oci(text) else str(bundle_path(text))


def add_restore(command: Subcommand) -> None:
    p = command.parser(cmd_restore,
                       "Restore a bundle with no network: load its images into the local docker engine "
                       "(DOCKER_HOST honoured), or push them to a registry, or import them into "
                       "containerd; create a venv with its wheels installed by pip with "
                       "--no-index --require-hashes; and lay its models out in the Hugging Face and "
                       "ModelScope caches (or plain folders). Every member is checked against bundle.json first: "
                       "a damaged bundle loads no image and installs no wheel (exit 3). Running it "
                       "again is safe, and fast when everything is already there.")
    p.add_argument("bundle", type=bundle_or_oci, metavar="BUNDLE",
                   help="the bundle (or any of its volumes), or one pushed to a registry: "
                        "oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST] (see bundler push)")
    p.add_argument("--plain-http", action="store_true",
                   help="with oci://: the registry speaks HTTP, not HTTPS")
    p.add_argument("--platform", type=platform_arg, metavar="OS/ARCH",
                   help="the platform restored here (default: this machine's): of a bundle for several, the one "
                        "loaded into docker or containerd and installed in the venv; a bundle for another one is "
                        "refused unless --platform names it (--registry and --index-dir alone take any)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (notes, venv, the check)")
    images = p.add_argument_group("where the images go (default: the local docker engine)")
    images.add_argument("--registry", metavar="HOST[:PORT]", help="push the images to this registry (Harbor, "
                                                                  "distribution) instead of loading them into docker")
    images.add_argument("--insecure", action="store_true", help="talk plain HTTP to --registry (loopback always may)")
    images.add_argument("--containerd", action="store_true", help="import the images into containerd (ctr) instead")
    images.add_argument("--namespace", default="k8s.io",
                        help="containerd namespace (default k8s.io, the one Kubernetes uses)")
    images.add_argument("--address", metavar="SOCKET",
                        help="containerd socket (default /run/containerd/containerd.sock)")
    wheels = p.add_argument_group("where the wheels go")
    wheels.add_argument("--dest", type=Path, metavar="DIR",
                        help="where wheels, requirements.lock and the venv go (default: ./PROFILE-NAME)")
    wheels.add_argument("--venv", type=Path, metavar="DIR", help="the venv to create or reuse (default: DEST/venv)")
    wheels.add_argument("--python", metavar="EXE", help="the interpreter for the venv (default: the first "
                                                        "python3.X on PATH of the bundle's target version)")
    wheels.add_argument("--check", action="store_true", help="run the profile's check in the venv and print it")
    wheels.add_argument("--compile", action="store_true", help="byte-compile every installed module now (slower; "
                                                               "by default Python compiles what is imported, on "
                                                               "first use)")
    wheels.add_argument("--index-dir", type=Path, metavar="DIR",
                        help="write the wheels as a PEP 503 simple index any static web server can serve, for any "
                             "target; no venv is made unless --venv, --python, --check or --compile asks for one")
    models = p.add_argument_group("where the models go")
    models.add_argument("--hf-home", type=Path, metavar="DIR",
                        help="the HF_HOME to restore Hugging Face models into, as huggingface_hub lays out its "
                             "cache (default: DEST/huggingface); restore prints the environment line that uses it")
    models.add_argument("--modelscope-cache", type=Path, metavar="DIR",
                        help="the MODELSCOPE_CACHE to restore ModelScope models into (default: DEST/modelscope)")
    models.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="restore the models as plain folders DIR/ORG/NAME instead of into the hubs' caches")
    p.add_argument("--base", type=bundle_path, action="append", metavar="OLD_BUNDLE",
                   help="for a delta: an earlier bundle to take what the site lacks from (the destination itself "
                        "is looked at first); may be given more than once")
    add_only_flags(p, {"images": "only the images", "wheels": "only the wheels (no docker engine needed)",
                       "models": "only the models (no docker engine, no venv)"})
    add_trust_option(p)
