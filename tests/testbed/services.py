"""Starting and stopping the real services: dockerd, registries, a token server, an index, proxies."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0, process: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout} s:\n{tail}")


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- dockerd ---------------------------------------------------------------------------------

@dataclass
class Dockerd:
    """A private docker engine: its own socket, data root and exec root; no bridge, no iptables."""

    root: Path
    process: subprocess.Popen | None = None
    storage_driver: str = ""
    config_file: Path | None = None     # a daemon.json to start with (the default is /etc/docker's)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, capture_output=True, check=check, input=input,
                              timeout=timeout)

    def start(self) -> Dockerd:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (scripts/setup.sh installs docker.io)")
        errors = []
        for driver in ("overlay2", "vfs"):
            try:
                self._start(driver)
                return self
            except RuntimeError as exc:
                errors.append(f"{driver}: {exc}")
                self.stop()
        raise RuntimeError("dockerd would not start:\n" + "\n".join(errors))

    def _start(self, driver: str) -> None:
        data, execroot = self.root / "data", self.root / "exec"
        data.mkdir(parents=True, exist_ok=True)
        execroot.mkdir(parents=True, exist_ok=True)
        log = self.root / "dockerd.log"
        self.storage_driver = driver
        self.process = subprocess.Popen(
            ["dockerd", f"--storage-driver={driver}", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "-H", self.host, "--data-root", str(data), "--exec-root", str(execroot),
             "--pidfile", str(self.root / "docker.pid"), "--log-level=warn",
             *([f"--config-file={self.config_file}"] if self.config_file else [])],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

        def ping() -> bool:
            return subprocess.run(["docker", "info", "--format", "{{.Driver}}"], env=self.env,
                                  capture_output=True, timeout=10).stdout.strip() == driver.encode()
        wait_until(ping, f"dockerd ({driver})", timeout=60, process=self.process, log=log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30)
            self.process = None
        # Overlay mounts left by a killed daemon would keep the data root from being removed.
        with contextlib.suppress(OSError):
            mounts = Path("/proc/mounts").read_text().splitlines()
            for line in reversed(mounts):
                target = line.split()[1]
                if target.startswith(str(self.root)):
                    subprocess.run(["umount", "-l", target], capture_output=True)


# ---- registries --------------------------------------------------------------------------------

@dataclass
class Registry:
    """One ``docker-registry serve`` on 127.0.0.1, optionally demanding basic or token auth."""

    root: Path
    port: int = 0
    auth: dict | None = None
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Registry:
        binary = shutil.which("docker-registry") or shutil.which("registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (scripts/setup.sh installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.auth:
            config["auth"] = self.auth
        path = self.root / "config.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        log = self.root / "registry.log"
        self.process = subprocess.Popen([binary, "serve", str(path)], stdout=log.open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=2).status_code in (200, 401),
                   f"registry on {self.host}", process=self.process, log=log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"


class TokenServer:
    """The bearer-token side of the auth flow Docker Hub and Harbor use, signing JWTs for a registry.

    Anonymous clients get pull tokens; with ``users`` set, a token needs HTTP basic credentials. With
    ``catalog`` False no token grants the catalog, as Harbor shows it to its admins only.
    """

    def __init__(self, root: Path, service: str = "test-registry", users: dict[str, str] | None = None, *,
                 catalog: bool = True) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.service, self.issuer, self.users = service, "bundler-test-issuer", users or {}
        self.catalog = catalog
        self.requests: list[str] = []
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bundler test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        root.mkdir(parents=True, exist_ok=True)
        self.cert_path = root / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key = key
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server = _serve(self._handler())
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/token"

    def registry_auth(self) -> dict:
        return {"token": {"realm": self.url, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.cert_path)}}

    def _issue(self, scopes: list[str], subject: str) -> str:
        import jwt
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "registry" and not self.catalog:
                continue
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": hashlib.sha256(os.urandom(16)).hexdigest(), "access": access}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [self._x5c]})

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                server.requests.append(self.path)
                subject = "anonymous"
                if server.users:
                    header = self.headers.get("Authorization", "")
                    try:
                        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
                    except ValueError:
                        user, password = "", ""
                    if server.users.get(user) != password or not header.startswith("Basic "):
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="token"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    subject = user
                token = server._issue(query.get("scope", []), subject)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- small HTTP servers --------------------------------------------------------------------

class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        # A client that gave up on a slow answer is what the slow faults are for; its broken pipe,
        # printed seconds later, would land in whichever test captures stderr then.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def _serve(handler: type[http.server.BaseHTTPRequestHandler], port: int = 0) -> _Server:
    server = _Server((LOOPBACK, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class IndexServer:
    """A PEP 503 simple index (and PEP 691 JSON) over the files in ``root``.

    ``/simple/`` lists projects; ``/simple/<name>/`` links each file with its ``#sha256=`` fragment;
    ``/files/<file>`` serves the bytes (with Range support, so resumes can be tested).
    """

    root: Path
    hashes: bool = True
    requests: list[str] = field(default_factory=list)

    def start(self) -> IndexServer:
        self._server = _serve(self._handler())
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/simple"
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def projects(self) -> dict[str, list[Path]]:
        from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
        found: dict[str, list[Path]] = {}
        for path in sorted(self.root.iterdir()):
            if path.name.endswith(".whl"):
                name = parse_wheel_filename(path.name)[0]
            elif path.name.endswith((".tar.gz", ".zip")):
                name = parse_sdist_filename(path.name)[0]
            else:
                continue
            found.setdefault(canonicalize_name(name), []).append(path)
        return found

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        index = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/files/"):
                    return self._file(index.root / Path(urllib.parse.unquote(path[len("/files/"):])).name)
                parts = [p for p in path.split("/") if p]
                if parts == ["simple"]:
                    return self._root()
                if len(parts) == 2 and parts[0] == "simple":
                    return self._project(parts[1])
                self._send(404, b"not found", "text/plain")

            def _root(self) -> None:
                links = "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(index.projects()))
                self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(), "text/html")

            def _project(self, name: str) -> None:
                files = index.projects().get(name)
                if not files:
                    return self._send(404, b"no such project", "text/plain")
                wants_json = "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
                entries = []
                for f in files:
                    digest = hashlib.sha256(f.read_bytes()).hexdigest()
                    entries.append((f.name, f"../../files/{f.name}", digest, f.stat().st_size))
                if wants_json:   # PEP 691, with PEP 700's sizes
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": [
                        {"filename": n, "url": u, "hashes": {"sha256": d} if index.hashes else {}, "size": size}
                        for n, u, d, size in entries]}).encode()
                    return self._send(200, body, "application/vnd.pypi.simple.v1+json")
                links = "".join(f'<a href="{u}{"#sha256=" + d if index.hashes else ""}">{n}</a><br/>\n'
                                for n, u, d, _ in entries)
                self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(), "text/html")

            def do_HEAD(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/files/"):
                    return self._file(index.root / Path(urllib.parse.unquote(path[len("/files/"):])).name, head=True)
                self._send(405, b"", "text/plain")

            def _file(self, path: Path, head: bool = False) -> None:
                if not path.is_file():
                    return self._send(404, b"not found", "text/plain")
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                spec = self.headers.get("Range", "")
                if spec.startswith("bytes=") and "," not in spec:
                    first, _, last = spec[len("bytes="):].partition("-")
                    if first:
                        start, end = int(first), min(int(last), end) if last else end
                    elif last:
                        start = max(0, len(data) - int(last))
                if (start, end) != (0, len(data) - 1):
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end + 1 - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not head:
                    self.wfile.write(data[start:end + 1])

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# ---- a proxy that misbehaves on purpose ------------------------------------------------------

FAULTS = ("ok", "500", "404", "flip", "slow", "truncate", "html200", "lying-length", "trickle", "redirect-loop",
          "throttle")


PAYLOADS = ("/blobs/", "/manifests/", "/files/", "/resolve/", "/lfs/", "/repo?")


class FaultyProxy:
    """Forwards to ``upstream`` but misbehaves as ``fault`` says, for payload requests only.

    Payloads are registry blobs (``/blobs/``), registry manifests (``/manifests/``), index files
    (``/files/``) and model files (the Hub's ``/resolve/``, its LFS store's ``/lfs/``, ModelScope's
    ``/repo?``): the proxy lets the API's other calls through so a client gets far enough to meet
    the fault. ``fault`` may be changed while the proxy runs. With ``follow_redirects`` the proxy
    fetches a redirect's target itself and serves it, as a mirror that keeps its own copies does.
      flip          one byte of every payload body is changed (``min_size`` spares small ones)
      500 / 404     payload requests answer that status
      slow          payload requests wait ``delay`` seconds before answering
      truncate      the body stops halfway and the connection closes
      lying-length  Content-Length says more than the body holds
      html200       an HTML error page with status 200
      trickle       a byte at a time, forever
      throttle      the whole body, at ``rate`` bytes per second (a slow link)
      redirect-loop every request redirects to itself
    """

    def __init__(self, upstream: str, fault: str = "ok", delay: float = 5.0, payload_only: bool = True,
                 min_size: int = 0, follow_redirects: bool = False, rate: int = 256 << 10) -> None:
        assert fault in FAULTS, fault
        self.upstream, self.fault, self.delay, self.payload_only = upstream.rstrip("/"), fault, delay, payload_only
        self.follow_redirects = follow_redirects
        self.rate = rate          # bytes per second, for throttle
        self.min_size = min_size  # body faults spare payloads smaller than this (configs, manifests)
        self.requests: list[str] = []
        self.ranges: list[tuple[str, str]] = []   # (path, Range header) of requests that asked for a range
        self.bytes_sent = 0                        # payload bytes sent back, all requests together
        self._server = _serve(self._handler())
        self.port = self._server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_QuietHandler):
            def do_HEAD(self) -> None:
                self._forward(head=True)

            def do_GET(self) -> None:
                self._forward(head=False)

            def _forward(self, head: bool) -> None:
                proxy.requests.append(self.path)
                if self.headers.get("Range"):
                    proxy.ranges.append((self.path, self.headers["Range"]))
                payload = any(p in self.path for p in PAYLOADS)
                fault = proxy.fault if (payload or not proxy.payload_only) else "ok"
                if fault == "redirect-loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault in ("500", "404"):
                    body = b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}'
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                if fault == "html200":
                    body = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                if fault == "slow":
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                with requests.Session() as direct:
                    direct.trust_env = False  # a test may point proxy variables elsewhere
                    upstream = direct.request("HEAD" if head else "GET", proxy.upstream + self.path,
                                              headers=headers, allow_redirects=proxy.follow_redirects and payload,
                                              stream=True, timeout=30)
                body = b"" if head else upstream.raw.read(decode_content=False)
                if len(body) < proxy.min_size and fault in ("flip", "truncate", "lying-length", "trickle"):
                    fault = "ok"
                if fault == "flip" and body and upstream.status_code in (200, 206) and payload:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        continue
                    if key.lower() == "location" and value.startswith(proxy.upstream):
                        value = proxy.url + value[len(proxy.upstream):]
                    self.send_header(key, value)
                if upstream.headers.get("Content-Encoding"):
                    self.send_header("Content-Encoding", upstream.headers["Content-Encoding"])
                length = len(body) if not head else int(upstream.headers.get("Content-Length", 0))
                if fault == "lying-length" and payload and not head:
                    length += 1000
                self.send_header("Content-Length", str(length))
                if fault in ("truncate", "lying-length", "trickle") and payload:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if head:
                    return
                if fault == "truncate" and payload:
                    self.wfile.write(body[: len(body) // 2])
                    return
                if fault == "trickle" and payload:
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                    return
                if fault == "throttle" and payload:
                    piece = max(1, proxy.rate // 20)
                    try:
                        for start in range(0, len(body), piece):
                            self.wfile.write(body[start:start + piece])
                            self.wfile.flush()
                            proxy.bytes_sent += len(body[start:start + piece])
                            time.sleep(0.05)
                    except OSError:
                        pass
                    return
                if payload:
                    proxy.bytes_sent += len(body)
                self.wfile.write(body)

        return Handler


_REFUSING: list[socket.socket] = []   # held open for the test run, so no later server is given their ports


def refusing_url() -> str:
    """An address where nothing listens: connections are refused at once. The port stays bound (a
    socket that never listens), so a server started later cannot take it and make it answer."""
    held = socket.socket()
    held.bind((LOOPBACK, 0))
    _REFUSING.append(held)
    return f"http://{LOOPBACK}:{held.getsockname()[1]}"


@contextlib.contextmanager
def started(*services: object) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()  # type: ignore[attr-defined]


# ---- TLS -----------------------------------------------------------------------------------

def self_signed_tls(root: Path) -> Path:
    """A certificate and key for 127.0.0.1 in ``root`` (``tls-cert.pem``, ``tls-key.pem``); returns the cert."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = root / "tls-cert.pem", root / "tls-key.pem"
    if cert_path.exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path


