"""A node's configuration for the site: what Docker, containerd, pip and huggingface_hub need so that
``docker pull NAME``, ``ctr image pull``, ``pip install NAME==V`` and ``snapshot_download(REPO)`` take
what they ask for from the site, with the names users already type.

The site has two addresses, as ``bundler serve`` prints them: its registry (for Docker and
containerd) and its index port (a PEP 503 index under ``/simple/`` for pip, a Hugging Face endpoint
at its root for huggingface_hub). Each tool's file is edited as configfile.py edits any: other keys
kept, a backup, an atomic write, nothing written when the file already says this.

Docker applies ``registry-mirrors`` to docker.io only; containerd takes a hosts.toml per registry,
so the registries the site's images came from are read from the site itself: the index ``bundler
push`` leaves at REPO:TAG names each image it carries (format/site.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from bundler.configfile import (
    DAEMON_JSON,
    INSECURE_REGISTRIES,
    REGISTRY_MIRRORS,
    ConfigPlan,
    parse_pip_conf,
    plan_environment,
    plan_hosts_toml,
    plan_json,
    plan_pip_conf_keys,
    read_config,
)
from bundler.context import Context
from bundler.errors import ImageReferenceError, InputError, IntegrityError, NetworkError
from bundler.format.media import INDEX_TYPES
from bundler.format.site import HEAD_SHA256, read_index
from bundler.net.endpoints import OFFICIAL_REGISTRY_URLS
from bundler.oci.reference import ImageRef
from bundler.oci.site import SiteRegistry
from bundler.progress import waiting

SiteTool = Literal["docker", "containerd", "pip", "hf"]
SITE_TOOLS: tuple[SiteTool, ...] = ("docker", "containerd", "pip", "hf")
REGISTRY_TOOLS = ("docker", "containerd")     # --site names the registry; for the others, the index port
HOSTS_DIR = Path("/etc/containerd/certs.d")
SITE_PIP_CONF = Path("/etc/pip.conf")           # pip's global file: every user and every venv of the node
ENVIRONMENT = Path("/etc/environment")          # what pam_env sets for every login
HF_ENDPOINT = "HF_ENDPOINT"
CAPABILITIES = ("pull", "resolve")              # a private mirror: trusted to resolve tags, never pushed to


@dataclass(frozen=True)
class SiteAddress:
    """An address of the site: its registry, or its index port."""

    url: str            # as given, less a trailing slash
    host: str           # HOST[:PORT]
    plain_http: bool

    @classmethod
    def parse(cls, text: str, *, registry: bool) -> SiteAddress:
        """``text`` as --site gives it; ``registry``: the registry's address, which takes no path."""
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"--site {text}: not an http:// or https:// URL (the site's registry, or its index "
                             "port, as `bundler serve` prints them)")
        if parts.username is not None or parts.password is not None:
            raise InputError(f"--site {text}: give it without a login; a node's configuration files are read by "
                             "every user")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise InputError(f"--site {text}: {parts.netloc!r} is not HOST[:PORT]") from None
        if parts.query or parts.fragment or re.search(r"[\s\"'\\#]", text):
            raise InputError(f"--site {text}: a URL with no query, fragment, space or quote is expected")
        if registry and parts.path not in ("", "/"):
            raise InputError(f"--site {text}: a registry is named by its scheme and HOST[:PORT]; Docker's "
                             "registry-mirrors and containerd's hosts take no path")
        return cls(text.rstrip("/"), parts.netloc, parts.scheme == "http")


# ---- Docker ----------------------------------------------------------------------------------

def plan_docker(site: SiteAddress, path: Path | None = None, *, skip_verify: bool = False) -> ConfigPlan:
    """daemon.json with the site's registry as docker.io's only mirror, and among the insecure
    registries when it speaks plain HTTP (or its certificate is not to be checked)."""
    path = path or DAEMON_JSON

    def edit(data: dict) -> dict:
        merged = {**data, REGISTRY_MIRRORS: [site.url]}
        if site.plain_http or skip_verify:
            insecure = data.get(INSECURE_REGISTRIES, [])
            if not isinstance(insecure, list) or not all(isinstance(entry, str) for entry in insecure):
                raise InputError(f"{path}: {INSECURE_REGISTRIES} is not a list of HOST[:PORT]; fix it by hand, "
                                 "it was left as it is")
            merged[INSECURE_REGISTRIES] = list(dict.fromkeys([*insecure, site.host]))
        return merged

    note = (f"Docker applies registry-mirrors to docker.io only: an image of another registry (nvcr.io/...) is "
            f"pulled by its name on the site, {site.host}/REPO:TAG, or through containerd's hosts.toml "
            "(mirrors config containerd --site)")
    return plan_json(path, edit, (note,))


