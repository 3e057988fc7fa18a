"""Resolution for the target with uv, and building a pure-Python sdist into a wheel.

pip and pip-compile evaluate environment markers for the interpreter that runs them, so a lock
made on a Mac for Linux silently loses torch's ``nvidia-*`` wheels. ``uv pip compile
--python-platform --python-version`` resolves for the target instead, and writes the pip-tools
requirements format. uv runs with no user configuration and never downloads a Python.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from bundler import proc
from bundler.build.cache import Cache
from bundler.build.profile import PythonSpec
from bundler.build.wheels.requirements import Pin, WheelTarget, parse_lock
from bundler.errors import InputError, LockError, OperationalError
from bundler.net.endpoints import (
    BAD_RESPONSE,
    MISMATCH,
    NOT_FOUND,
    REFUSED,
    RESET,
    SLOW,
    TIMEOUT,
    UNRESOLVED,
    Endpoint,
    EndpointError,
    Fallback,
)

BUILD_TIMEOUT = 900
UV_PROBE_TIMEOUT = 60


def uv_binary() -> str:
    try:
        from uv import find_uv_bin
        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
        raise OperationalError("uv is not installed (it is a dependency of bundler: pip install uv)") from None


def uv_env(cache: Cache, timeout: float) -> dict[str, str]:
    """The environment for uv: none of the user's uv or pip settings, our cache, no Python downloads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env.update({
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": str(cache.root / "uv"),
        "UV_HTTP_TIMEOUT": str(int(max(1, timeout))),
        "UV_HTTP_RETRIES": "0",      # retries are the mirror policy's business
        "UV_NO_PROGRESS": "1",
        "NO_COLOR": "1",
    })
    return env


@functools.lru_cache(maxsize=1)
def default_index_url() -> str:
    """The client's own default index (what ``official`` means for PyPI), asked of uv, offline."""
    result = proc.run([uv_binary(), "pip", "compile", "-", "--emit-index-url", "--no-header", "--offline",
                       "--no-config", "--quiet"], "asking uv for its default index", UV_PROBE_TIMEOUT, input="",
                      env={k: v for k, v in os.environ.items() if not k.startswith("UV_")})
    match = re.search(r"^--index-url (\S+)", result.stdout, re.M)
    if not match:
        raise OperationalError(f"could not learn uv's default index: {result.stderr.strip()[:200]}")
    return match.group(1)


def _condense(stderr: str) -> str:
    """uv's multi-line report as one line."""
    lines = [re.sub(r"^[\s×╰─▶│├]+", "", line).strip() for line in stderr.splitlines()]  # noqa: RUF001 - uv's box drawing
    lines = [line for line in lines if line and not line.startswith(("warning:", "hint:"))]
    return re.sub(r"\s+", " ", " ".join(lines))[:600] or "uv failed without a message"


def _classify(stderr: str) -> EndpointError:
    text = _condense(stderr)
    lower = stderr.lower()
    if "connection refused" in lower:
        return EndpointError(REFUSED, REFUSED)
    if "dns error" in lower or "failed to lookup address" in lower:
        return EndpointError(UNRESOLVED, UNRESOLVED)
    if "timed out" in lower or "timeout" in lower:
        return EndpointError(TIMEOUT, TIMEOUT)
    if "not found in the package registry" in lower or "were not found" in lower:
        return EndpointError(NOT_FOUND, text)
    if "hash mismatch" in lower:
        return EndpointError(MISMATCH, text)
    if "error sending request" in lower or "failed to fetch" in lower or "failed to download" in lower:
        return EndpointError(RESET, text)
    return EndpointError(BAD_RESPONSE, text)


NO_SOLUTION = "no solution found"
# In uv's "no solution" reason, what points at the endpoint instead: a file it could not read, a
# project the index does not list (a partial mirror). Another endpoint is then asked.
ENDPOINT_TROUBLE = ("invalid package format", "failed to read", "failed to fetch", "failed to download",
                    "hash mismatch", "error sending request", "not found in the package registry", "were not found",
                    "timed out", "connection")


def profiles_fault(stderr: str) -> bool:
    """uv found no versions that satisfy the requirements, with every file it read in order."""
    lower = stderr.lower()
    return NO_SOLUTION in lower and not any(marker in lower for marker in ENDPOINT_TROUBLE)


def unsatisfiable(spec: PythonSpec, target: WheelTarget, endpoint: Endpoint, *, stderr: str) -> LockError:
    """uv found no versions that satisfy the requirements: the profile's fault, not the endpoint's, so
    no other endpoint is asked. Names the requirements uv's reason mentions, by file and line."""
    reason = re.sub(r"^.*?no solution found when resolving dependencies:?\s*(cause:\s*)?", "", _condense(stderr),
                    flags=re.IGNORECASE)
    where = f"no solution for {target} (resolved through {endpoint}): {reason}"
    named = _requirements_named(spec, reason)
    if not named:
        return LockError(f"{spec.requirements_file or spec.source}: the requirements have {where}")
    (place, text), *others = named
    also = "".join(f"; see also {other} ({other_text})" for other, other_text in others)
    return LockError(f"{place}: {text}: {where}{also}")


