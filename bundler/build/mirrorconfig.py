"""The mirrors written into the tools' own configuration: Docker's daemon.json and pip.conf.

What the mirror catalog means for each file; the editing (every other key kept, a file that
cannot be parsed refused, a backup, an atomic write, nothing done when the file already says this)
is configfile.py's, which a node's configuration for the site uses too (restore/siteconfig.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from bundler.build.mirrors import Mirrors
from bundler.configfile import DAEMON_JSON, REGISTRY_MIRRORS, ConfigPlan, plan_json, plan_pip_conf_keys
from bundler.context import DEFAULT_RETRY
from bundler.oci.reference import DOCKER_HUB

PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout")
PIP_TIMEOUT = int(DEFAULT_RETRY.read_timeout)


def default_pip_conf() -> Path:
    """pip's per-user configuration file."""
    name = "pip.ini" if sys.platform == "win32" else "pip.conf"
    return Path(platformdirs.user_config_dir("pip", appauthor=False, roaming=True)) / name


# ---- daemon.json -----------------------------------------------------------------------------

def docker_mirror_urls(mirrors: Mirrors) -> list[str]:
    """``registry-mirrors`` applies to Docker Hub only: docker.io's endpoints, less ``official``."""
    return [e.url for e in mirrors.for_registry(DOCKER_HUB) if not e.official]


def plan_daemon_json(mirrors: Mirrors, path: Path | None = None) -> ConfigPlan:
    path = path or DAEMON_JSON
    urls = docker_mirror_urls(mirrors)
    notes = tuple(f"{host}: not written, Docker's registry-mirrors applies to docker.io only"
                  for host, endpoints in mirrors.registries.items()
                  if host != DOCKER_HUB and any(not e.official for e in endpoints))
    if not urls:
        return ConfigPlan(path=path, text=None,
                          reason="docker.io has no mirror besides official, and Docker pulls from "
                                             "Docker Hub by default: daemon.json needs no registry-mirrors",
                          notes=notes)
    return plan_json(path, lambda data: {**data, REGISTRY_MIRRORS: urls}, notes)


# ---- pip.conf --------------------------------------------------------------------------------

def pip_settings(mirrors: Mirrors) -> dict[str, list[str]]:
    """The [global] keys for PyPI's endpoints: the first mirror is the index, the others extra indexes.

    ``official`` is left out: pip asks every index it is given for every package, so listing it
    would send each install overseas, not only when the mirrors fail.
    """
    urls = [e.url for e in mirrors.for_pypi() if not e.official]
    if not urls:
        return {}
    plain = [urlsplit(url).netloc.rpartition("@")[2] for url in urls if urlsplit(url).scheme == "http"]
    settings = {"index-url": urls[:1], "extra-index-url": urls[1:], "trusted-host": list(dict.fromkeys(plain)),
                "timeout": [str(PIP_TIMEOUT)]}
    return {key: values for key, values in settings.items() if values}


def plan_pip_conf(mirrors: Mirrors, path: Path | None = None) -> ConfigPlan:
    path = path or default_pip_conf()
    settings = pip_settings(mirrors)
    notes = ()
    if any(e.official for e in mirrors.for_pypi()) and settings:
        notes = ("official is not written: pip asks every index for every package, so it would be asked "
                 "on each install, not only when the mirrors fail",)
    if not settings:
        return ConfigPlan(path=path, text=None,
                          reason="PyPI has no mirror besides official, and pip uses its default index "
                                             "without any configuration: pip.conf needs nothing")
    return plan_pip_conf_keys(path, settings, owned=PIP_KEYS, notes=notes)