# ---- containerd ------------------------------------------------------------------------------

def upstream_server(registry: str) -> str:
    """The registry's own address, containerd's ``server`` (Docker Hub's is not docker.io)."""
    return OFFICIAL_REGISTRY_URLS.get(registry, f"https://{registry}")


def registry_host(text: str) -> str:
    """A registry --upstream names, as image names spell it (Docker Hub's aliases become docker.io)."""
    try:
        ref = ImageRef.parse(f"{text}/x/y")
    except ImageReferenceError:
        ref = None
    if ref is None or ref.repository != "x/y":
        raise InputError(f"--upstream {text}: not a registry host (like docker.io, nvcr.io or registry.local:5000)")
    return ref.registry


def plan_containerd(site: SiteAddress, registries: Sequence[str], directory: Path | None = None, *,
                    skip_verify: bool = False) -> list[ConfigPlan]:
    """One hosts.toml per registry, DIR/REGISTRY/hosts.toml: the site first, the registry itself
    (``server``) after it. A plain-HTTP site is named ``http://``, which containerd then speaks
    (a TLS setting beside it would make containerd try HTTPS first); ``skip_verify`` is for an HTTPS
    site whose certificate the node cannot check."""
    directory = directory or HOSTS_DIR
    settings: dict[str, object] = {"capabilities": list(CAPABILITIES)}
    if skip_verify:
        settings["skip_verify"] = True
    return [plan_hosts_toml(directory / registry / "hosts.toml", server=upstream_server(registry), host=site.url,
                            settings=settings)
            for registry in sorted(set(registries))]


@dataclass(frozen=True)
class Served:
    """What the bundles in a site's registry carry: where each bundle is, and where its images came from."""

    bundles: tuple[str, ...]        # REPO:TAG of each bundle's index
    registries: tuple[str, ...]     # the registries of their images, sorted
    repositories: int               # how many repositories were read


def served_registries(site: SiteRegistry, repositories: Sequence[str] = ()) -> Served:
    """The registries of every image the site's bundles carry: every tag of its catalog (or of
    ``repositories``) is read, and each bundle index (an index annotated with its head's sha256) names
    its images."""
    if not repositories:
        try:
            repositories = site.catalog()
        except NetworkError as exc:
            raise NetworkError(f"{exc}; a registry that lists its repositories to admins only (Harbor) needs "
                               "--repository REPO, the repository `bundler push` wrote to, or name the registries "
                               "with --upstream HOST") from None
    bundles, registries = [], set()
    for repository in repositories:
        for tag in site.tags(repository):
            _, body, media_type = site.manifest(repository, tag)
            if media_type not in INDEX_TYPES:
                continue
            where = f"{site.host}/{repository}:{tag}"
            children, annotations = read_index(body, where)
            if HEAD_SHA256 not in annotations:
                continue   # an image's own index (several platforms), not a bundle's
            bundles.append(f"{repository}:{tag}")
            for child in children:
                if child.kind == "image" and child.name:
                    registries.add(_registry_of(child.name, where))
    return Served(tuple(bundles), tuple(sorted(registries)), len(repositories))


def _registry_of(name: str, where: str) -> str:
    try:
        return ImageRef.parse(name).registry
    except ImageReferenceError:
        raise IntegrityError(f"{where}: the index names an image {name!r}, which is not an image reference") from None


