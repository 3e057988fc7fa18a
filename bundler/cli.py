"""The command line: parse arguments, call one verb, render its result; nothing else.

Every ``BundlerError`` becomes one line on stderr and its exit code (1 operational, 2 bad input,
3 integrity); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
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
    add_only_flags,
    bundle_path,
    context_for,
    existing_file,
    interrupted_status,
    kinds_for,
    limit_malloc_arenas,
    platform_arg,
    positive,
    profile_arg,
    progress_for,
    run_context,
    say,
    signals_interrupt,
    size_arg,
)
from bundler.cli_trust import add_sbom_parser, add_sign_option, add_trust_option, signing_key, trust_for
from bundler.errors import BundlerError, InputError, OperationalError
from bundler.files import human_size
from bundler.parallel import Stopped

if TYPE_CHECKING:
    from bundler.mirrors import RetryPolicy

DEFAULT_RESTORER_PLATFORM = "linux/amd64"
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
        progress_for(args).note(f"locked {len(result.images)} images, {len(result.pins())} requirements and "
                                f"{len(result.models)} models into {args.output}")
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
                           force=args.force, exact_images=args.exact_images, restorer=not args.no_restorer,
                           since=tuple(args.since or ()), sign=signing_key(args))
    ctx = context_for(args, profile)
    if args.fastest:
        _fastest_first(ctx, profile)
    if args.dry_run:
        return _dry_run(args, profile, ctx, options)
    result = build(profile, ctx, options)
    from bundler.cli_build import build_line, build_summary
    seconds = time.monotonic() - started
    if args.json:
        say(json.dumps(build_summary(result, seconds), indent=2))
        return EXIT_OK
    say(build_line(result, seconds))
    if result.restorer is not None:
        say(_wrote_restorer(result.restorer, result.head.restorer, f" restore {output.name}"))
    return EXIT_OK


def _dry_run(args: argparse.Namespace, profile, ctx, options) -> int:  # noqa: ANN001
    from bundler.bundle import plan
    from bundler.cli_build import plan_summary, render_plan
    from bundler.plan import check_free_space
    planned = plan(profile, ctx, options)
    cache_root = ctx.cache.root
    if args.json:
        say(json.dumps(plan_summary(planned, options.output, cache_root), indent=2))
    else:
        for line in render_plan(planned, options.output, cache_root):
            say(line)
    check_free_space(planned, options.output.parent, cache_root)   # exit 1 when the build would not fit
    return EXIT_OK


def _wrote_restorer(path: Path, entry, usage: str) -> str:  # noqa: ANN001 - a format.RestorerEntry
    return (f"wrote {path}: the restorer ({human_size(entry.size)}, CPython {', '.join(entry.pythons)} on "
            f"{', '.join(entry.runs_on)}): python3 {path.name}{usage}")


def cmd_restorer(args: argparse.Namespace) -> int:
    from bundler.restorer import DEFAULT_PYTHONS, check_pythons, write_restorer
    pythons = check_pythons(args.python) if args.python else DEFAULT_PYTHONS
    platforms = tuple(args.platform or (DEFAULT_RESTORER_PLATFORM,))
    made = write_restorer(args.output, platforms, pythons, context_for(args, None), force=args.force)
    if not getattr(args, "quiet", False):
        say(_wrote_restorer(args.output, made.entry(), " --help"))
    return EXIT_OK


def _fastest_first(ctx, profile) -> None:  # noqa: ANN001
    from bundler.cli_mirrors import latency_text
    from bundler.mirrorcheck import fastest_first
    ctx.mirrors, report = fastest_first(ctx.mirrors, profile)
    latency = report.latencies()
    for upstream in report.upstreams:
        order = ctx.mirrors.for_upstream(upstream.name)
        timed = [f"{e} ({latency_text(latency.get((upstream.name, e)), 'no answer')})" for e in order]
        ctx.progress.note(f"fastest first: {upstream.name}: {', '.join(timed)}")


def cmd_inspect(args: argparse.Namespace) -> int:
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
    from bundler.cli_delta import delta_lines
    lines += delta_lines(head)
    if profile.check:
        lines += _labelled("check     ", profile.check)
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


def _labelled(label: str, text: str) -> list[str]:
    """A label and a text that may span lines (a check script), its later lines aligned under the first."""
    first, *rest = text.strip("\n").splitlines() or [""]
    return [label + first] + [" " * len(label) + line for line in rest]


def cmd_verify(args: argparse.Namespace) -> int:
    from bundler.inspection import verify
    result = verify(args.bundle, progress_for(args), trust_for(args))
    if not getattr(args, "quiet", False):
        say(f"{args.bundle}: {result.signature.describe()}")
    say(f"{args.bundle}: all {result.members} members match bundle.json ({human_size(result.bytes)})"
        + (f"; so does the restorer {result.restorer.name}" if result.restorer else ""))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    from bundler.cli_build import restore_line, restore_summary
    from bundler.restore import RestoreOptions, restore
    if args.images_only and (args.venv or args.python or args.index_dir or args.check):
        raise _usage("restore: --images-only takes no --venv, --python, --index-dir or --check")
    if sum(map(bool, (args.registry, args.containerd))) > 1:
        raise _usage("restore: choose one of --registry and --containerd")
    if args.models_dir and (args.hf_home or args.modelscope_cache):
        raise _usage("restore: --models-dir takes the place of --hf-home and --modelscope-cache")
    # --index-dir alone writes an index for other machines; a venv-only flag asks for the venv as well
    make_venv = not args.index_dir or bool(args.venv or args.python or args.check or args.compile)
    options = RestoreOptions(dest=args.dest, venv=args.venv, python=args.python, registry=args.registry,
                             insecure=args.insecure, containerd=args.containerd, containerd_address=args.address,
                             namespace=args.namespace, index_dir=args.index_dir, make_venv=make_venv,
                             check=args.check, compile=args.compile, kinds=kinds_for(args), platform=args.platform,
                             hf_home=args.hf_home, modelscope_cache=args.modelscope_cache, models_dir=args.models_dir,
                             bases=tuple(args.base or ()), trust=trust_for(args))
    started = time.monotonic()
    report = restore(args.bundle, options, run_context(args))
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
    from bundler.cli_completion import profile_names
    p.add_argument("profile", metavar="PROFILE", type=profile_arg,
                   help="a profile file, or the name of a built-in profile").completer = profile_names
    p.add_argument("-o", "--output", type=Path, metavar=metavar, help=help_text)


AIR_GAPPED = ("inspect", "verify", "restore", "sbom")   # the commands of the one-file restorer (restorer_entry.py)


def build_parser(air_gapped: bool = False) -> argparse.ArgumentParser:
    """Every command; with ``air_gapped``, the restorer's only (the others' modules are not in it)."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress and no notes: the final summary and errors only")

    parser = Parser(
        prog="bundler", parents=[common],
        description="Carry deep-learning environments across an air gap: build one verified bundle of "
                    "container images and Python wheels on a connected machine, restore it with no network.",
        epilog="Exit codes: 0 success, 1 operational failure (network, docker, disk), 2 bad input "
               "(profile, mirrors file, arguments), 3 integrity failure (a digest does not match).")
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, func: Callable[[argparse.Namespace], int], **texts: str) -> argparse.ArgumentParser:
        if air_gapped and name not in AIR_GAPPED:
            return Parser(add_help=False)    # a command the restorer lacks: its options go nowhere
        made = sub.add_parser(name, parents=[common], **texts)
        made.set_defaults(func=func)
        return made

    p = command("profiles", cmd_profiles, help="list the built-in profiles, or show one",
                description="List the built-in profiles, or print one (bundler profiles show NAME).")
    p.add_argument("action", nargs="?", choices=["show"], help="show: print a profile's YAML")
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile file")

    p = command("lock", cmd_lock, help="pin images to digests, requirements to hashes, models to files",
                description="Resolve the profile's image tags to manifest digests for its platform, its "
                            "requirements to exact versions with sha256 hashes, for its target (not this "
                            "machine), and its models to a commit and every file's sha256 (small files are "
                            "fetched to be hashed; large ones are not downloaded). `bundler build --lock FILE` "
                            "then fetches exactly that.")
    _profile_and_output(p, "FILE", "write the lock here (default: stdout)")
    add_fetch_options(p, downloads=False)

    p = command("build", cmd_build, help="fetch a profile's images, wheels and models into one bundle",
                description="Fetch the profile's images (through registry mirrors, no docker engine needed), "
                            "wheels (for its target, through PyPI mirrors) and models (Hugging Face and "
                            "ModelScope repositories, through their mirrors), check every digest, and "
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
    p.add_argument("--exact-images", action="store_true",
                   help="carry each image byte for byte as its registry serves it (compressed layers, its own "
                        "manifest), so that restore --registry serves the upstream digests; a profile's per-image "
                        "exact: key wins (see README: Exact images)")
    p.add_argument("--fastest", action="store_true",
                   help="probe the mirrors first and try them fastest first (those that do not answer last)")
    p.add_argument("--dry-run", action="store_true",
                   help="pin, then show what would be fetched (each layer and wheel, its size, its endpoint), "
                        "what the cache has, and the bundle's expected size; download no payload and write "
                        "nothing (exit 1 when the disk would not hold the build)")
    p.add_argument("--json", action="store_true", help="print the result (or the --dry-run plan) as JSON")
    p.add_argument("--no-restorer", action="store_true",
                   help="do not write OUT.pyz, the one-file restorer that runs restore with only a CPython")
    p.add_argument("--since", type=existing_file, action="append", metavar="BASE",
                   help="write a delta: carry only what BASE lacks, BASE being a site inventory (bundler "
                        "inventory) or an earlier bundle (only its head is read; its first volume will do); may "
                        "be given more than once (see README: Update bundles)")
    add_sign_option(p)
    add_fetch_options(p)

    p = command("restorer", cmd_restorer, help="make the one-file restorer on its own",
                description="Write the one-file restorer that `bundler build` puts beside every bundle: "
                            "`python3 FILE restore BUNDLE` (also inspect, verify) on a machine with a CPython and "
                            "nothing else. Its wheels come through the PyPI mirrors and the cache, like a "
                            "bundle's.")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", required=True, help="the file to write (FILE.pyz)")
    p.add_argument("--platform", action="append", metavar="OS/ARCH",
                   help=f"a machine it runs on; repeat for more, one file serves them all (default "
                        f"{DEFAULT_RESTORER_PLATFORM})")
    p.add_argument("--python", action="append", metavar="3.N",
                   help="a CPython it runs on; repeat for more (default: 3.9 to 3.13)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    add_fetch_options(p, kinds=False)

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

    p = command("restore", cmd_restore, help="load a bundle's images, install its wheels, place its models, offline",
                description="Restore a bundle with no network: load its images into the local docker engine "
                            "(DOCKER_HOST honoured), or push them to a registry, or import them into "
                            "containerd; create a venv with its wheels installed by pip with "
                            "--no-index --require-hashes; and lay its models out in the Hugging Face and "
                            "ModelScope caches (or plain folders). Every member is checked against bundle.json first: "
                            "a damaged bundle loads no image and installs no wheel (exit 3). Running it "
                            "again is safe, and fast when everything is already there.")
    p.add_argument("bundle", type=bundle_path, metavar="BUNDLE", help="the bundle (or any of its volumes)")
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

    add_sbom_parser(command)
    if not air_gapped:
        from bundler.cli_mirrors import add_mirrors_parser
        add_mirrors_parser(sub, common)
        from bundler.cli_cache import add_cache_parser
        add_cache_parser(sub, common)
        from bundler.cli_diff import add_diff_parser
        add_diff_parser(sub, common)
        from bundler.cli_completion import add_completion_parser
        add_completion_parser(sub, common)
    from bundler.cli_delta import add_inventory_parser
    add_inventory_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, policy: RetryPolicy | None = None, air_gapped: bool = False) -> int:
    """The command line. ``policy`` replaces the default retry policy and time limits (tests pass a
    fast one); ``air_gapped`` offers only what the one-file restorer runs."""
    limit_malloc_arenas()
    parser = build_parser(air_gapped)
    from bundler.cli_completion import complete
    complete(parser)
    args = parser.parse_args(argv)
    args.policy = policy
    debug = getattr(args, "debug", False)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        with signals_interrupt():
            return func(args)
    except BundlerError as exc:
        if debug:
            traceback.print_exc()
        print(f"bundler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Stopped) as exc:
        if debug:
            traceback.print_exc()
        line, status = interrupted_status(exc)
        print(f"bundler: {line}", file=sys.stderr)
        return status
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
