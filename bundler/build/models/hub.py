"""The model hubs' APIs, through one endpoint at a time: what a repository holds at a revision, and
where each file's bytes are.

Hugging Face is listed with ``huggingface_hub``'s own ``HfApi`` (``repo_info`` with
``files_metadata``: the commit a revision resolves to, each file's size, git blob id and, for LFS
files, sha256), pointed at the endpoint: the Hub, hf-mirror.com or any mirror that speaks its API.
ModelScope, whose client library is much heavier, is listed with two documented calls
(``repo/files``, and ``repo/tree`` page by page for datasets), which give every file's sha256.
Downloading is not here: models.py streams the files itself (fallback, resume, verification).

Failures become mirrors.EndpointError, so that the fallback policy treats a hub like any mirror. A
listing is checked file by file as it arrives, with the format's own rules (format/models.py): an
unsafe path, a size or digest that is not one, a path listed twice is a lie of that endpoint, like
bytes that do not match their digest; the next endpoint is asked, and when every one lied the run
stops with an integrity failure naming the repository and the file, before anything is pinned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from bundler.build.mirrors import hub_base_url
from bundler.build.models.spec import ModelSpec
from bundler.context import RetryPolicy
from bundler.digest import is_sha256_hex
from bundler.format.models import GIT_OID, HUGGINGFACE, MODELSCOPE, file_problem, tree_problem
from bundler.net.endpoints import (
    BAD_RESPONSE,
    DENIED,
    MISMATCH,
    NOT_FOUND,
    REFUSED,
    RESET,
    SERVER_ERROR,
    TIMEOUT,
    Endpoint,
    EndpointError,
    http_error,
)
from bundler.net.http import Sessions, read_limited

MAX_LISTING = 64 << 20        # a listing of a dataset of a million files is well under this
MS_PAGE = 200                 # ModelScope's dataset tree, entries per page


@dataclass(frozen=True, kw_only=True)
class HubFile:
    """One file of a repository as its hub lists it (checked: see _checked_files)."""

    path: str
    size: int
    sha256: str | None            # the hub's: LFS files on Hugging Face, every file on ModelScope
    etag: str | None              # Hugging Face: the LFS sha256, or the git blob id of a small file
    git_oid: str | None = None    # Hugging Face, small files: what their bytes must hash to as a git blob


@dataclass(frozen=True)
class Listing:
    commit: str | None            # what the revision resolved to (None on ModelScope, whose API names none)
    files: tuple[HubFile, ...]


def base_url(spec: ModelSpec, endpoint: Endpoint) -> str:
    return hub_base_url(endpoint, spec.hub)


def file_url(spec: ModelSpec, endpoint: Endpoint, revision: str, *, path: str) -> str:
    """Where the hub serves one file of the repository at ``revision`` (a commit where one is pinned)."""
    base = base_url(spec, endpoint)
    if spec.hub == HUGGINGFACE:
        kind = "datasets/" if spec.repo_type == "dataset" else ""
        return f"{base}/{kind}{spec.repo}/resolve/{quote(revision, safe='')}/{quote(path)}"
    return f"{base}/api/v1/{spec.repo_type}s/{spec.repo}/repo?{urlencode({'Revision': revision, 'FilePath': path})}"


def list_repo(spec: ModelSpec, endpoint: Endpoint, policy: RetryPolicy, *, sessions: Sessions,
              token: str | None = None) -> Listing:
    """What ``spec``'s repository holds at its revision, through ``endpoint``."""
    if spec.hub == HUGGINGFACE:
        return _list_huggingface(spec, endpoint, policy, token=token)
    if spec.hub == MODELSCOPE:
        return _list_modelscope(spec, endpoint, policy, sessions=sessions)
    raise ValueError(spec.hub)


def _checked_files(spec: ModelSpec, files: list[HubFile]) -> tuple[HubFile, ...]:
    """A listing's files, each as the format would take it (format/models.py), or the endpoint's lie."""
    for file in files:
        found = file_problem(path=file.path, size=file.size, sha256=file.sha256, etag=file.etag)
        if found:
            raise EndpointError(MISMATCH, f"{spec}: file {file.path!r}: {found[1]}")
    clash = tree_problem([f.path for f in files])
    if clash:
        raise EndpointError(MISMATCH, f"{spec}: {clash[1]}")
    return tuple(files)


# ---- Hugging Face --------------------------------------------------------------------------

