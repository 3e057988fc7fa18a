"""Model hubs on 127.0.0.1, speaking the routes the real clients use, over files the tests make.

``HuggingFaceHub`` answers what huggingface_hub asks (read from its source, 2.x): revision info
(``/api/models/ORG/NAME/revision/REV``, with ``?blobs=True`` the files' sizes, git blob ids and
LFS sha256s), the tree listing (``/api/models/ORG/NAME/tree/REV``), and ``resolve/REV/PATH`` with
``ETag``, ``X-Repo-Commit``, and for an LFS file a redirect to a separate LFS store with
``X-Linked-Etag`` and ``X-Linked-Size``; Range works on every file. Datasets live under
``datasets/``. ``ModelScopeHub`` answers the ModelScope calls: ``repo/files`` (``repo/tree`` page
by page for datasets) with each file's sha256, and ``repo?Revision=&FilePath=``.

Commits are content-addressed like git's (a sha1), branches and tags move as the tests say. A
repository can be made to lie in its listings (``Repo.forge``), as a hostile hub or mirror would.
"""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate

from testbed.services import LOOPBACK, _QuietHandler, _serve

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".onnx")   # what a .gitattributes sends to LFS


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def safetensors(tensors: dict[str, list[float]], metadata: dict[str, str] | None = None) -> bytes:
    """A real safetensors file: an 8-byte little-endian header length, the JSON header, float32 data."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    data, offset = b"", 0
    for name, values in sorted(tensors.items()):
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@dataclass
class Repo:
    repo_type: str                                   # model | dataset
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)   # branches and tags -> commit
    forged: list[tuple[str, dict]] = field(default_factory=list)   # what its listings say falsely: see forge()

    def commit(self, files: dict[str, bytes], *refs: str) -> str:
        listing = "".join(f"{path}\0{git_oid(data)}\n" for path, data in sorted(files.items()))
        sha = hashlib.sha1(f"{self.repo_type}\n{listing}\n{len(self.commits)}".encode()).hexdigest()
        self.commits[sha] = dict(files)
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)

    def forge(self, path: str, **changes: object) -> None:
        """List ``path`` with ``changes`` to its entry, in the hub's own JSON (Hugging Face: ``rfilename``,
        ``size``, ``blobId``, ``lfs`` whose keys are merged; ModelScope: ``Path``, ``Size``, ``Sha256``);
        with no changes, list it twice. The files served stay the commit's."""
        self.forged.append((path, changes))

    def listed(self, entries: list[dict], name: str) -> list[dict]:
        """``entries`` (each naming its file under ``name``) as this repository's forgeries change them."""
        out = []
        for entry in entries:
            out.append(entry)
            for path, changes in self.forged:
                if entry.get(name) != path:
                    continue
                if not changes:
                    out.append(dict(entry))
                for key, value in changes.items():
                    merge = isinstance(value, dict) and isinstance(entry.get(key), dict)
                    entry[key] = {**entry[key], **value} if merge else value
        return out


