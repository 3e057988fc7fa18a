"""``mirrors config TOOL --site URL``: a node's configuration for the site. The air-gapped half of
``bundler mirrors``, so that the one-file restorer configures a node too (it offers ``mirrors`` with
this alone); ``cli/mirrors.py`` adds the mirror catalog's verbs around it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bundler.cli.common import EXIT_OK, Parser, Subcommand, run_context, say
from bundler.configfile import ConfigPlan, write_config
from bundler.restore.siteconfig import HOSTS_DIR, SiteAddress, hf_variables, plan_site_config

TOOLS = ("docker", "containerd", "pip", "hf")
AFTER_WRITING = {
    "docker": "restart docker to use the mirrors:\n  sudo systemctl daemon-reload\n  sudo systemctl restart docker\n"
              "then check: docker info --format '{{.RegistryConfig.Mirrors}}'",
    "pip": "pip reads it on its next run; check: pip config list",
}
SITE_DESCRIPTION = (
    "a node's configuration for the site, so that docker pull, ctr image pull, pip install and huggingface_hub "
    "take from it by the names users type: docker (daemon.json registry-mirrors, and insecure-registries for "
    "plain HTTP), containerd (a hosts.toml for every registry the site's images came from), pip (index-url "
    "URL/simple/, and trusted-host for plain HTTP) or hf (HF_ENDPOINT, which huggingface_hub reads from the "
    "environment only: printed as an export line, written into /etc/environment). Prints the file as it would "
    "be; --write merges it into PATH atomically, keeping every other key and a backup beside it, and writes "
    "nothing when PATH already says this. See docs/cluster.md.")


def after_writing(tool: str, plans: list[ConfigPlan], exports: str) -> str:
    """What to do next, once a file is written."""
    if tool == "containerd":
        folder = plans[0].path.parent.parent
        return (f"containerd reads hosts.toml at each pull, no restart needed; ctr: ctr image pull --hosts-dir "
                f"{folder} NAME; Kubernetes (CRI) reads it when /etc/containerd/config.toml sets config_path = "
                f"\"{folder}\" under [plugins.\"io.containerd.grpc.v1.cri\".registry]")
    if tool == "hf":
        return f"PAM reads {plans[0].path} at each login: log in again, or in this shell: {exports}"
    return AFTER_WRITING[tool]


def site_config(args: argparse.Namespace) -> int:
    ctx = run_context(args)
    plans = plan_site_config(args.tool, args.site, ctx, path=args.path, upstreams=args.upstream or (),
                             repositories=args.repository or (), skip_verify=args.skip_verify)
    for plan in plans:
        for note in plan.notes:
            ctx.progress.note(note)
    exports = ""
    if args.tool == "hf":   # huggingface_hub reads only its environment: what a shell would set
        variables = hf_variables(SiteAddress.parse(args.site, registry=False))
        exports = "; ".join(f"export {name}={value}" for name, value in variables.items())
    if not args.write and args.tool == "hf":
        say(exports)
        return EXIT_OK
    if not args.write:
        for number, plan in enumerate(plans):
            if args.tool == "containerd":
                say(("\n" if number else "") + f"# {plan.path}")
            sys.stdout.write(plan.text)
        return EXIT_OK
    written = False
    for plan in plans:
        if not plan.changed:
            say(f"{plan.path} already says this; nothing written")
            continue
        backup = write_config(plan)
        written = True
        say(f"wrote {plan.path}" + (f" (the old one is {backup})" if backup else ""))
    if written:
        say(after_writing(args.tool, plans, exports))
    return EXIT_OK


def add_config_options(v: argparse.ArgumentParser, *, site_required: bool) -> None:
    """``config``'s arguments: the tool, the file, and the site's options (``--site`` itself required
    where the site is all there is to configure)."""
    v.add_argument("tool", choices=TOOLS,
                   help="whose configuration" + ("" if site_required else " (containerd and hf only with --site)"))
    v.add_argument("--path", type=Path, metavar="PATH",
                   help=("the file (default /etc/docker/daemon.json; pip's per-user pip.conf, or /etc/pip.conf "
                         "with --site; /etc/environment for hf)" if not site_required else
                         "the file (default /etc/docker/daemon.json, /etc/pip.conf, /etc/environment for hf)")
                   + f", or for containerd the hosts directory (default {HOSTS_DIR})")
    v.add_argument("--write", action="store_true", help="write PATH instead of printing it")
    site = v.add_argument_group("the site (a node of an air-gapped cluster)")
    site.add_argument("--site", metavar="URL", required=site_required,
                      help=("" if site_required else "configure for the site instead of the mirror catalog: ")
                      + "its registry for docker and containerd (http://HOST:PORT), its index port for pip and "
                        "hf, as `bundler serve` prints them")
    site.add_argument("--upstream", action="append", metavar="HOST",
                      help="containerd: a registry to write a hosts.toml for (docker.io, nvcr.io, ...); may be given "
                           "more than once. Default: the registries of the images in every bundle the site holds")
    site.add_argument("--repository", action="append", metavar="REPO",
                      help="containerd: read the bundles in this repository of the site (the one `bundler push` "
                           "wrote to) instead of listing its catalog, which Harbor shows to admins only; may be "
                           "given more than once")
    site.add_argument("--skip-verify", action="store_true",
                      help="an https:// site whose certificate the node cannot check: containerd skip_verify, "
                           "Docker insecure-registries, pip trusted-host")


def add_mirrors(command: Subcommand) -> None:
    """The one-file restorer's ``mirrors``: ``config TOOL --site URL`` alone (the catalog is the
    connected side's)."""
    p = command.parser(site_config,
                       "A node's configuration for the site (the mirror catalog's verbs are bundler's own, on "
                       "the connected side).")
    verbs = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    v = verbs.add_parser("config", parents=[command.common], help="print or write a tool's configuration for the site",
                         description="With --site URL: " + SITE_DESCRIPTION)
    add_config_options(v, site_required=True)