def _list_huggingface(spec: ModelSpec, endpoint: Endpoint, policy: RetryPolicy, *, token: str | None) -> Listing:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    # token=False: the user's Hugging Face token goes to the Hub itself, never to a mirror
    api = HfApi(endpoint=base_url(spec, endpoint), token=token if endpoint.official and token else False)
    try:
        info = api.repo_info(spec.repo, revision=spec.revision, repo_type=spec.repo_type, files_metadata=True,
                             timeout=policy.read_timeout)
    except OfflineModeIsEnabled:
        raise EndpointError(DENIED, "HF_HUB_OFFLINE is set: unset it to lock or build models") from None
    except Exception as exc:
        translated = _hub_error(exc)
        if translated is exc:
            raise
        raise translated from None
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not GIT_OID.match(commit):
        raise EndpointError(BAD_RESPONSE, f"{spec}: the answer names no commit")
    files = []
    for sibling in info.siblings or ():
        lfs = sibling.lfs
        if sibling.size is None or (lfs is None and sibling.blob_id is None):
            raise EndpointError(BAD_RESPONSE, f"{spec}: {sibling.rfilename} is listed without its size or blob id")
        if lfs is not None:
            files.append(HubFile(path=sibling.rfilename, size=lfs.size, sha256=lfs.sha256, etag=lfs.sha256))
        else:
            files.append(HubFile(path=sibling.rfilename, size=sibling.size, sha256=None, etag=sibling.blob_id,
                                 git_oid=sibling.blob_id))
    return Listing(commit, _checked_files(spec, files))


def _hub_error(exc: Exception) -> Exception:
    """huggingface_hub's exceptions (and those of its HTTP client) as one endpoint's failure."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        message = f"HTTP {status}: {str(exc).splitlines()[0]}"
        if status == 404:
            return EndpointError(NOT_FOUND, message)
        if status in (401, 403):
            return EndpointError(DENIED, message)
        return EndpointError(SERVER_ERROR if status >= 500 or status == 429 else BAD_RESPONSE, message)
    if isinstance(exc, httpx2.TimeoutException):
        return EndpointError(TIMEOUT, "timed out")
    if isinstance(exc, httpx2.ConnectError):
        refused = "refused" in str(exc).lower()
        return EndpointError(REFUSED if refused else RESET, REFUSED if refused else str(exc))
    if isinstance(exc, (httpx2.TransportError, httpx2.DecodingError)):
        return EndpointError(RESET, str(exc) or type(exc).__name__)
    if isinstance(exc, (ValueError, KeyError, TypeError)):   # an answer that is not the Hub's JSON
        return EndpointError(BAD_RESPONSE, f"not the Hub's answer ({type(exc).__name__}: {exc})")
    return exc


# ---- ModelScope ----------------------------------------------------------------------------

def _list_modelscope(spec: ModelSpec, endpoint: Endpoint, policy: RetryPolicy, *, sessions: Sessions) -> Listing:
    base = f"{base_url(spec, endpoint)}/api/v1/{spec.repo_type}s/{spec.repo}"
    entries: list = []
    if spec.repo_type == "dataset":
        page = 1
        while True:
            found = _modelscope_files(f"{base}/repo/tree", {"Revision": spec.revision, "Recursive": "True",
                                                            "PageNumber": page, "PageSize": MS_PAGE}, policy,
                                                            sessions=sessions)
            entries += found
            if len(found) < MS_PAGE:
                break
            page += 1
    else:
        entries = _modelscope_files(f"{base}/repo/files", {"Revision": spec.revision, "Recursive": "True"},
                                    policy, sessions=sessions)
    files = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise EndpointError(BAD_RESPONSE, f"{spec}: a listed file is not an object")
        if entry.get("Type", "blob") == "tree":
            continue
        path, size, sha256 = entry.get("Path"), entry.get("Size"), entry.get("Sha256")
        if path is None or size is None or sha256 is None:
            raise EndpointError(BAD_RESPONSE, f"{spec}: {path!r} is listed without its size or sha256")
        if isinstance(sha256, str) and is_sha256_hex(sha256.lower()):
            sha256 = sha256.lower()
        files.append(HubFile(path=path, size=size, sha256=sha256, etag=None))
    return Listing(None, _checked_files(spec, files))


def _modelscope_files(url: str, params: dict, policy: RetryPolicy, *, sessions: Sessions) -> list:
    response = sessions.get().get(url, params=params, stream=True, timeout=policy.timeout)
    with response:
        if response.status_code != 200:
            raise http_error(response, url)
        body = read_limited(response, MAX_LISTING, url, policy=policy)
    try:
        answer = json.loads(body)
    except ValueError:
        raise EndpointError(BAD_RESPONSE, f"{url}: not JSON") from None
    if not isinstance(answer, dict):
        raise EndpointError(BAD_RESPONSE, f"{url}: not ModelScope's answer")
    if answer.get("Success") is False or answer.get("Code", 200) not in (200, "200"):
        message = str(answer.get("Message") or answer.get("Code"))
        kind = NOT_FOUND if "not" in message.lower() and "exist" in message.lower() else BAD_RESPONSE
        raise EndpointError(kind, f"{url}: {message}")
    data = answer.get("Data", answer)
    files = data.get("Files") if isinstance(data, dict) else data
    if not isinstance(files, list):
        raise EndpointError(BAD_RESPONSE, f"{url}: no file list in the answer")
    return files
