"""The mirror catalog: which endpoints serve each upstream (a registry host, PyPI, or a model hub).

Endpoints are configured in layers, highest first: ``--mirrors FILE``, the profile's ``mirrors:``,
the user's ``mirrors.yaml``, the built-in catalog. For each upstream the highest layer that names it
wins. ``official`` stands for the upstream itself; for PyPI that is the client's own default index,
whose address this code never spells. How endpoints are tried is net/endpoints.py's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from bundler.context import DEFAULT_RETRY, RetryPolicy
from bundler.errors import MirrorsError
from bundler.format.models import HUBS, HUGGINGFACE, MODELSCOPE
from bundler.net.endpoints import OFFICIAL, ORIGIN_BUILTIN, Endpoint, Fallback
from bundler.yamlfile import Doc, read_text

PYPI = "pypi"                        # the model hubs (HUBS) are upstreams too, configured like pypi


_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?\Z")


# The public mirrors for mainland China, reviewed in CATALOG_REVIEWED from public reports (the review
# could not reach them; `bundler mirrors check` probes them from where you are). Docker Hub mirrors
# closed or narrowed one after another from June 2024: USTC's answers 403 outside its campus network,
# NetEase's and the universities' stopped, TUNA never mirrored Docker Hub (it carries no
# user-generated content); DaoCloud's still serves, an allowlist of images (official, verified and
# sponsored open-source publishers) and 403 for the rest, after which the next endpoint is asked.
# USTC's PyPI mirror has redirected to TUNA's since 2019, so it is not listed twice.
CATALOG_REVIEWED = "2026-11"


BUILTIN_CATALOG: dict[str, Any] = {
    "registries": {
        "docker.io": [
            "https://docker.m.daocloud.io",
            OFFICIAL,
        ],
    },
    "pypi": [
        "https://pypi.tuna.tsinghua.edu.cn/simple",
        "https://mirrors.aliyun.com/pypi/simple",
        OFFICIAL,
    ],
    HUGGINGFACE: ["https://hf-mirror.com", OFFICIAL],
    MODELSCOPE: [OFFICIAL],
}


OFFICIAL_HUB_URLS = {HUGGINGFACE: "https://huggingface.co", MODELSCOPE: "https://www.modelscope.cn"}


ORIGIN_FLAG = "--mirrors"


ORIGIN_PROFILE = "profile"


ORIGIN_USER = "user file"


def user_mirrors_file() -> Path:
    return Path(platformdirs.user_config_dir("bundler")) / "mirrors.yaml"


def hub_base_url(endpoint: Endpoint, hub: str) -> str:
    """The base URL of a model hub's API through ``endpoint``."""
    return OFFICIAL_HUB_URLS[hub] if endpoint.official else endpoint.url.rstrip("/")