def _requirements_named(spec: PythonSpec, reason: str) -> list[tuple[str, str]]:
    """(``file:line: key``, the requirement) of each of the profile's requirements ``reason`` names, in
    the order it names them."""
    written: list[tuple[str, str]] = []        # (where, text)
    if spec.requirements_file is not None:
        for number, raw in enumerate(spec.requirements_file.read_text(errors="replace").splitlines(), start=1):
            text = raw.split(" #")[0].strip()
            if text and not text.startswith(("#", "-")):
                written.append((f"{spec.requirements_file}:{number}", text))
    else:
        written = [(f"{spec.source}:{line}: python.requirements[{index}]", text)
                   for index, (text, line) in enumerate(zip(spec.requirements, spec.lines))]
    first: dict[str, int] = {}
    for match in re.finditer(r"[A-Za-z0-9][A-Za-z0-9._-]*", reason):
        first.setdefault(canonicalize_name(match.group()), match.start())
    named = []
    for place, text in written:
        try:
            name = canonicalize_name(Requirement(text).name)
        except InvalidRequirement:
            continue
        if name in first:
            named.append((first[name], place, text))
    return [(place, text) for _, place, text in sorted(named)]


def _index_args(endpoint: Endpoint, spec: PythonSpec) -> list[str]:
    args = [] if endpoint.official else ["--index-url", endpoint.url]
    for url in spec.extra_index_urls:
        args += ["--extra-index-url", url]
    for link in spec.find_links:
        args += ["--find-links", link]
    return args


def resolve(spec: PythonSpec, target: WheelTarget, pypi: tuple[Endpoint, ...], fallback: Fallback,
            cache: Cache, cancel: threading.Event | None = None) -> str:
    """The requirements lock (pip-tools format, with hashes) for ``target``, through the PyPI endpoints."""
    with tempfile.TemporaryDirectory(prefix="resolve-", dir=cache.tmp) as tmp:
        if spec.requirements_file is not None:
            cwd, source = spec.requirements_file.parent, spec.requirements_file.name
        else:
            cwd, source = Path(tmp), "requirements.in"
            (cwd / source).write_text("".join(f"{line}\n" for line in spec.requirements))

        def attempt(endpoint: Endpoint) -> str:
            args = [uv_binary(), "pip", "compile", source, "--python-platform", target.uv_platform,
                    "--python-version", target.python, "--generate-hashes", "--no-header",
                    "--index-strategy", "first-index", "--quiet", *_index_args(endpoint, spec)]
            limit = fallback.policy.resolve_timeout
            try:
                result = proc.run(args, f"resolving through {endpoint}", limit, cwd=cwd, cancel=cancel,
                                  env=uv_env(cache, fallback.policy.read_timeout))
            except proc.TimedOut:
                raise EndpointError(SLOW, f"resolution took longer than {limit:g} s") from None
            if result.returncode:
                if profiles_fault(result.stderr):
                    raise unsatisfiable(spec, target, endpoint, stderr=result.stderr)
                raise _classify(result.stderr)
            return result.stdout

        text = fallback.run(f"resolving the requirements for {target}", pypi, attempt)
    check_exact_pins(spec, parse_lock(text, "the resolved lock"))
    return text


def check_exact_pins(spec: PythonSpec, pins: list[Pin]) -> None:
    """``torch==2.1.2`` must not come back as ``2.1.2+cu121`` from an extra index without being asked."""
    locked = {pin.name: pin.version for pin in pins}
    for text in spec.requirements:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator != "==" or "+" in specifier.version or "*" in specifier.version:
                continue
            got = locked.get(canonicalize_name(requirement.name))
            if got is not None and Version(got).local and Version(got).public == Version(specifier.version).public:
                raise InputError(f"{requirement.name}=={specifier.version} resolved to {got}, a local build from an "
                                 f"extra index; ask for {requirement.name}=={got} if that build is the one you want")


def build_wheel(sdist: Path, filename: str, pin: Pin, target: WheelTarget, index: Endpoint | None,
                cache: Cache, cancel: threading.Event | None = None) -> Path:
    """Build a wheel from a (verified) sdist; refuse one that needs compiling for another machine."""
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache.tmp))
    try:
        source = work / filename
        shutil.copyfile(sdist, source)
        out = work / "dist"
        args = [uv_binary(), "build", "--wheel", "--out-dir", str(out), str(source), "--quiet"]
        if index is not None and not index.official:
            args += ["--index-url", index.url]
        env = uv_env(cache, 60)
        env["SOURCE_DATE_EPOCH"] = env.get("SOURCE_DATE_EPOCH", "315532800")
        result = proc.run(args, f"building {pin.name}=={pin.version} from its sdist", BUILD_TIMEOUT, env=env,
                          cancel=cancel)
        if result.returncode:
            raise OperationalError(f"building {pin.name}=={pin.version} from its sdist failed: "
                                   f"{_condense(result.stderr)}")
        (wheel,) = list(out.glob("*.whl"))
        tags = parse_wheel_filename(wheel.name)[3]
        if not tags & set(target.tags):
            shown = ".".join(sorted(str(t) for t in tags))
            raise LockError(f"{pin.name}=={pin.version}: only an sdist is published, and it compiles to {shown}, "
                            f"which does not run on {target}; build the wheel on such a machine and add it to "
                            "find_links, or pin a version that publishes wheels")
        # A folder of its own keeps the wheel's name (pip reads its tags from it); the caller removes it.
        final = Path(tempfile.mkdtemp(prefix="built-", dir=cache.tmp)) / wheel.name
        shutil.move(wheel, final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)
