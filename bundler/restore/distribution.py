"""CNCF distribution for ``bundler serve``: where the program comes from, the configuration bundler
writes for it, running it, and its log lines, relayed one line each.

serve runs two distribution processes over one storage folder. The filesystem driver reads the disk
at every request and no blob descriptor cache is configured, so what one of them writes the other
serves at once: the public one, on the site's address, is read-only to clients
(``storage.maintenance.readonly``, which also keeps it from purging uploads); the private one, on
127.0.0.1 only, takes the pushes of serve itself and of a later ``bundler push``. Deletes are off on
both. A distribution registry is never one of our own: it is the ``registry`` or ``docker-registry``
program where one is installed (Debian's docker-registry package); else the ``registry:2`` image,
through the docker engine (DOCKER_HOST honoured) or containerd (ctr; CONTAINERD_ADDRESS and
CONTAINERD_NAMESPACE honoured, as ctr reads them), on the host's network, with the site's folder
mounted at its own path. The image is the site's own, or one that a served bundle carries, loaded
from that bundle first.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from bundler import proc
from bundler.context import Context
from bundler.errors import BundlerError, DockerError, OperationalError
from bundler.format.trust import CheckedHead
from bundler.oci.engine import docker_client, short_error
from bundler.oci.reference import ImageRef
from bundler.restore.images.containerd import DEFAULT_CONTAINERD
from bundler.restore.images.restorer import run_names
from bundler.restore.machine import platform_for
from bundler.restore.options import RestoreOptions
from bundler.restore.verb import restore

PROGRAMS = ("registry", "docker-registry")
REGISTRY_IMAGE = "docker.io/library/registry:2"
REGISTRY_REPOSITORY = ("docker.io", "library/registry")    # any tag of it, when a bundle carries one
READY_TIMEOUT = 30.0            # seconds for a registry to answer /v2/ once started
STOP_WAIT = 1.0                 # seconds a registry gets to exit on SIGTERM before it is killed
TAIL = 20                       # lines of a registry's output kept for an error message
CTR_TIMEOUT = 30
HOW_TO_GET_ONE = ("install CNCF distribution (Debian and Ubuntu: apt install docker-registry), or carry the "
                  "registry:2 image in a served bundle (list registry:2 under images: in its profile) for docker "
                  "or containerd here to run")

Log = Callable[[str], None]     # one line of the site's log, without its time


# ---- the configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class Tls:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Instance:
    """One distribution process: its name in the log, its address, and whether clients may write."""

    name: str                  # "registry" (the public one) or "push" (the private one)
    host: str                  # the address it listens on
    port: int
    readonly: bool
    tls: Tls | None = None

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def probe_url(self) -> str:
        """Where serve itself reaches it (the loopback address when it listens on every address)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def write_config(instance: Instance, *, storage: Path, folder: Path) -> Path:
    """The configuration bundler writes for ``instance``: the filesystem driver under ``storage``,
    deletes off, read-only for the public one, its own log as JSON beside the access log, and TLS with
    the site's own certificate where it has one."""
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "json", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": False},
                    "maintenance": {"readonly": {"enabled": instance.readonly}}},
        "http": {"addr": instance.addr, "secret": secrets.token_hex(16),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if instance.tls is not None:
        config["http"]["tls"] = {"certificate": str(instance.tls.certificate), "key": str(instance.tls.key)}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance.name}.yml"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False))
    partial.chmod(0o600)    # it holds the upload secret
    os.replace(partial, path)
    return path


# ---- its log ------------------------------------------------------------------------------------

_ACCESS = re.compile(r'(?P<client>\S+) \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) '
                     r'(?P<size>\d+|-)')
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def log_line(instance: Instance, text: str) -> str | None:
    """One line of distribution's output as the site logs it, or None for one not worth a line: an
    access line becomes ``NAME CLIENT METHOD PATH STATUS BYTES`` (``refused`` after a status of 400 or
    more), a warning or an error its level and message; the push registry's reads are serve's own and
    are left out."""
    text = text.strip()
    if not text:
        return None
    found = _ACCESS.match(text)
    if found:
        if not instance.readonly and found["method"] not in WRITES:
            return None
        status = int(found["status"])
        line = f"{instance.name} {found['client']} {found['method']} {_short(found['path'])} {status} {found['size']}"
        return line + (" refused" if status >= 400 else "")
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            level, message = str(entry.get("level", "")), str(entry.get("msg", ""))
            if level in ("debug", "info") or message.startswith("response completed"):
                return None   # every request has its access line already
            said = entry.get("err.message") or entry.get("error")
            return f"{instance.name} {level}: {message}" + (f" ({said})" if said else "")
    return f"{instance.name}: {text[:500]}"


def _short(path: str) -> str:
    """A request's path without the upload state distribution hands its clients (a page of base64)."""
    base, _, query = path.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("_state=")]
    return base + ("?" + "&".join(kept) if kept else "")


