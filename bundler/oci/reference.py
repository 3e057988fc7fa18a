"""Image references and platforms: parsing, Docker Hub normalisation, matching.

The grammar follows the distribution project's reference package: ``[domain/]path[:tag][@digest]``,
where the first component is a domain only if it holds a dot or a colon or is ``localhost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bundler.digest import Digest
from bundler.errors import ImageReferenceError, InputError

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN = re.compile(
    r"(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?\Z"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_MAX_NAME = 255


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse ``text`` as docker does; an image with neither tag nor digest gets ``latest``."""
        if not text or text != text.strip():
            raise ImageReferenceError(f"image reference {text!r}: empty or surrounded by spaces")
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            try:
                digest = Digest(digest)
            except ValueError:
                raise ImageReferenceError(
                    f"image reference {text!r}: digest {digest!r} is not sha256: and 64 lowercase hex digits") from None
        tag = None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, tag = rest.rsplit(":", 1)
            if not _TAG.match(tag):
                raise ImageReferenceError(f"image reference {text!r}: {tag!r} is not a valid tag")
        parts = rest.split("/")
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            registry, path = parts[0], parts[1:]
            if not _DOMAIN.match(registry):
                raise ImageReferenceError(f"image reference {text!r}: {registry!r} is not a valid registry host")
        else:
            registry, path = DOCKER_HUB, parts
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
            if len(path) == 1:
                path = ["library", *path]
        for component in path:
            if not _COMPONENT.match(component):
                hint = " (repository names are lowercase)" if component.lower() != component else ""
                raise ImageReferenceError(
                    f"image reference {text!r}: {component!r} is not a valid repository name component{hint}")
        repository = "/".join(path)
        if len(repository) > _MAX_NAME:
            raise ImageReferenceError(f"image reference {text!r}: repository name is longer than {_MAX_NAME}")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, fully qualified."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The repository as ``docker images`` shows it (``ubuntu``, ``pytorch/pytorch``, ``host/x``)."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return self.name

    @property
    def familiar(self) -> str:
        """The tag reference docker would print: what a bundle's ``RepoTags`` holds."""
        return f"{self.familiar_name}:{self.tag}" if self.tag else self.familiar_name

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


_OSES = {"linux", "windows", "darwin", "freebsd"}
_ARCHES = {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64"}
_VARIANT = re.compile(r"v[0-9]+\Z")
# The variant an index omits for these architectures (containerd's platforms.Normalize).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3):
            raise InputError(f"platform {text!r}: expected os/architecture[/variant], like linux/amd64")
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        if os_ not in _OSES:
            raise InputError(f"platform {text!r}: unknown os {os_!r} (known: {', '.join(sorted(_OSES))})")
        if arch not in _ARCHES:
            raise InputError(
                f"platform {text!r}: unknown architecture {arch!r} (known: {', '.join(sorted(_ARCHES))})")
        if variant is not None and not _VARIANT.match(variant):
            raise InputError(f"platform {text!r}: variant {variant!r} is not like v7 or v8")
        return cls(os_, arch, variant)

    @classmethod
    def of_this_machine(cls) -> Platform:
        """The platform this process runs on, as images and wheels name it."""
        import platform as host
        import sys
        os_ = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")
        machine = host.machine().lower()
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
                "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine)
        if arch is None and machine.startswith("armv7"):
            return cls(os_, "arm", "v7")
        return cls(os_, arch or machine)

    def matches(self, os_: str, architecture: str, variant: str | None) -> bool:
        """Whether an index entry's platform serves this one (variant ``v8`` equals no variant on arm64)."""
        if (os_, architecture) != (self.os, self.architecture):
            return False
        want = self.variant or _DEFAULT_VARIANT.get(self.architecture)
        have = variant or _DEFAULT_VARIANT.get(architecture)
        return want is None or have is None or want == have

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def repository_of(name: str) -> str | None:
    """The repository an image name (as bundle.json and inventories write it) is in, or None for a
    name that is no image reference."""
    try:
        return ImageRef.parse(name).repository
    except Exception:  # noqa: BLE001 - a name bundler cannot parse names no repository
        return None
