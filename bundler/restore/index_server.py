"""The site's index port: a PEP 503 simple index (and PEP 691 JSON) of every wheel the site serves, and
beside it a Hugging Face endpoint for every Hugging Face repository it serves.

Python answers with metadata only. A file's bytes are the registry's one copy: a request for them
is redirected to the registry's blob URL on the host the request itself named (a node that reached
the index at HOST:INDEX-PORT is sent to HOST:REGISTRY-PORT, over https when the site has its
certificate), where the registry serves them with Range. pip and uv follow the redirect from a link
whose path ends in the wheel's name, checking the ``#sha256=`` fragment. huggingface_hub's HEAD of
``resolve/REV/PATH`` stops at a redirect to another port and takes what it needs from that answer
itself, as it does for the Hub's own redirect to its LFS store: ``X-Repo-Commit``, the ETag the
head recorded (``X-Linked-Etag``: the git blob id of a small file, the sha256 of an LFS file) and
``X-Linked-Size``; then it fetches the redirect's target.

Every request is one line of the site's log; what is refused (a route or a name the site does not
serve, a method other than GET and HEAD) says why.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from urllib.parse import parse_qs, quote, unquote, urlsplit

from packaging.utils import canonicalize_name

from bundler.errors import BundlerError
from bundler.restore.served import Catalog, HubRepo, Listing, ServedFile, ServedWheel, git_blob_id, lfs_pointer

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "text/html; charset=utf-8"
API_VERSION = "1.1"
REQUEST_TIMEOUT = 60         # seconds a connection may stay silent
POLL = 0.1                   # how often the server's loop looks whether it must stop
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}   # noqa: S104 - where serve reaches itself
HUB_KINDS = {"models": "model", "datasets": "dataset"}


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    refused: str = ""            # why, for the log, when the request is refused


@dataclass(frozen=True)
class Request:
    path: str                    # as sent, with its query
    accept: str
    host: str                    # the host the client reached the index by, without the port
    scheme: str                  # of the registry's URLs: http, or https with the site's certificate
    registry_port: int


# ---- the routes ----------------------------------------------------------------------------------

def answer(catalog: Catalog, request: Request) -> Reply:
    parts = urlsplit(request.path)
    raw = [s for s in parts.path.split("/") if s]
    segments = [unquote(s) for s in raw]
    query = parse_qs(parts.query)
    if segments[:1] == ["simple"]:
        return _simple(catalog, request, segments[1:], slash=parts.path.endswith("/"))
    if segments[:1] == ["files"] and len(segments) == 3:
        served = catalog.current().files.get(segments[1]) or catalog.current(fresh=True).files.get(segments[1])
        if served is None or served.wheel.filename != segments[2]:
            return _refused(404, "no such wheel on this site")
        return _redirect(request, served.repository, served.wheel.sha256)
    if segments[:1] == ["api"] and len(segments) >= 4 and segments[1] in HUB_KINDS:
        return _api(catalog, HUB_KINDS[segments[1]], segments[2:], query=query)
    kind = "model"
    if segments[:1] == ["datasets"]:
        kind, segments = "dataset", segments[1:]
    if len(segments) >= 5 and segments[2] == "resolve":
        return _resolve(catalog, request, kind, name="/".join(segments[:2]), revision=segments[3],
                        path="/".join(segments[4:]))
    return _refused(404, "no such route on this site", hub="EntryNotFound")


def _refused(status: int, why: str, *, hub: str = "") -> Reply:
    headers = {"X-Error-Code": hub, "X-Error-Message": why} if hub else {}
    return Reply(status, json.dumps({"error": why}).encode(), headers=headers, refused=why)


def _redirect(request: Request, repository: str, sha256: str, *, headers: dict[str, str] | None = None) -> Reply:
    host = f"[{request.host}]" if ":" in request.host else request.host
    location = f"{request.scheme}://{host}:{request.registry_port}/v2/{repository}/blobs/sha256:{sha256}"
    return Reply(302, headers={"Location": location, **(headers or {})})


# -- PEP 503 and PEP 691 --
def _simple(catalog: Catalog, request: Request, rest: list[str], *, slash: bool) -> Reply:
    listing = catalog.current()
    wants_json = _wants_json(request.accept)
    if not rest:
        if not slash:
            return Reply(301, headers={"Location": "/simple/"})
        names = sorted(listing.projects)
        if wants_json:
            return _json({"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]},
                         SIMPLE_JSON)
        links = "".join(f'    <a href="{quote(n)}/">{escape(n)}</a><br>\n' for n in names)
        return Reply(200, _page("Simple index", links), SIMPLE_HTML)
    if len(rest) != 1:
        return _refused(404, "no such page")
    project = canonicalize_name(rest[0])
    if project != rest[0] or not slash:
        return Reply(301, headers={"Location": f"/simple/{quote(project)}/"})
    files = listing.projects.get(project)
    if files is None:
        return _refused(404, f"no wheel of {project} on this site")
    files = sorted(files, key=lambda w: w.wheel.filename)
    if wants_json:
        return _json({"meta": {"api-version": API_VERSION}, "name": project,
                      "versions": sorted({w.wheel.version for w in files}),
                      "files": [{"filename": w.wheel.filename, "url": _file_url(w),
                                 "hashes": {"sha256": w.wheel.sha256}, "size": w.wheel.size,
                                 **({"requires-python": w.requires_python} if w.requires_python else {})}
                                for w in files]}, SIMPLE_JSON)
    links = "".join(_link(w) for w in files)
    return Reply(200, _page(f"Links for {project}", links), SIMPLE_HTML)


def _wants_json(accept: str) -> bool:
    """PEP 691's content negotiation: JSON when the client ranks it first (pip and uv do)."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                with contextlib.suppress(ValueError):
                    quality = float(param[2:])
        ranks[kind] = max(quality, ranks.get(kind, 0.0))
    html = max(ranks.get("application/vnd.pypi.simple.v1+html", 0.0), ranks.get("text/html", 0.0),
               ranks.get("*/*", 0.0))
    return ranks.get(SIMPLE_JSON, 0.0) > 0 and ranks.get(SIMPLE_JSON, 0.0) >= html