class _Relay:
    """Reads a registry's output line by line on a thread: each becomes a line of the site's log, and
    the last few are kept for the error that says why it stopped."""

    def __init__(self, instance: Instance, log: Log) -> None:
        self.instance, self.log = instance, log
        self.tail: collections.deque = collections.deque(maxlen=TAIL)

    def start(self, chunks: Iterable[bytes]) -> None:
        threading.Thread(target=self._read, args=(chunks,), name=f"{self.instance.name}-log", daemon=True).start()

    def _read(self, chunks: Iterable[bytes]) -> None:
        pending = b""
        with contextlib.suppress(Exception):   # the stream ends however the registry stopped
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._line(raw)
        self._line(pending)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip()
        if not text:
            return
        self.tail.append(text)
        line = log_line(self.instance, text)
        if line is not None:
            self.log(line)

    def said(self) -> str:
        """What it last said, or where it panicked or failed: the line worth quoting in an error."""
        for text in self.tail:
            if text.startswith(("panic:", "fatal", "configuration error")) or '"level":"fatal"' in text \
                    or '"level":"panic"' in text:
                line = log_line(self.instance, text) or text
                return line.split(": ", 1)[-1] if line.startswith(f"{self.instance.name}: ") else line
        return proc.last_lines("\n".join(self.tail))


# ---- running it ---------------------------------------------------------------------------------

class Running:
    """One registry process (or container) serve started."""

    def __init__(self, instance: Instance, relay: _Relay, *, stop: Callable[[], None],
                 alive: Callable[[], bool]) -> None:
        self.instance, self._relay, self._stop, self._alive = instance, relay, stop, alive

    def alive(self) -> bool:
        return self._alive()

    def said(self) -> str:
        return self._relay.said()

    def stop(self) -> None:
        self._stop()


class Program:
    """Where distribution comes from; ``start`` runs one instance of it with a configuration file."""

    what = ""

    def start(self, instance: Instance, config: Path, *, root: Path, log: Log) -> Running:
        raise NotImplementedError


class NativeProgram(Program):
    """The ``registry`` or ``docker-registry`` program installed here."""

    def __init__(self, path: str) -> None:
        self.path, self.what = path, path

    def start(self, instance: Instance, config: Path, *, root: Path, log: Log) -> Running:  # noqa: ARG002
        process = proc.start([self.path, "serve", str(config)], f"running the site's {instance.name} registry",
                             stderr=subprocess.STDOUT)
        relay = _Relay(instance, log)
        relay.start(iter(lambda: process.stdout.read1(1 << 16), b""))
        return Running(instance, relay, stop=lambda: _stop_process(process), alive=lambda: process.poll() is None)


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def container_name(root: Path, instance: Instance) -> str:
    """The name of a site's registry container: one per site folder and instance, so that a serve
    killed before it could stop its containers has them removed by the next."""
    return f"bundler-serve-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]}-{instance.name}"


class DockerProgram(Program):
    """The registry image, run by the docker engine on the host's network."""

    def __init__(self, client: object, image: str) -> None:
        self.client, self.image = client, image
        self.what = f"{image} in the docker engine at {os.environ.get('DOCKER_HOST') or 'the default socket'}"

    def start(self, instance: Instance, config: Path, *, root: Path, log: Log) -> Running:
        import docker
        name = container_name(root, instance)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)
        try:
            container = self.client.containers.run(
                self.image, ["serve", str(config)], entrypoint=["registry"], name=name, network_mode="host",
                volumes={str(root): {"bind": str(root), "mode": "rw"}}, detach=True)
        except docker.errors.DockerException as exc:
            raise DockerError(f"docker could not run {self.image}: {short_error(exc)}") from None
        relay = _Relay(instance, log)
        relay.start(container.logs(stream=True, follow=True))

        def stop() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                container.stop(timeout=int(STOP_WAIT))   # SIGTERM, then SIGKILL
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)

        def alive() -> bool:
            try:
                container.reload()
            except docker.errors.DockerException:
                return False
            return container.status in ("created", "running")

        return Running(instance, relay, stop=stop, alive=alive)


class ContainerdProgram(Program):
    """The registry image, run by containerd (``ctr run``) on the host's network."""

    def __init__(self, ctr: Sequence[str], image: str) -> None:
        self.ctr, self.image = list(ctr), image
        address = os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD
        self.what = f"{image} in containerd at {address}"

    def start(self, instance: Instance, config: Path, *, root: Path, log: Log) -> Running:
        name = container_name(root, instance)
        self._remove(name)
        args = [*self.ctr, "run", "--rm", "--net-host", "--mount", f"type=bind,src={root},dst={root},options=rbind:rw",
                self.image, name, "registry", "serve", str(config)]
        process = proc.start(args, f"running the site's {instance.name} registry in containerd",
                             stderr=subprocess.STDOUT)
        relay = _Relay(instance, log)
        relay.start(iter(lambda: process.stdout.read1(1 << 16), b""))

        def stop() -> None:
            # ctr run hands SIGTERM to the registry and removes the container once it exits
            _stop_process(process)
            self._remove(name)

        return Running(instance, relay, stop=stop, alive=lambda: process.poll() is None)

    def _remove(self, name: str) -> None:
        for args in (["task", "kill", "-s", "SIGKILL", name], ["task", "delete", "-f", name],
                     ["container", "rm", name]):
            with contextlib.suppress(OperationalError):
                proc.run([*self.ctr, *args], f"removing container {name}", CTR_TIMEOUT)


