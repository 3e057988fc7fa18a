"""The connected side's commands: ``profiles``, ``lock``, ``build`` (and its ``--dry-run`` plan),
``restorer``; their options, and what they print (for people, or as JSON with ``--json``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bundler.build.context import DEFAULT_JOBS, BuildContext
from bundler.build.lockfile import dump_lock, write_lock
from bundler.build.mirrorcheck import fastest_first
from bundler.build.options import BuildOptions, BuildResult
from bundler.build.pack import DEFAULT_LEVEL, parse_size
from bundler.build.plan import BuildPlan, check_free_space
from bundler.build.profile import Profile, builtin_lock, builtin_profiles, load_profile
from bundler.build.restorer import DEFAULT_PYTHONS, check_pythons, write_restorer
from bundler.build.signing import SigningKey, key_needs_passphrase, load_signing_key
from bundler.build.verb import build, lock, plan
from bundler.cli.common import (
    EXIT_OK,
    Subcommand,
    add_only_flags,
    existing_file,
    kinds_for,
    policy_for,
    positive,
    profile_arg,
    progress_for,
    say,
    usage_error,
)
from bundler.cli.completion import profile_names
from bundler.cli.mirrors import latency_text
from bundler.errors import BundlerError
from bundler.files import free_space, human_size


def _size(size: int | None) -> str:
    return human_size(size) if size is not None else "size unknown"


def render_plan(planned: BuildPlan, output: Path, cache_root: Path) -> list[str]:
    """``build --dry-run``: each kind's pieces to fetch (with their size and endpoint), what the cache
    has, and the bundle and cache space it comes to."""
    lines = [f"dry run: nothing was downloaded; bundler build would fetch {human_size(planned.fetch_bytes)}"
             + (f" and {planned.unknown} files of unknown size" if planned.unknown else "")]
    for fetch in planned.fetches:
        cached = [p for p in fetch.pieces if p.cached]
        held = [p for p in fetch.pieces if p.held]
        lines.append(f"{fetch.kind:<9} {len(fetch.pieces)}: {len(cached)} in the cache "
                     f"({human_size(fetch.cached_bytes)}), {len(fetch.to_fetch)} to fetch "
                     f"({human_size(fetch.fetch_bytes)})"
                     + (f"; {len(held)} the site holds ({human_size(fetch.held_bytes)}), not carried" if held else ""))
        lines += [f"  fetch   {piece.name}  {_size(piece.size)}  from {piece.source}"
                  + ("  (the site holds it: for the SBOM only)" if piece.held else "") for piece in fetch.to_fetch]
    delta = (f" (a delta: {human_size(planned.held_bytes)} the site holds left out; a rebuilt layer is counted "
             "whole, and may travel as a smaller patch)") if planned.delta else ""
    lines.append(f"bundle    about {human_size(planned.bundle_bytes)} at {output} "
                 f"({human_size(free_space(output.parent))} free there){delta}")
    lines.append(f"cache     about {human_size(planned.cache_bytes)} more in {cache_root} while fetching "
                 f"({human_size(free_space(cache_root))} free there)")
    return lines


def plan_summary(planned: BuildPlan, output: Path, cache_root: Path) -> dict:
    return {"dry_run": True, "output": str(output), "cache": str(cache_root), **planned.as_dict()}


def build_summary(result: BuildResult, seconds: float) -> dict:
    head = result.head
    return {"paths": [str(p) for p in result.paths], "size": result.size, "images": len(head.images),
            "wheels": len(head.wheels), "models": len(head.models), "member_bytes": head.member_bytes,
            "restorer": str(result.restorer) if result.restorer else None,
            "restorer_signature": str(result.restorer_signature) if result.restorer_signature else None,
            "seconds": round(seconds, 3),
            "fetch_seconds": round(result.fetch_seconds, 3), "pack_seconds": round(result.pack_seconds, 3),
            "fetched": {kind: {"wanted": s.wanted, "cached": s.cached, "downloaded": s.downloaded,
                               "bytes_downloaded": s.bytes_downloaded, "bytes_resumed": s.bytes_resumed,
                               "built": list(s.built)}
                        for kind, s in result.stats.items()}}


def build_line(result: BuildResult, seconds: float) -> str:
    head = result.head
    what = f"{len(head.images)} images, {len(head.wheels)} wheels" + (f", {len(head.models)} models"
                                                                     if head.models else "")
    where = result.paths[0] if len(result.paths) == 1 else f"{len(result.paths)} volumes {result.paths[0]} .. " \
                                                            f"{result.paths[-1].name}"
    return (f"wrote {where}: {human_size(result.size)} ({what}; {human_size(head.member_bytes)} before "
            f"compression) in {seconds:.1f} s (fetching {result.fetch_seconds:.1f} s, packing "
            f"{result.pack_seconds:.1f} s)")


DEFAULT_RESTORER_PLATFORM = "linux/amd64"


def cmd_profiles(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise usage_error("profiles show: name a profile (bundler profiles lists them)")
        profile = load_profile(args.name)
        say(f"# {profile.path}")
        lock = builtin_lock(profile)
        if lock is not None:
            say(f"# lock: {lock} (bundler build {profile.name} fetches what it pins)")
        say(profile.source_text.rstrip("\n"))
        return EXIT_OK
    if args.action is not None:
        raise usage_error(f"profiles: unknown action {args.action!r} (use: bundler profiles [show NAME])")
    profiles = builtin_profiles()
    width = max((len(p.name) for p in profiles), default=0)
    for profile in profiles:
        say(f"{profile.name:<{width}}  {profile.description}")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
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

    started = time.monotonic()
    profile = load_profile(args.profile)
    output = args.output or Path(f"{profile.name}.tar.zst")
    lock_file = args.lock
    if lock_file is None and not args.resolve:
        lock_file = builtin_lock(profile)
        if lock_file is not None:
            progress_for(args).note(f"using {lock_file}, the lock shipped with the built-in profile {profile.name} "
                                    "(--resolve resolves afresh)")
    options = BuildOptions(output=output, lock_file=lock_file, level=args.level or DEFAULT_LEVEL, split=args.split,
                           kinds=kinds_for(args), force=args.force, exact_images=args.exact_images,
                           restorer=not args.no_restorer, since=tuple(args.since or ()), sign=signing_key(args))
    ctx = context_for(args, profile)
    if args.fastest:
        _fastest_first(ctx, profile)
    if args.dry_run:
        return _dry_run(args, profile, ctx, options=options)
    result = build(profile, ctx, options)
    seconds = time.monotonic() - started
    if args.json:
        say(json.dumps(build_summary(result, seconds), indent=2))
        return EXIT_OK
    say(build_line(result, seconds))
    if result.restorer is not None:
        say(_wrote_restorer(result.restorer, result.head.restorer, f" restore {output.name}"))
    if result.restorer_signature is not None:
        say(f"wrote {result.restorer_signature}: the restorer's signature; a site checks it before running it: "
            f"ssh-keygen -Y verify -f allowed_signers -I SIGNER -n bundler -s {result.restorer_signature.name} "
            f"< {result.restorer.name}")
    return EXIT_OK


def _dry_run(args: argparse.Namespace, profile, ctx, *, options) -> int:  # noqa: ANN001
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
    pythons = check_pythons(args.python) if args.python else DEFAULT_PYTHONS
    platforms = tuple(args.platform or (DEFAULT_RESTORER_PLATFORM,))
    made = write_restorer(args.output, platforms, pythons, ctx=context_for(args, None), force=args.force)
    if not getattr(args, "quiet", False):
        say(_wrote_restorer(args.output, made.entry(), " --help"))
    return EXIT_OK


def _fastest_first(ctx, profile) -> None:  # noqa: ANN001
    ctx.mirrors, report = fastest_first(ctx.mirrors, profile)
    latency = report.latencies()
    for upstream in report.upstreams:
        order = ctx.mirrors.for_upstream(upstream.name)
        timed = [f"{e} ({latency_text(latency.get((upstream.name, e)), 'no answer')})" for e in order]
        ctx.progress.note(f"fastest first: {upstream.name}: {', '.join(timed)}")


def _profile_and_output(p: argparse.ArgumentParser, metavar: str, help_text: str) -> None:
    p.add_argument("profile", metavar="PROFILE", type=profile_arg,
                   help="a profile file, or the name of a built-in profile").completer = profile_names
    p.add_argument("-o", "--output", type=Path, metavar=metavar, help=help_text)


def add_profiles(command: Subcommand) -> None:
    p = command.parser(cmd_profiles,
                       "List the built-in profiles, or print one (bundler profiles show NAME).")
    p.add_argument("action", nargs="?", choices=["show"], help="show: print a profile's YAML")
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile file")


def add_lock(command: Subcommand) -> None:
    p = command.parser(cmd_lock,
                       "Resolve the profile's image tags to manifest digests for its platform, its "
                       "requirements to exact versions with sha256 hashes, for its target (not this "
                       "machine), and its models to a commit and every file's sha256 (small files are "
                       "fetched to be hashed; large ones are not downloaded). `bundler build --lock FILE` "
                       "then fetches exactly that.")
    _profile_and_output(p, "FILE", "write the lock here (default: stdout)")
    add_fetch_options(p, downloads=False)


def add_build(command: Subcommand) -> None:
    p = command.parser(cmd_build,
                       "Fetch the profile's images (through registry mirrors, no docker engine needed), "
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
                        "exact: key wins (see docs/building.md: Exact images)")
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
                        "be given more than once (see docs/updates.md)")
    add_sign_option(p)
    add_fetch_options(p)


def add_restorer(command: Subcommand) -> None:
    p = command.parser(cmd_restorer,
                       "Write the one-file restorer that `bundler build` puts beside every bundle: "
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


def context_for(args: argparse.Namespace, profile: Profile | None) -> BuildContext:
    """The connected side's context: mirrors of the profile and the flags, the cache, the policy."""
    return BuildContext.create(profile, mirrors_file=getattr(args, "mirrors", None),
                               cache_dir=getattr(args, "cache", None),
                               policy=policy_for(args), progress=progress_for(args),
                               jobs=getattr(args, "jobs", DEFAULT_JOBS))


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except BundlerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_fetch_options(p: argparse.ArgumentParser, kinds: bool = True, downloads: bool = True) -> None:
    """The options of the commands that reach the network; ``downloads``: it fetches payloads (--jobs)."""
    p.add_argument("--mirrors", type=existing_file, metavar="FILE",
                   help="a mirrors file that overrides the profile's and the user's (see docs/building.md: Mirrors)")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="the content-addressed cache shared by builds (default: the user cache dir)")
    if downloads:
        p.add_argument("--jobs", type=positive, default=DEFAULT_JOBS, metavar="N",
                       help=f"parallel downloads (default {DEFAULT_JOBS})")
    if kinds:
        add_only_flags(p, {"images": "only the images", "wheels": "only the wheels", "models": "only the models"})


PASSPHRASE_ENV = "BUNDLER_KEY_PASSPHRASE"  # noqa: S105 - the name of a variable, not its value


def add_sign_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign", type=Path, metavar="KEY",
                   help="sign bundle.json with this OpenSSH ed25519 private key (ssh-keygen -t ed25519): the "
                        "signature travels in the bundle and beside it as OUT.sig, which ssh-keygen -Y verify "
                        f"checks without bundler; a passphrase is read from {PASSPHRASE_ENV}, or asked on a terminal")


def signing_key(args: argparse.Namespace) -> SigningKey | None:
    """The --sign key, loaded before anything is fetched: a wrong passphrase fails at once."""
    if args.sign is None:
        return None
    passphrase = None
    if key_needs_passphrase(args.sign):
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None and sys.stdin.isatty():
            import getpass
            passphrase = getpass.getpass(f"passphrase for {args.sign}: ")
    return load_signing_key(args.sign, passphrase)