def _file_url(served: ServedWheel) -> str:
    return f"/files/{served.wheel.sha256}/{quote(served.wheel.filename)}"


def _link(served: ServedWheel) -> str:
    requires = f' data-requires-python="{escape(served.requires_python)}"' if served.requires_python else ""
    return (f'    <a href="{_file_url(served)}#sha256={served.wheel.sha256}"{requires}>'
            f"{escape(served.wheel.filename)}</a><br>\n")


def _page(title: str, links: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="{API_VERSION}">'
            f"<title>{escape(title)}</title></head>\n<body>\n{links}</body></html>\n").encode()


def _json(data: object, content_type: str = "application/json") -> Reply:
    return Reply(200, json.dumps(data).encode(), content_type)


# -- the Hugging Face endpoint --
def _hub_repo(listing: Listing, kind: str, name: str, *, revision: str) -> tuple[HubRepo, str] | Reply:
    repo = listing.hub.get((kind, name))
    if repo is None:
        return _refused(404, f"{kind} {name} is not on this site", hub="RepoNotFound")
    commit = repo.revisions.get(revision)
    if commit is None:
        served = ", ".join(sorted(r for r in repo.revisions if r not in repo.commits)) or "commits only"
        return _refused(404, f"{name} at {revision} is not on this site (it serves {served})", hub="RevisionNotFound")
    return repo, commit