def wait_ready(running: Running, timeout: float = READY_TIMEOUT) -> None:
    """Until the registry answers /v2/; an OperationalError quoting its output when it exits first
    (a port taken, a configuration it refuses) or stays silent."""
    url = running.instance.probe_url + "/v2/"
    deadline = time.monotonic() + timeout
    while True:
        if not running.alive():
            raise OperationalError(f"the {running.instance.name} registry on {running.instance.addr} stopped as it "
                                   f"started: {running.said()}")
        try:
            answer = requests.get(url, timeout=2, verify=False)  # noqa: S501 - our own process, maybe self-signed
            if answer.status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise OperationalError(f"the {running.instance.name} registry on {running.instance.addr} did not answer "
                                   f"within {timeout:g} s: {running.said()}")
        time.sleep(0.05)


# ---- where it comes from ----------------------------------------------------------------------

def is_registry_image(name: str) -> bool:
    ref = ImageRef.parse(name)
    return (ref.registry, ref.repository) == REGISTRY_REPOSITORY


def find_program(bundles: Sequence[tuple[Path, CheckedHead]], ctx: Context) -> Program:
    """distribution installed here; else registry:2 that docker or containerd holds; else one that a
    served bundle carries, loaded into whichever of them is here; else exit 1, saying both ways."""
    for name in PROGRAMS:
        found = shutil.which(name)
        if found:
            return NativeProgram(found)
    engine, ctr = _docker(), _containerd()
    if engine is not None and _docker_has(engine, REGISTRY_IMAGE):
        return DockerProgram(engine, REGISTRY_IMAGE)
    if ctr is not None and _containerd_has(ctr, REGISTRY_IMAGE):
        return ContainerdProgram(ctr, REGISTRY_IMAGE)
    for path, checked in bundles:
        here = platform_for(checked.head, None)
        image = next((i for i in checked.head.images_for(here) if is_registry_image(i.name)), None)
        if image is None:
            continue
        if engine is None and ctr is None:
            raise OperationalError(f"{path} carries {image.name}, but neither a docker engine "
                                   f"({os.environ.get('DOCKER_HOST') or 'the default socket'}) nor containerd "
                                   f"({os.environ.get('CONTAINERD_ADDRESS') or DEFAULT_CONTAINERD}) is here to run "
                                   "it; install CNCF distribution (apt install docker-registry) instead")
        ctx.progress.note(f"loading {image.name} from {path} into {'docker' if engine is not None else 'containerd'}, "
                          "to run the site's registry")
        options = RestoreOptions(kinds=("images",), images=(image.name,), containerd=engine is None,
                                 containerd_address=os.environ.get("CONTAINERD_ADDRESS"),
                                 namespace=os.environ.get("CONTAINERD_NAMESPACE") or "default")
        restore(path, options, ctx)
        if engine is not None:
            return DockerProgram(engine, run_names(image)[0])
        return ContainerdProgram(ctr, image.annotations.get("io.containerd.image.name", image.name))
    raise OperationalError(f"no registry to serve with: neither {' nor '.join(PROGRAMS)} is on PATH, and no docker "
                           f"engine or containerd here holds {REGISTRY_IMAGE}; {HOW_TO_GET_ONE}")


def _docker() -> object | None:
    try:
        return docker_client()
    except BundlerError:
        return None


def _docker_has(client: object, image: str) -> bool:
    import docker
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise DockerError(f"the docker engine failed: {short_error(exc)}") from None
    return True


def _containerd() -> list[str] | None:
    """ctr's command line for the containerd here, or None where there is none."""
    ctr = shutil.which("ctr")
    if ctr is None:
        return None
    base = [ctr, "--address", os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD,
            "--namespace", os.environ.get("CONTAINERD_NAMESPACE") or "default"]
    try:
        found = proc.run([*base, "version"], "asking containerd for its version", CTR_TIMEOUT)
    except OperationalError:
        return None
    return base if found.returncode == 0 else None


def _containerd_has(ctr: list[str], image: str) -> bool:
    found = proc.run([*ctr, "images", "ls", "-q"], "listing containerd's images", CTR_TIMEOUT)
    return found.returncode == 0 and image in found.stdout.split()
