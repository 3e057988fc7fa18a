"""``bundler inventory``, and how ``inspect`` shows a delta: update bundles for people."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bundler.cli_common import EXIT_OK, progress_for, run_context
from bundler.files import human_size


def cmd_inventory(args: argparse.Namespace) -> int:
    from bundler.inventory import InventoryOptions, take_inventory
    sources = (args.docker, args.registry, args.containerd, args.dest, args.index_dir)
    none = not any(sources)
    if args.repository and not args.registry:
        from bundler.errors import InputError
        raise InputError("--repository names repositories of --registry; give --registry HOST too")
    options = InventoryOptions(docker=args.docker or none, registry=args.registry,
                               repositories=tuple(args.repository or ()), insecure=args.insecure,
                               containerd=args.containerd, containerd_address=args.address, namespace=args.namespace,
                               dests=tuple(args.dest or ([Path()] if none else [])),
                               index_dirs=tuple(args.index_dir or ()))
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


def add_inventory_parser(sub, common: argparse.ArgumentParser) -> None:  # noqa: ANN001
    p = sub.add_parser(
        "inventory", parents=[common], help="write what this site already holds, for build --since",
        description="Run on the air-gapped side: write a small JSON file of what the site already holds, for "
                    "`bundler build PROFILE --since FILE` on the connected side, which then carries only what "
                    "the site lacks. It holds digests and names only: image names, the digests of their "
                    "layers (diff_ids, and the blob digests a registry or containerd keeps), configs and "
                    "manifests, wheel file names with their sha256, and model files' sha256; no file contents, "
                    "no paths beyond the source names, no credentials. With no source flag it reads the local "
                    "docker engine and ./ (an earlier restore's DEST, or a folder holding several).")
    p.set_defaults(func=cmd_inventory)
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


def delta_lines(head) -> list[str]:  # noqa: ANN001 - a format.Head
    """inspect's lines for a delta: against what, and what it needs from the site."""
    delta = head.delta
    if delta is None:
        return []
    sizes = {b.digest: b.size for i in head.images for b in i.blobs}
    wheels = {w.sha256: w.size for w in head.wheels}
    models = {f.sha256: f.size for m in head.models for f in m.files}
    lines = ["delta     against " + ", ".join(f"{b.name} ({b.kind}, sha256 {b.sha256[:12]}..)" for b in delta.bases)]
    needed = sum(sizes.get(d, 0) for d in delta.layers)
    lines.append(f"  needs from the site: {len(delta.layers)} layers ({human_size(needed)}), {len(delta.wheels)} "
                 f"wheels ({human_size(sum(wheels.get(s, 0) for s in delta.wheels))}), {len(delta.models)} model "
                 f"files ({human_size(sum(models.get(s, 0) for s in delta.models))})")
    for patch in delta.patches:
        member = head.member(patch.member)
        lines.append(f"  layer {patch.layer[:19]}.. ({human_size(patch.size)}) rebuilt from the site's "
                     f"{patch.base[:19]}.. by a {human_size(member.size if member else 0)} patch")
    return lines
