"""``bundler serve BUNDLE... --root DIR``: a site with no registry gets one, from the bundles themselves.

In this order, so that nothing is served before every bundle is in, and nothing of a damaged one
ever is:

1. the ports are checked free, every bundle's head and signature read (``--trust``);
2. the private registry starts, on 127.0.0.1 only (distribution.py: what runs it);
3. a bundle whose index already stands at its tag with the same head (a restart on the same DIR)
   is served as it is; every other bundle is verified whole (exit 3 on damage: everything started
   is stopped, nothing was pushed), then pushed as ``bundler push`` pushes it, into the one
   repository ``bundles`` (a delta pushed later finds there what it was made against);
4. the public registry starts, read-only, on --listen, over the same storage;
5. the index port opens: a PEP 503 index and a Hugging Face endpoint of what the registry serves,
   read back from it (served.py, index_server.py), including bundles ``bundler push`` adds later
   through the private address.

The returned Site serves until ``stop()``, which stops every process serve started, within a second
or two, leaving no port open. Its log (every request, the registries' too) goes to ``options.log``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bundler.context import Context
from bundler.digest import Digest
from bundler.errors import InputError, IntegrityError, OperationalError
from bundler.format.media import INDEX_TYPES
from bundler.format.site import HEAD_SHA256, read_index
from bundler.format.trust import CheckedHead, TrustFile, open_bundle
from bundler.oci.site import SiteRegistry
from bundler.progress import waiting
from bundler.restore.distribution import Instance, Program, Running, Tls, find_program, wait_ready, write_config
from bundler.restore.index_server import POLL, IndexServer
from bundler.restore.push import PushOptions, PushReport, Target, push_verified, verify_bundle
from bundler.restore.served import Catalog

DEFAULT_LISTEN = "127.0.0.1"
REGISTRY_PORT, INDEX_PORT, PUSH_PORT = 5000, 8080, 5001
REPOSITORY = "bundles"          # every bundle serve pushes, each under a tag of its own
STORAGE = "registry"            # DIR/registry: distribution's storage
CONFIG = "config"               # DIR/config: the registries' configuration, and the TLS files they read
WATCH = 0.5                     # seconds between looks at the registries while serving
EVERY_ADDRESS = ("0.0.0.0", "::")   # noqa: S104 - --listen for a real site


@dataclass
class ServeOptions:
    root: Path
    listen: str = DEFAULT_LISTEN
    registry_port: int = REGISTRY_PORT
    index_port: int = INDEX_PORT
    push_port: int = PUSH_PORT      # the private registry's, on 127.0.0.1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trust: TrustFile | None = None  # only bundles signed by a key it lists
    log: Callable[[str], None] = field(default=lambda _line: None)   # each line of the site's log


@dataclass(frozen=True)
class BundleServed:
    path: Path
    tag: str                        # its tag in REPOSITORY
    digest: Digest                  # of its index
    pushed: PushReport | None       # None: the registry held it already (a restart on the same DIR)


def bundle_tag(checked: CheckedHead) -> str:
    """A bundle's tag on the site: its profile's name and the start of its head's sha256."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", checked.head.profile.name).lstrip(".-")[:100] or "bundle"
    return f"{name}-{checked.head_sha256[:12]}"


class Site:
    """A site serving: its addresses, the bundles it pushed or found, and what stops it."""

    def __init__(self, options: ServeOptions, program: Program) -> None:
        self.options, self.program = options, program
        self.bundles: list[BundleServed] = []
        self.registries: list[Running] = []
        self.index: IndexServer | None = None
        self.tls: Tls | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def push_host(self) -> str:
        return f"127.0.0.1:{self.options.push_port}"

    def open_index(self, server: IndexServer) -> None:
        self.index = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL}, name="index",
                         daemon=True).start()

    def wait(self) -> None:
        """Serve until interrupted (SIGINT, SIGTERM); an OperationalError when a registry stops."""
        while True:
            for running in self.registries:
                if not running.alive():
                    raise OperationalError(f"the {running.instance.name} registry on {running.instance.addr} "
                                           f"stopped: {running.said()}")
            time.sleep(WATCH)

    def stop(self) -> None:
        """Every process serve started, stopped at once (each has a second to exit before it is killed)."""
        if self.index is not None:
            self.index.shutdown()
            self.index.server_close()
            self.index = None
        stopping = [threading.Thread(target=r.stop, name=f"stop-{r.instance.name}") for r in self.registries]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        self.registries = []


