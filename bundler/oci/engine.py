"""The local docker engine, as both sides reach it: a client for the engine DOCKER_HOST (or the
default socket) points at, and its errors in one line. The connected side takes ``source: docker``
images from it; the air-gapped side loads images into it and lists what it holds."""

from __future__ import annotations

import os

from bundler.errors import DockerError


def docker_client() -> object:
    """The engine DOCKER_HOST (or the default socket) points at."""
    import docker
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds
        host = os.environ.get("DOCKER_HOST") or "the default socket"
        raise DockerError(f"no docker engine at {host}: {short_error(exc)}") from None


def short_error(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:300]