class _Hub:
    """Repositories by (type, ORG/NAME), a server, and the requests it saw."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[str] = []

    def repo(self, name: str, repo_type: str = "model") -> Repo:
        return self.repos.setdefault((repo_type, name), Repo(repo_type))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _start(self) -> None:
        """Serve on a loopback port: each GET or HEAD is recorded and handed to self._route."""
        hub = self

        class Handler(_QuietHandler):
            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                hub.requests.append(self.path)
                parts = urllib.parse.urlsplit(self.path)
                segments = [urllib.parse.unquote(s) for s in parts.path.strip("/").split("/")]
                hub._route(self, segments, urllib.parse.parse_qs(parts.query), head)

        self._server = _serve(Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def _route(self, handler: _QuietHandler, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        raise NotImplementedError


def _send(handler: _QuietHandler, status: int, body: bytes = b"", headers: dict | None = None,
          content_type: str = "application/json", head: bool = False) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


def _send_file(handler: _QuietHandler, data: bytes, headers: dict, head: bool) -> None:
    """The bytes, or the part a Range header asks for."""
    start, end = 0, len(data) - 1
    spec = handler.headers.get("Range", "")
    if spec.startswith("bytes=") and "," not in spec and data:
        first, _, last = spec[len("bytes="):].partition("-")
        start, end = (int(first), min(int(last), end) if last else end) if first else (max(0, len(data) - int(last)),
                                                                                          end)
    partial = (start, end) != (0, len(data) - 1) and bool(data)
    handler.send_response(206 if partial else 200)
    if partial:
        handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(end + 1 - start if data else 0))
    handler.send_header("Accept-Ranges", "bytes")
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    if not head:
        handler.wfile.write(memoryview(data)[start:end + 1])   # no copy of a large file


class LfsStore(_Hub):
    """Where the Hub redirects LFS files: bytes by sha256, with Range."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self._start()

    def _route(self, handler: _QuietHandler, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        sha = segments[-1]
        if sha not in self.blobs:
            return _send(handler, 404, b"no such object", head=head)
        _send_file(handler, self.blobs[sha], {"ETag": f'"{sha}"'}, head)


class HuggingFaceHub(_Hub):
    def __init__(self) -> None:
        super().__init__()
        self.lfs = LfsStore()
        self._entries: dict[tuple[str, int], dict] = {}   # (path, id of its bytes) -> its tree entry, hashed once
        self._start()

    def _route(self, handler: _QuietHandler, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        try:
            if segments[0] == "api" and len(segments) > 1 and segments[1] in ("models", "datasets"):
                return self._api(handler, segments[1][:-1], segments[2:], query, head)
            repo_type = "model"
            if segments[0] == "datasets":
                repo_type, segments = "dataset", segments[1:]
            if len(segments) >= 5 and segments[2] == "resolve":
                return self._resolve(handler, repo_type, "/".join(segments[:2]), segments[3], "/".join(segments[4:]),
                                     head)
        except _NotFound as missing:
            return _send(handler, 404, json.dumps({"error": str(missing)}).encode(),
                         {"X-Error-Code": missing.code, "X-Error-Message": str(missing)}, head=head)
        _send(handler, 404, b'{"error": "no such route"}', head=head)

    def stop(self) -> None:
        super().stop()
        self.lfs.stop()

    def _find(self, repo_type: str, name: str, revision: str) -> tuple[Repo, str, dict[str, bytes]]:
        repo = self.repos.get((repo_type, name))
        if repo is None:
            raise _NotFound("RepoNotFound", f"Repository {name} not found")
        commit = repo.resolve(revision)
        if commit is None:
            raise _NotFound("RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit, repo.commits[commit]

    def _entry(self, path: str, data: bytes) -> dict:
        """A file's tree entry (its hashes computed once: a bench serves shards of hundreds of MiB)."""
        key = (path, id(data))   # a commit's bytes live as long as the hub
        if key not in self._entries:
            entry = {"type": "file", "oid": git_oid(data), "size": len(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
                entry.update(oid=git_oid(pointer), lfs={"oid": sha, "size": len(data), "pointerSize": len(pointer)})
            self._entries[key] = entry
        return dict(self._entries[key])

    def _api(self, handler: _QuietHandler, repo_type: str, rest: list[str], query: dict, head: bool) -> None:
        name = "/".join(rest[:2])
        if len(rest) == 2 or (len(rest) == 4 and rest[2] == "revision"):
            repo, commit, files = self._find(repo_type, name, rest[3] if len(rest) == 4 else "main")
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path, data in sorted(files.items()):
                sibling: dict = {"rfilename": path}
                if blobs:
                    entry = self._entry(path, data)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["lfs"]["size"],
                                          "pointerSize": entry["lfs"]["pointerSize"]}
                siblings.append(sibling)
            info = {"_id": commit[:24], "id": name, "sha": commit, "private": False, "disabled": False,
                    "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": repo.listed(siblings, "rfilename"),
                    "lastModified": "2025-11-30T00:00:00.000Z", "createdAt": "2025-11-30T00:00:00.000Z"}
            if repo_type == "model":
                info["modelId"] = name
            return _send(handler, 200, json.dumps(info).encode(), head=head)
        if len(rest) >= 4 and rest[2] == "tree":
            _, _, files = self._find(repo_type, name, rest[3])
            prefix = "/".join(rest[4:]) + "/" if len(rest) > 4 else ""
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries, folders = [], set()
            for path, data in sorted(files.items()):
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix):].split("/")
                if recursive or len(parts) == 1:
                    entries.append(self._entry(path, data))
                folders.update(prefix + "/".join(parts[:n]) for n in range(1, len(parts) if recursive else
                                                                            min(2, len(parts))))
            listed = [{"type": "directory", "oid": git_oid(f.encode()), "size": 0, "path": f} for f in sorted(folders)]
            return _send(handler, 200, json.dumps(listed + entries).encode(), head=head)
        raise _NotFound("EntryNotFound", f"no API route {'/'.join(rest)}")

    def _resolve(self, handler: _QuietHandler, repo_type: str, name: str, revision: str, path: str,
                 head: bool) -> None:
        _, commit, files = self._find(repo_type, name, revision)
        if path not in files:
            raise _NotFound("EntryNotFound", f"{path} does not exist on {revision}")
        data = files[path]
        entry = self._entry(path, data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry["oid"]}"', "Last-Modified": formatdate(usegmt=True)}
        if "lfs" not in entry:
            return _send_file(handler, data, headers, head)
        sha = entry["lfs"]["oid"]
        self.lfs.blobs[sha] = data
        headers.update({"Location": f"{self.lfs.url}/lfs/{sha}", "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data))})
        _send(handler, 302, b"", headers, head=head)


class ModelScopeHub(_Hub):
    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _route(self, handler: _QuietHandler, segments: list[str], query_lists: dict[str, list[str]],
               head: bool) -> None:
        query = {k: v[0] for k, v in query_lists.items()}
        if segments[:2] != ["api", "v1"] or len(segments) < 6 or segments[2] not in ("models", "datasets"):
            return _send(handler, 404, b'{"Code": 404, "Message": "no such route", "Success": false}', head=head)
        repo = self.repos.get((segments[2][:-1], "/".join(segments[3:5])))
        commit = repo.resolve(query.get("Revision", "master")) if repo else None
        if commit is None:
            body = {"Code": 10010205001, "Message": "model or revision does not exist", "Success": False}
            return _send(handler, 404, json.dumps(body).encode(), head=head)
        files = repo.commits[commit]
        route = "/".join(segments[5:])
        if route == "repo":
            path = query.get("FilePath", "")
            if path not in files:
                return _send(handler, 404, b'{"Code": 404, "Message": "file does not exist"}', head=head)
            return _send_file(handler, files[path], {}, head)
        if route in ("repo/files", "repo/tree"):
            entries = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(d),
                        "Sha256": hashlib.sha256(d).hexdigest(), "Revision": commit,
                        "IsLFS": p.endswith(LFS_SUFFIXES), "CommittedDate": 1764460800}
                       for p, d in sorted(files.items())]
            folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
            entries = [{"Name": f.rsplit("/", 1)[-1], "Path": f, "Type": "tree", "Size": 0} for f in folders] \
                + entries
            entries = repo.listed(entries, "Path")
            if route == "repo/tree":   # datasets: page by page
                size, number = int(query.get("PageSize", 100)), int(query.get("PageNumber", 1))
                entries = entries[(number - 1) * size:number * size]
            body = {"Code": 200, "Data": {"Files": entries}, "Message": "success", "Success": True}
            return _send(handler, 200, json.dumps(body).encode(), head=head)
        _send(handler, 404, b'{"Code": 404, "Message": "no such route", "Success": false}', head=head)


class _NotFound(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SampleHubs:
    """The hubs the tests build from, and what they hold."""

    hf: HuggingFaceHub
    ms: ModelScopeHub
    weights: bytes                   # one safetensors file that three repositories share
    commits: dict[str, str]          # name -> commit id

    def stop(self) -> None:
        self.hf.stop()
        self.ms.stop()


def sample_hubs() -> SampleHubs:
    """A model with two commits (tag v1.0, then main), a nested file and LFS weights; a second model
    and a ModelScope model sharing those weights; a dataset on each hub."""
    from testbed.wheels import incompressible

    hf, ms = HuggingFaceHub(), ModelScopeHub()
    weights = safetensors({"embed.weight": [float(i % 97) / 7 for i in range(40000)], "head.bias": [0.5] * 16})
    config = {"architectures": ["TinyModel"], "hidden_size": 16, "model_type": "tiny"}
    first = {"config.json": json.dumps(config).encode(), "model.safetensors": weights, "README.md": b"# tiny\n"}
    commits = {"tiny@v1.0": hf.repo("team/tiny").commit(first, "v1.0")}
    second = {**first, "config.json": json.dumps({**config, "hidden_size": 32}).encode(),
              "tokenizer/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
              "extra/weights.bin": incompressible(300_000, b"tiny-bin"), ".gitattributes": b"*.safetensors filter=lfs\n"}
    commits["tiny@main"] = hf.repo("team/tiny").commit(second, "main")
    commits["twin@main"] = hf.repo("team/twin").commit({"model.safetensors": weights, "config.json": b"{}"}, "main")
    commits["data@main"] = hf.repo("team/tiny-data", "dataset").commit(
        {"data/train.jsonl": b'{"text": "hello"}\n{"text": "world"}\n', "data/train.parquet": incompressible(5000)},
        "main")
    ms.repo("team/tiny-ms").commit({"configuration.json": b'{"framework": "pytorch", "task": "tiny"}',
                                   "model.safetensors": weights, "docs/README.md": b"# tiny on ModelScope\n"}, "master")
    ms.repo("team/ms-data", "dataset").commit({f"part-{n}.csv": f"a,b\n{n},{n * n}\n".encode() for n in range(3)},
                                              "master")
    return SampleHubs(hf, ms, weights, commits)