@dataclass(frozen=True)
class Mirrors:
    """The effective endpoints: per registry host, for PyPI, and per model hub."""

    registries: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    pypi: tuple[Endpoint, ...] | None = None
    hubs: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)

    def for_registry(self, host: str) -> tuple[Endpoint, ...]:
        return self.registries.get(host) or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_pypi(self) -> tuple[Endpoint, ...]:
        return self.pypi or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_hub(self, hub: str) -> tuple[Endpoint, ...]:
        return self.hubs.get(hub) or (Endpoint(OFFICIAL, ORIGIN_BUILTIN),)

    def for_upstream(self, name: str) -> tuple[Endpoint, ...]:
        """A registry host's endpoints, PyPI's, or a hub's."""
        if name == PYPI:
            return self.for_pypi()
        return self.for_hub(name) if name in HUBS else self.for_registry(name)

    def over(self, lower: Mirrors) -> Mirrors:
        """This layer on top of ``lower``: per upstream, this layer's list wins where it has one."""
        return Mirrors({**lower.registries, **self.registries}, self.pypi if self.pypi is not None else lower.pypi,
                       {**lower.hubs, **self.hubs})

    def by_latency(self, latency: Mapping[tuple[str, Endpoint], float | None]) -> Mirrors:
        """Per upstream (a registry host, or ``pypi``), the endpoints that answered, fastest first, then
        the others in their configured order: a slow or dead mirror stays as a last resort.

        Upstreams ``latency`` knows nothing about keep their order.
        """
        def order(upstream: str, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
            timed = {e: t for e in endpoints if (t := latency.get((upstream, e))) is not None}
            rest = [e for e in endpoints if e not in timed]
            return (*sorted(timed, key=timed.__getitem__), *rest)

        registries = {host: order(host, endpoints) for host, endpoints in self.registries.items()}
        hubs = {hub: order(hub, endpoints) for hub, endpoints in self.hubs.items()}
        return Mirrors(registries, order(PYPI, self.pypi) if self.pypi is not None else None, hubs)


def _check_url(doc: Doc, value: str, key: str, *, line: int) -> str:
    if value == OFFICIAL:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise doc.fail(line, key, f"{value!r} is not an http(s) URL or 'official'")
    if parts.query or parts.fragment:
        raise doc.fail(line, key, f"{value!r}: an endpoint takes no query or fragment")
    return value


def parse_mirrors(doc: Doc, value: Any, key: str, *, line: int | None, origin: str) -> Mirrors:
    """Validate a mirrors mapping (a whole mirrors file, or a profile's ``mirrors:``)."""
    mapping = doc.mapping(value, key, line, allowed={"registries", PYPI, *HUBS})
    prefix = f"{key}." if key else ""
    registries: dict[str, tuple[Endpoint, ...]] = {}
    if "registries" in mapping:
        regs = doc.mapping(mapping["registries"], f"{prefix}registries", mapping.lines["registries"],
                           allowed=set(mapping["registries"]) if isinstance(mapping["registries"], dict) else set())
        for host, endpoints in regs.items():
            host_key = f"{prefix}registries.{host}"
            if not isinstance(host, str) or not _HOST.match(host):
                raise doc.fail(regs.lines[host], host_key, "expected a registry host like docker.io or host:5000")
            registries[host] = _endpoint_list(doc, endpoints, host_key, line=regs.lines[host], origin=origin)
    pypi = None
    if PYPI in mapping:
        pypi = _endpoint_list(doc, mapping[PYPI], f"{prefix}{PYPI}", line=mapping.lines[PYPI], origin=origin)
    hubs = {hub: _endpoint_list(doc, mapping[hub], f"{prefix}{hub}", line=mapping.lines[hub], origin=origin)
            for hub in HUBS if hub in mapping}
    return Mirrors(registries, pypi, hubs)


def _endpoint_list(doc: Doc, value: Any, key: str, *, line: int, origin: str) -> tuple[Endpoint, ...]:
    items = doc.string_list(value, key, line)
    if not items:
        raise doc.fail(line, key, "empty list: name at least one endpoint (or 'official')")
    seen = set()
    endpoints = []
    for index, (url, item_line) in enumerate(items):
        url = _check_url(doc, url, f"{key}[{index}]", line=item_line)
        if url in seen:
            raise doc.fail(item_line, f"{key}[{index}]", f"{url!r} is listed twice")
        seen.add(url)
        endpoints.append(Endpoint(url, origin))
    return tuple(endpoints)


def load_mirrors_file(path: Path, origin: str) -> Mirrors:
    doc = Doc(path, MirrorsError)
    data = doc.load_text(read_text(path, MirrorsError))
    if data is None:
        return Mirrors()
    return parse_mirrors(doc, data, "", line=None, origin=origin)


def builtin_mirrors() -> Mirrors:
    registries = {host: tuple(Endpoint(u, ORIGIN_BUILTIN) for u in urls)
                  for host, urls in BUILTIN_CATALOG["registries"].items()}
    hubs = {hub: tuple(Endpoint(u, ORIGIN_BUILTIN) for u in BUILTIN_CATALOG[hub]) for hub in HUBS}
    return Mirrors(registries, tuple(Endpoint(u, ORIGIN_BUILTIN) for u in BUILTIN_CATALOG[PYPI]), hubs)


def effective_mirrors(flag_file: Path | None = None, profile_mirrors: Mirrors | None = None,
                      user_file: Path | None = None) -> Mirrors:
    """Stack the configuration layers, highest first: flag file, profile, user file, built-in."""
    result = builtin_mirrors()
    user_file = user_file if user_file is not None else user_mirrors_file()
    if user_file.is_file():
        result = load_mirrors_file(user_file, f"{ORIGIN_USER} {user_file}").over(result)
    if profile_mirrors is not None:
        result = profile_mirrors.over(result)
    if flag_file is not None:
        result = load_mirrors_file(flag_file, f"{ORIGIN_FLAG} {flag_file}").over(result)
    return result


class CatalogFallback(Fallback):
    """The connected side's fallback: a note about a failing endpoint of the built-in catalog says how old
    the catalog is and how to stop trying it."""

    def __init__(self, policy: RetryPolicy = DEFAULT_RETRY, **options: object) -> None:
        hint = (f"from the built-in list, reviewed {CATALOG_REVIEWED}; a list of your own in {user_mirrors_file()} "
                "or --mirrors FILE stops trying it")
        super().__init__(policy, builtin_hint=hint, **options)
