"""The command line: parse arguments, call one verb, render its result; nothing else.

Every ``BundlerError`` becomes one line on stderr and its exit code (1 operational, 2 bad input,
3 integrity); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bundler import __version__
from bundler.cli_common import (
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_OK,
    Parser,
    add_fetch_options,
    bundle_path,
    context_for,
    existing_file,
    kinds_for,
    limit_malloc_arenas,
    positive,
    profile_arg,
    progress_for,
    run_context,
    say,
    size_arg,
)
from bundler.cli_trust import add_sbom_parser, add_sign_option, add_trust_option, signing_key, trust_for
from bundler.errors import BundlerError, InputError, OperationalError
from bundler.files import human_size
from bundler.parallel import Stopped

if TYPE_CHECKING:
    from bundler.mirrors import RetryPolicy

_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.ELOOP}


def cmd_profiles(args: argparse.Namespace) -> int:
    from bundler.profile import builtin_lock, builtin_profiles, load_profile
    if args.action == "show":
        if not args.name:
            raise _usage("profiles show: name a profile (bundler profiles lists them)")
        profile = load_profile(args.name)
        say(f"# {profile.path}")
        lock = builtin_lock(profile)
        if lock is not None:
            say(f"# lock: {lock} (bundler build {profile.name} fetches what it pins)")
        say(profile.source_text.rstrip("\n"))
        return EXIT_OK
    if args.action is not None:
        raise _usage(f"profiles: unknown action {args.action!r} (use: bundler profiles [show NAME])")
    profiles = builtin_profiles()
    width = max((len(p.name) for p in profiles), default=0)
    for profile in profiles:
        say(f"{profile.name:<{width}}  {profile.description}")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    from bundler.lockfile import dump_lock, lock, write_lock
    from bundler.profile import load_profile
    profile = load_profile(args.profile)
    result = lock(profile, context_for(args, profile), kinds_for(args))
    if args.output is None:
        sys.stdout.write(dump_lock(result))
    else:
        write_lock(result, args.output)
        progress_for(args).note(f"locked {len(result.images)} images and {len(result.pins())} requirements "
                                f"into {args.output}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from bundler.bundle import BuildOptions, build
    from bundler.pack import DEFAULT_LEVEL
    from bundler.profile import builtin_lock, load_profile
    started = time.monotonic()
    profile = load_profile(args.profile)
    output = args.output or Path(f"{profile.name}.tar.zst")
    lock_file = args.lock
    if lock_file is None and not args.resolve:
        lock_file = builtin_lock(profile)
        if lock_file is not None:
            progress_for(args).note(f"using {lock_file}, the lock shipped with the built-in profile {profile.name} "
                                    "(--resolve resolves afresh)")
    options = BuildOptions(output, lock_file, args.level or DEFAULT_LEVEL, args.split, kinds_for(args),
                           force=args.force, sign=signing_key(args))
    ctx = context_for(args, profile)
    if args.fastest:
        _fastest_first(ctx, profile)
    result = build(profile, ctx, options)
    head = result.head
    if not getattr(args, "quiet", False):
        what = f"{len(head.images)} images, {len(head.wheels)} wheels"
        where = result.paths[0] if len(result.paths) == 1 else f"{len(result.paths)} volumes {result.paths[0]} .. " \
                                                                  f"{result.paths[-1].name}"
        say(f"wrote {where}: {human_size(result.size)} ({what}; {human_size(head.member_bytes)} "
            f"before compression) in {time.monotonic() - started:.1f} s (fetching {result.fetch_seconds:.1f} s, "
            f"packing {result.pack_seconds:.1f} s)")
    return EXIT_OK


def _fastest_first(ctx, profile) -> None:  # noqa: ANN001
    from bundler.cli_mirrors import latency_text
    from bundler.mirrorcheck import fastest_first
    ctx.mirrors, report = fastest_first(ctx.mirrors, profile)
    latency = report.latencies()
    for upstream in report.upstreams:
        order = ctx.mirrors.for_pypi() if upstream.is_index else ctx.mirrors.for_registry(upstream.name)
        timed = [f"{e} ({latency_text(latency.get((upstream.name, e)), 'no answer')})" for e in order]
        ctx.progress.note(f"fastest first: {upstream.name}: {', '.join(timed)}")


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from bundler.inspection import inspect
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


def render_inspect(found) -> list[str]:  # noqa: ANN001 - an inspection.Inspection
    import datetime

    from bundler.format import NO_DATE, SBOM
    head, volumes = found.head, found.volumes
    profile, target = head.profile, head.target
    created = datetime.datetime.fromtimestamp(head.created, datetime.timezone.utc)
    dated = "no date (its pins carry none)" if head.created == NO_DATE else f"{created:%Y-%m-%d %H:%M:%S} UTC"
    lines = [f"bundle    {volumes[0]} ({human_size(found.size)}" + (f", {len(volumes)} volumes" if len(volumes) > 1
                                                                   else "") + ")",
             f"profile   {profile.name}" + (f": {profile.description}" if profile.description else ""),
             f"target    {target.platform}" + (f", CPython {target.python}" if target.python else ""),
             f"created   {dated}   by {head.tool}, format {head.format}"]
    lines.append(f"images    {len(head.images)}, {human_size(head.image_bytes)} of layers "
                 f"({head.unique_layers} unique)")
    for image in head.images:
        tag = ", ".join(image.tags) or image.ref
        lines.append(f"  {tag}  {image.digest[:19]}..  {image.platform}  {human_size(image.size)}  "
                     f"{image.layer_count} layers" + ("  (from the local docker engine)" if image.source == "docker"
                                                      else ""))
    lines.append(f"wheels    {len(head.wheels)}, {human_size(head.wheel_bytes)}")
    for wheel in head.wheels:
        lines.append(f"  {wheel.name} {wheel.version}  {wheel.filename}  {human_size(wheel.size)}"
                     + ("  (built from sdist)" if wheel.built else ""))
    if profile.check:
        lines += _labelled("check     ", profile.check)
    lines.append(f"members   {len(head.members)}, {human_size(head.member_bytes)} uncompressed")
    sbom = head.member(SBOM)
    if sbom is not None:
        lines.append(f"sbom      {SBOM}, {human_size(sbom.size)} (bundler sbom BUNDLE writes it out)")
    signer = found.signature.signer
    lines.append(f"signed    by {signer.describe()}; the signature matches bundle.json" if signer else
                 "signed    no")
    return lines


def _labelled(label: str, text: str) -> list[str]:
    """A label and a text that may span lines (a check script), its later lines aligned under the first."""
    first, *rest = text.strip("\n").splitlines() or [""]
    return [label + first] + [" " * len(label) + line for line in rest]


def cmd_verify(args: argparse.Namespace) -> int:
    from bundler.inspection import verify
    result = verify(args.bundle, progress_for(args), trust_for(args))
    if not getattr(args, "quiet", False):
        say(f"{args.bundle}: {result.signature.describe()}")
        say(f"{args.bundle}: all {result.members} members match bundle.json ({human_size(result.bytes)})")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from bundler.restore import RestoreOptions, restore
    if args.images_only and (args.venv or args.python or args.index_dir or args.check):
        raise _usage("restore: --images-only takes no --venv, --python, --index-dir or --check")
    if sum(map(bool, (args.registry, args.containerd))) > 1:
        raise _usage("restore: choose one of --registry and --containerd")
    options = RestoreOptions(dest=args.dest, venv=args.venv, python=args.python, registry=args.registry,
                             insecure=args.insecure, containerd=args.containerd, containerd_address=args.address,
                             namespace=args.namespace, index_dir=args.index_dir, check=args.check,
                             compile=args.compile, kinds=kinds_for(args), trust=trust_for(args))
    report = restore(args.bundle, options, run_context(args))
    quiet = getattr(args, "quiet", False)
    if not quiet:
        for note in report.notes:
            say(note)
    if report.check is not None:
        command, code, output = report.check
        for line in _labelled("check: ", command):
            say(line)
        for line in output.splitlines():
            say(f"  {line}")
        if code != 0:
            raise OperationalError(f"the profile's check exited with {code} in {report.venv}")
        say("check passed")
    return EXIT_OK


def _usage(message: str) -> BundlerError:
    return InputError(message)


def _profile_and_output(p: argparse.ArgumentParser, metavar: str, help_text: str) -> None:
    p.add_argument("profile", metavar="PROFILE", type=profile_arg,
                   help="a profile file, or the name of a built-in profile")
    p.add_argument("-o", "--output", type=Path, metavar=metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no notes, errors only")

    parser = Parser(
        prog="bundler", parents=[common],
        description="Carry deep-learning environments across an air gap: build one verified bundle of "
                    "container images and Python wheels on a connected machine, restore it with no network.",
        epilog="Exit codes: 0 success, 1 operational failure (network, docker, disk), 2 bad input "
               "(profile, mirrors file, arguments), 3 integrity failure (a digest does not match).")
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, func: Callable[[argparse.Namespace], int], **texts: str) -> argparse.ArgumentParser:
        made = sub.add_parser(name, parents=[common], **texts)
        made.set_defaults(func=func)
        return made

    p = command("profiles", cmd_profiles, help="list the built-in profiles, or show one",
                description="List the built-in profiles, or print one (bundler profiles show NAME).")
    p.add_argument("action", nargs="?", choices=["show"], help="show: print a profile's YAML")
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile file")

    p = command("lock", cmd_lock, help="pin images to digests and requirements to hashes",
                description="Resolve the profile's image tags to manifest digests for its platform and its "
                            "requirements to exact versions with sha256 hashes, for its target (not this "
                            "machine), without downloading payloads. `bundler build --lock FILE` then "
                            "fetches exactly that.")
    _profile_and_output(p, "FILE", "write the lock here (default: stdout)")
    add_fetch_options(p)

    p = command("build", cmd_build, help="fetch a profile's images and wheels into one bundle",
                description="Fetch the profile's images (through registry mirrors, no docker engine needed) "
                            "and wheels (for its target, through PyPI mirrors), check every digest, and "
                            "write one zstd-compressed bundle. The output appears only when complete.")
    _profile_and_output(p, "OUT", "the bundle to write (default: NAME.tar.zst)")
    pinning = p.add_mutually_exclusive_group()
    pinning.add_argument("--lock", type=existing_file, metavar="FILE",
                         help="fetch exactly what this lock (from `bundler lock`) pins, instead of resolving "
                              "(default for a built-in profile: the lock shipped with it)")
    pinning.add_argument("--resolve", action="store_true",
                         help="resolve the profile afresh even when it is a built-in profile with a shipped lock")
    p.add_argument("--split", type=size_arg, metavar="SIZE",
                   help="cut into volumes OUT.001, OUT.002, ... of at most SIZE (4G, 700M, bytes, or fat32), "
                        "with OUT.sha256 listing them")
    p.add_argument("--level", type=positive, default=None, metavar="N",
                   help="zstd level, 1-22 (default 3; 9 for a bundle about 6%% smaller at 3 times the CPU; "
                        "see BENCHMARKS.md)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at OUT")
    p.add_argument("--fastest", action="store_true",
                   help="probe the mirrors first and try them fastest first (those that do not answer last)")
    add_sign_option(p)
    add_fetch_options(p)

    p = command("inspect", cmd_inspect, help="show what a bundle holds (reads only its head)",
                description="Show a bundle's profile, target, images and wheels. Reads only bundle.json at "
                            "the head of the file, so it answers at once however large the bundle is; works "
                            "on the first volume of a split bundle.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or its first volume)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("verify", cmd_verify, help="re-hash every member of a bundle",
                description="Decompress the bundle and check every member's size and sha256 against "
                            "bundle.json (and every volume against OUT.sha256). Exit 0 only if all match; "
                            "exit 3 naming the first member or volume that does not.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or any of its volumes)")
    add_trust_option(p)

    p = command("restore", cmd_restore, help="load a bundle's images and install its wheels, offline",
                description="Restore a bundle with no network: load its images into the local docker engine "
                            "(DOCKER_HOST honoured), or push them to a registry, or import them into "
                            "containerd; and create a venv with its wheels installed by pip with "
                            "--no-index --require-hashes. Every member is checked against bundle.json first: "
                            "a damaged bundle loads no image and installs no wheel (exit 3). Running it "
                            "again is safe, and fast when everything is already there.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or any of its volumes)")
    p.add_argument("--dest", type=Path, metavar="DIR", help="where wheels, requirements.lock and the venv go "
                                                             "(default: ./PROFILE-NAME)")
    p.add_argument("--venv", type=Path, metavar="DIR", help="the venv to create or reuse (default: DEST/venv)")
    p.add_argument("--python", metavar="EXE", help="the interpreter for the venv (default: the first python3.X on "
                                                   "PATH of the bundle's target version)")
    p.add_argument("--registry", metavar="HOST[:PORT]", help="push the images to this registry (Harbor, "
                                                             "distribution) instead of loading them into docker")
    p.add_argument("--insecure", action="store_true", help="talk plain HTTP to --registry (loopback always may)")
    p.add_argument("--containerd", action="store_true", help="import the images into containerd (ctr) instead")
    p.add_argument("--namespace", default="k8s.io", help="containerd namespace (default k8s.io, the one "
                                                         "Kubernetes uses)")
    p.add_argument("--address", metavar="SOCKET", help="containerd socket (default /run/containerd/containerd.sock)")
    p.add_argument("--index-dir", type=Path, metavar="DIR",
                   help="also write the wheels as a PEP 503 simple index any static web server can serve")
    p.add_argument("--check", action="store_true", help="run the profile's check in the venv and print it")
    p.add_argument("--compile", action="store_true", help="byte-compile every installed module now (slower; by "
                                                          "default Python compiles what is imported, on first use)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--images-only", action="store_true", help="only the images")
    only.add_argument("--wheels-only", action="store_true", help="only the wheels (no docker engine needed)")
    add_trust_option(p)

    add_sbom_parser(command)
    from bundler.cli_mirrors import add_mirrors_parser
    add_mirrors_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, policy: RetryPolicy | None = None) -> int:
    """The command line. ``policy`` replaces the default retry policy and time limits (tests pass a
    fast one)."""
    limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.policy = policy
    debug = getattr(args, "debug", False)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        return func(args)
    except BundlerError as exc:
        if debug:
            traceback.print_exc()
        print(f"bundler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Stopped):
        print("bundler: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as exc:
        # A path the system will not take (too long, not a folder...) named on the command line or
        # in a profile: bad input when the path itself is the problem, else the disk's failure.
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bundler: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT if exc.errno in _PATH_ERRNOS else EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes a message
        if debug:
            traceback.print_exc()
        print(f"bundler: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
