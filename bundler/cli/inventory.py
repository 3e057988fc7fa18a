"""``bundler inventory``: what a site already holds, for the next update bundle."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bundler.cli.common import EXIT_OK, Subcommand, progress_for, run_context
from bundler.errors import InputError
from bundler.files import human_size
from bundler.restore.options import InventoryOptions
from bundler.restore.verb import take_inventory


def cmd_inventory(args: argparse.Namespace) -> int:
    sources = (args.docker, args.registry, args.containerd, args.dest, args.index_dir, args.hf_home,
               args.modelscope_cache, args.models_dir)
    none = not any(sources)
    if args.repository and not args.registry:
        raise InputError("--repository names repositories of --registry; give --registry HOST too")
    for flag, folders in (("--hf-home", args.hf_home), ("--modelscope-cache", args.modelscope_cache),
                          ("--models-dir", args.models_dir)):
        for folder in folders or ():
            if not folder.is_dir():
                raise InputError(f"{flag} {folder}: no such folder")
    options = InventoryOptions(docker=args.docker or none, docker_optional=none, registry=args.registry,
                               repositories=tuple(args.repository or ()), insecure=args.insecure,
                               containerd=args.containerd, containerd_address=args.address, namespace=args.namespace,
                               dests=tuple(args.dest or ([Path()] if none else [])),
                               index_dirs=tuple(args.index_dir or ()), hf_homes=tuple(args.hf_home or ()),
                               modelscope_caches=tuple(args.modelscope_cache or ()),
                               models_dirs=tuple(args.models_dir or ()))
    inventory = take_inventory(options, run_context(args))
    data = inventory.to_json()
    if args.output is None:
        sys.stdout.write(data.decode())
        return EXIT_OK
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, args.output)
    layers = len({layer.diff_id for image in inventory.images for layer in image.layers})
    progress_for(args).note(f"{args.output}: {len(inventory.images)} images ({layers} layers), "
                            f"{len(inventory.wheels)} wheels, {len(inventory.models)} model files, from "
                            f"{'; '.join(inventory.sources) or 'nothing'} ({human_size(len(data))})")
    return EXIT_OK


def add_inventory(command: Subcommand) -> None:
    p = command.parser(
        cmd_inventory,
        "Run on the air-gapped side: write a small JSON file of what the site already holds, for "
        "`bundler build PROFILE --since FILE` on the connected side, which then carries only what "
        "the site lacks. It holds digests and names only: image names, the digests of their "
        "layers (diff_ids, and the blob digests a registry or containerd keeps), configs and "
        "manifests, wheel file names with their sha256, and model files' sha256; no file contents, "
        "no paths beyond the source names, no credentials. With no source flag it reads the local "
        "docker engine, when it can be reached (it says so when not), and ./ (an earlier restore's DEST, or a "
        "folder holding several).")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it here (default: stdout)")
    p.add_argument("--docker", action="store_true", help="the docker engine (DOCKER_HOST honoured)")
    p.add_argument("--registry", metavar="HOST[:PORT]", help="a registry: every repository and tag it lists")
    p.add_argument("--repository", action="append", metavar="REPO",
                   help="with --registry: read only this repository (project/name) instead of the registry's "
                        "catalog, which Harbor shows to admins only; may be given more than once")
    p.add_argument("--insecure", action="store_true", help="talk plain HTTP to --registry (loopback always may)")
    p.add_argument("--containerd", action="store_true", help="containerd's images and content (ctr)")
    p.add_argument("--namespace", default="k8s.io", help="containerd namespace (default k8s.io)")
    p.add_argument("--address", metavar="SOCKET", help="containerd socket (default /run/containerd/containerd.sock)")
    p.add_argument("--dest", type=Path, action="append", metavar="DIR",
                   help="an earlier restore's DEST (its wheels/, huggingface/, modelscope/), or a folder holding "
                        "several; may be given more than once")
    p.add_argument("--index-dir", type=Path, action="append", metavar="DIR",
                   help="an earlier restore's --index-dir (its files/); may be given more than once")
    p.add_argument("--hf-home", type=Path, action="append", metavar="DIR",
                   help="an earlier restore's --hf-home (a Hugging Face cache, HF_HOME); may be given more than once")
    p.add_argument("--modelscope-cache", type=Path, action="append", metavar="DIR",
                   help="an earlier restore's --modelscope-cache (MODELSCOPE_CACHE); may be given more than once")
    p.add_argument("--models-dir", type=Path, action="append", metavar="DIR",
                   help="an earlier restore's --models-dir (plain folders); may be given more than once")