def _api(catalog: Catalog, kind: str, rest: list[str], *, query: dict[str, list[str]]) -> Reply:
    name = "/".join(rest[:2])
    if len(rest) == 2 or (len(rest) == 4 and rest[2] == "revision"):
        found = _hub_repo(catalog.current(), kind, name, revision=rest[3] if len(rest) == 4 else "main")
        if isinstance(found, Reply):
            return found
        repo, commit = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, served in repo.commits[commit].items():
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=served.file.size, blobId=_blob_id(served))
                if served.lfs:
                    sibling["lfs"] = {"sha256": served.file.sha256, "size": served.file.size,
                                      "pointerSize": len(lfs_pointer(served.file))}
            siblings.append(sibling)
        info = {"_id": commit[:24], "id": name, "sha": commit, "private": False, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if kind == "model":
            info["modelId"] = name
        return _json(info)
    if len(rest) >= 4 and rest[2] == "tree":
        found = _hub_repo(catalog.current(), kind, name, revision=rest[3])
        if isinstance(found, Reply):
            return found
        repo, commit = found
        prefix = "/".join(rest[4:]) + "/" if len(rest) > 4 else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        files, folders = [], set()
        for path, served in repo.commits[commit].items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            if recursive or len(parts) == 1:
                files.append(_tree_entry(path, served))
            depth = len(parts) if recursive else min(2, len(parts))
            folders.update(prefix + "/".join(parts[:n]) for n in range(1, depth))
        if prefix and not files and not folders:
            return _refused(404, f"{prefix.rstrip('/')} is not a folder of {name} at {rest[3]}", hub="EntryNotFound")
        listed = [{"type": "directory", "oid": git_blob_id(f.encode()), "size": 0, "path": f} for f in sorted(folders)]
        return _json(listed + files)
    return _refused(404, f"no such route for {name} on this site", hub="EntryNotFound")


def _blob_id(served: ServedFile) -> str:
    return git_blob_id(lfs_pointer(served.file)) if served.lfs else str(served.file.etag)


def _tree_entry(path: str, served: ServedFile) -> dict:
    entry: dict = {"type": "file", "oid": _blob_id(served), "size": served.file.size, "path": path}
    if served.lfs:
        entry["lfs"] = {"oid": served.file.sha256, "size": served.file.size,
                        "pointerSize": len(lfs_pointer(served.file))}
    return entry


def _resolve(catalog: Catalog, request: Request, kind: str, *, name: str, revision: str, path: str) -> Reply:
    listing = catalog.current()
    if (kind, name) not in listing.hub:
        listing = catalog.current(fresh=True)
    found = _hub_repo(listing, kind, name, revision=revision)
    if isinstance(found, Reply):
        return found
    repo, commit = found
    served = repo.commits[commit].get(path)
    if served is None:
        return _refused(404, f"{path} is not a file of {name} at {revision}", hub="EntryNotFound")
    etag = f'"{served.file.etag}"'
    return _redirect(request, served.repository, served.file.sha256, headers={
        "X-Repo-Commit": commit, "ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(served.file.size)})


# ---- the server ------------------------------------------------------------------------------------

class IndexServer(http.server.ThreadingHTTPServer):
    """The index port's server: a thread per connection; with ``tls``, each connection's handshake
    happens in its own thread, so a slow client holds up nobody."""

    daemon_threads = True
    allow_reuse_address = True     # a restart right after a stop takes the port again at once

    def __init__(self, address: tuple[str, int], *, catalog: Catalog, registry_port: int,
                 tls: ssl.SSLContext | None, log: Callable[[str], None]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.catalog, self.registry_port, self.tls, self.log = catalog, registry_port, tls, log
        super().__init__(address, _Handler)

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.log(f"index {client_address[0]} TLS handshake failed: {exc} refused")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: object, client_address: tuple) -> None:  # noqa: ARG002
        import sys
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError)):
            self.log(f"index {client_address[0]} failed: {type(error).__name__}: {error}")

    def default_host(self) -> str:
        host = self.server_address[0]
        return LOOPBACK.get(host, host)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    server: IndexServer

    def log_message(self, format: str, *args: object) -> None:
        pass   # every request is logged once, in one line, by _send

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _not_allowed(self) -> None:
        reply = _refused(405, "the site is read-only: GET and HEAD only")
        reply.headers["Allow"] = "GET, HEAD"
        self._send(reply, head=False)

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _answer(self, *, head: bool) -> None:
        host = self.headers.get("Host") or self.server.default_host()
        if host.startswith("["):
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        request = Request(self.path, self.headers.get("Accept", ""), host,
                          "https" if self.server.tls is not None else "http", self.server.registry_port)
        try:
            reply = answer(self.server.catalog, request)
        except BundlerError as exc:
            reply = Reply(502, json.dumps({"error": str(exc)}).encode(), refused=f"the registry failed: {exc}")
        self._send(reply, head=head)

    def _send(self, reply: Reply, *, head: bool) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(reply.body)
        outcome = f"-> {reply.headers['Location']}" if "Location" in reply.headers and reply.status < 400 \
            else str(len(reply.body) if not head else 0)
        refused = f" refused: {reply.refused}" if reply.refused else ""
        self.server.log(f"index {self.client_address[0]} {self.command} {self.path} {reply.status} {outcome}{refused}")