def containerd_registries(site: SiteAddress, ctx: Context, *, upstreams: Sequence[str] = (),
                          repositories: Sequence[str] = ()) -> list[str]:
    """The registries containerd needs a hosts.toml for: those named, and, unless only names were
    given, those the site's bundles carry images of."""
    named = [registry_host(text) for text in upstreams]
    if named and not repositories:
        return named
    registry = SiteRegistry(site.host, ctx.policy, plain_http=site.plain_http)
    with waiting(ctx.progress, f"reading the bundles {site.host} serves"):
        served = served_registries(registry, repositories)
    if served.bundles:
        count = f"{len(served.bundles)} bundle{'s' if len(served.bundles) > 1 else ''}"
        ctx.progress.note(f"{site.host} serves {count} ({', '.join(served.bundles)}) with images of "
                          f"{', '.join(served.registries) or 'no registry'}")
    found = list(dict.fromkeys([*named, *served.registries]))
    if not found:
        looked = ", ".join(repositories) if repositories else \
            f"{served.repositories} {'repository' if served.repositories == 1 else 'repositories'}"
        raise InputError(f"{site.host} holds no bundle `bundler push` wrote (looked in {looked}); name the "
                         "registries its images come from with --upstream HOST, once for each (docker.io, nvcr.io, "
                         "...), or the repository of a pushed bundle with --repository REPO")
    return found


# ---- pip -------------------------------------------------------------------------------------

def pip_index_url(site: SiteAddress) -> str:
    """The site's PEP 503 index: URL/simple/, or the URL as given when it already ends there."""
    return site.url + "/" if site.url.endswith("/simple") else site.url + "/simple/"


def plan_pip(site: SiteAddress, path: Path | None = None, *, skip_verify: bool = False) -> ConfigPlan:
    """pip.conf with the site's index as ``index-url``, and its host trusted when it speaks plain HTTP;
    every other key kept (trusted hosts already listed stay listed)."""
    path = path or SITE_PIP_CONF
    settings = {"index-url": [pip_index_url(site)]}
    now = parse_pip_conf(read_config(path) or "", path).get("global", {})
    if site.plain_http or skip_verify:
        settings["trusted-host"] = list(dict.fromkeys([*now.get("trusted-host", "").split(), site.host]))
    notes = ()
    extra = now.get("extra-index-url", "").split()
    if extra:
        notes = (f"{path}: extra-index-url is kept ({', '.join(extra)}): pip asks it too for every package, and "
                 "waits for it where the node cannot reach it",)
    return plan_pip_conf_keys(path, settings, owned=tuple(settings), notes=notes)


# ---- huggingface_hub -------------------------------------------------------------------------

def hf_variables(site: SiteAddress) -> dict[str, str]:
    """The environment huggingface_hub reads (it has no configuration file): the endpoint it asks
    for every repository. Its time limits (HF_HUB_ETAG_TIMEOUT, 10 s) are left as they are: the
    site answers on the LAN."""
    return {HF_ENDPOINT: site.url}


def plan_hf(site: SiteAddress, path: Path | None = None) -> ConfigPlan:
    """The environment file every login reads (/etc/environment), setting HF_ENDPOINT."""
    return plan_environment(path or ENVIRONMENT, hf_variables(site))


# ---- one call per tool -----------------------------------------------------------------------

def plan_site_config(tool: SiteTool, url: str, ctx: Context, *, path: Path | None = None,
                     upstreams: Sequence[str] = (), repositories: Sequence[str] = (),
                     skip_verify: bool = False) -> list[ConfigPlan]:
    """The files ``tool`` needs for the site at ``url`` (its registry for docker and containerd, its
    index port for pip and hf): one plan each, nothing written."""
    site = SiteAddress.parse(url, registry=tool in REGISTRY_TOOLS)
    if (upstreams or repositories) and tool != "containerd":
        raise InputError("--upstream and --repository choose the registries of containerd's hosts.toml; "
                         f"{tool} takes neither")
    if skip_verify and site.plain_http:
        raise InputError(f"--skip-verify: {url} speaks plain HTTP, which has no certificate to check")
    if skip_verify and tool == "hf":
        raise InputError("--skip-verify: huggingface_hub always checks the certificate; make the site's CA "
                         "trusted on the node instead")
    if tool == "docker":
        return [plan_docker(site, path, skip_verify=skip_verify)]
    if tool == "pip":
        return [plan_pip(site, path, skip_verify=skip_verify)]
    if tool == "hf":
        return [plan_hf(site, path)]
    registries = containerd_registries(site, ctx, upstreams=upstreams, repositories=repositories)
    return plan_containerd(site, registries, path, skip_verify=skip_verify)