def https_server(root: Path, body: bytes) -> http.server.ThreadingHTTPServer:
    """An HTTPS server on 127.0.0.1 answering ``body`` to every GET, with the cert of ``self_signed_tls``."""
    import ssl

    cert = self_signed_tls(root)

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _Server((LOOPBACK, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, root / "tls-key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---- containerd ------------------------------------------------------------------------------

@dataclass
class Containerd:
    """A private containerd: its own root, state and socket; no CRI."""

    root: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return str(self.root / "c.sock")

    def ctr(self, *args: str, namespace: str = "bundler-test", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", self.address, "--namespace", namespace, *args],
                              capture_output=True, text=True, check=check, timeout=300)

    def start(self) -> Containerd:
        if shutil.which("containerd") is None:
            raise RuntimeError("containerd is not installed (scripts/setup.sh installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.toml"
        config.write_text(f'version = 2\nroot = "{self.root / "root"}"\nstate = "{self.root / "state"}"\n'
                          f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{self.address}"\n')
        log = self.root / "containerd.log"
        self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log.open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.ctr("version", check=False).returncode == 0, "containerd", process=self.process,
                   log=log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        with contextlib.suppress(OSError):
            for line in reversed(Path("/proc/mounts").read_text().splitlines()):
                target = line.split()[1]
                if target.startswith(str(self.root)):
                    subprocess.run(["umount", "-l", target], capture_output=True)