def serve(bundles: Sequence[Path], options: ServeOptions, ctx: Context | None = None) -> Site:
    """Start the site (see the module's docstring) and return it serving."""
    ctx = ctx or Context()
    root = options.root.resolve()
    given = _tls_given(options)
    _check_ports(options)
    opened, seen = [], set()
    for path in bundles:
        checked = open_bundle(path, options.trust)
        if checked.head_sha256 not in seen:
            seen.add(checked.head_sha256)
            opened.append((path, checked))
    program = find_program(opened, ctx)
    (root / STORAGE).mkdir(parents=True, exist_ok=True)
    tls = _tls_copied(given, root / CONFIG) if given else None
    site = Site(options, program)
    site.tls = tls
    try:
        _start(site, root, Instance("push", "127.0.0.1", options.push_port, readonly=False))
        registry = SiteRegistry(site.push_host, ctx.policy, plain_http=True)
        _push(site, registry, opened, ctx=ctx)
        _start(site, root, Instance("registry", options.listen, options.registry_port, readonly=True, tls=tls))
        catalog = Catalog(registry, root, refused=lambda line: options.log(f"index refused {line}"))
        with waiting(ctx.progress, "reading what the registry serves"):
            catalog.current(fresh=True)
        site.open_index(IndexServer((options.listen, options.index_port), catalog=catalog,
                                    registry_port=options.registry_port, tls=_server_context(tls), log=options.log))
    except BaseException:
        site.stop()
        raise
    return site


def _start(site: Site, root: Path, instance: Instance) -> None:
    config = write_config(instance, storage=root / STORAGE, folder=root / CONFIG)
    running = site.program.start(instance, config, root=root, log=site.options.log)
    site.registries.append(running)
    wait_ready(running)


def _push(site: Site, registry: SiteRegistry, opened: list[tuple[Path, CheckedHead]], *, ctx: Context) -> None:
    """Each bundle the registry lacks, verified first, all of them, then pushed; the others as they stand."""
    lacking = []
    for path, checked in opened:
        tag = bundle_tag(checked)
        held = _held(registry, tag, checked.head_sha256)
        if held is None:
            lacking.append((path, checked, tag))
        else:
            site.bundles.append(BundleServed(path, tag, held, None))
    verified = [(path, _verified(path, site.options.trust, ctx), tag) for path, _, tag in lacking]
    verified.sort(key=lambda v: (v[1].head.delta is not None, v[1].head.created))   # a delta after its base
    for path, checked, tag in verified:
        report = push_verified(path, checked, Target(site.push_host, REPOSITORY, tag), options=PushOptions(
            plain_http=True, trust=site.options.trust), ctx=ctx)
        site.bundles.append(BundleServed(path, tag, report.digest, report))


def _verified(path: Path, trust: TrustFile | None, ctx: Context) -> CheckedHead:
    """The bundle verified whole; damage is named with the file it is in (serve reads several)."""
    try:
        return verify_bundle(path, trust, ctx)
    except IntegrityError as exc:
        raise IntegrityError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _held(registry: SiteRegistry, tag: str, head_sha256: str) -> Digest | None:
    """The digest of the bundle's index when the registry holds it at ``tag`` already."""
    digest = registry.has_manifest(REPOSITORY, tag, ", ".join(INDEX_TYPES))
    if digest is None:
        return None
    _, body, media_type = registry.manifest(REPOSITORY, digest)
    if media_type not in INDEX_TYPES:
        return None
    return Digest(digest) if read_index(body, f"{registry.host}/{REPOSITORY}:{tag}")[1].get(HEAD_SHA256) == \
        head_sha256 else None


def _check_ports(options: ServeOptions) -> None:
    """Every port distinct and free, before anything is read or started."""
    ports = {"--registry-port": (options.listen, options.registry_port), "--index-port": (options.listen,
                                                                                          options.index_port),
             "--push-port": ("127.0.0.1", options.push_port)}
    numbers = [port for _, port in ports.values()]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"--registry-port {options.registry_port}, --index-port {options.index_port} and "
                         f"--push-port {options.push_port}: three different ports are needed")
    for flag, (host, port) in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise OperationalError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                                       "choose another port, or stop what holds it") from None


def _tls_given(options: ServeOptions) -> tuple[Path, Path] | None:
    """The site's certificate and key, checked as a pair (nothing written yet)."""
    if options.tls_cert is None and options.tls_key is None:
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise InputError("--tls-cert and --tls-key go together: the site's certificate and its private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"--tls-cert {options.tls_cert} --tls-key {options.tls_key}: not a certificate and its "
                         f"key ({getattr(exc, 'strerror', None) or exc})") from None
    return options.tls_cert, options.tls_key


def _tls_copied(given: tuple[Path, Path], folder: Path) -> Tls:
    """The certificate and key copied beside the registries' configuration: a registry in a container
    sees only the site's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tls = Tls(folder / "tls-cert.pem", folder / "tls-key.pem")
    for source, target in zip(given, (tls.certificate, tls.key)):
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        partial.chmod(0o600)
        os.replace(partial, target)
    return tls


def _server_context(tls: Tls | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.certificate, tls.key)
    return context


def site_host(listen: str) -> str:
    """How nodes name the site in the lines serve prints: the address it listens on, or this machine's
    name when it listens on every address."""
    if listen in EVERY_ADDRESS:
        return socket.gethostname()
    return f"[{listen}]" if ":" in listen else listen

