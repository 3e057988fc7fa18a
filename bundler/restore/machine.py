"""The machine a bundle is restored on, against the target it was built for.

A bundle's wheels are for one platform, CPython version and glibc (its manylinux level), its images
for one platform. Installed elsewhere they fail late and misleadingly (pip's "no matching
distribution" after the venv was made), so restore compares first and refuses in one line naming
both. Destinations that only store the files (a registry, a PEP 503 index) take any target.

The glibc a profile targets is the manylinux level its wheels are chosen for: a wheel tagged
``manylinux_2_31`` runs on glibc 2.31 and later. This module runs on the air-gapped side.
"""

from __future__ import annotations

import os

from bundler.errors import InputError
from bundler.format.head import Head, glibc_version
from bundler.oci.reference import Platform
from bundler.restore.options import RestoreOptions


def this_glibc() -> str | None:
    """This machine's glibc (``2.36``), or None where the C library is another (musl) or none."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return None
    name, _, version = found.partition(" ")
    return ".".join(version.split(".")[:2]) if name == "glibc" and version else None


def _same(wanted: Platform, machine: Platform) -> bool:
    return wanted.matches(machine.os, machine.architecture, machine.variant)


def check_machine(target_platform: str, glibc: str | None, needs: list[str], *, where: str,
                  given: str | None = None) -> None:
    """Refuse (InputError) a bundle whose target this machine (or the platform ``given`` in its stead)
    cannot run, naming both. ``needs`` names what would run the bundle here (``docker``, ``the venv``);
    when empty, anything goes. ``glibc`` is checked only for a venv, on this machine."""
    if not needs:
        return
    wanted = Platform.parse(target_platform)
    machine = Platform.parse(given) if given else Platform.of_this_machine()
    what = " and ".join(needs)
    if not _same(wanted, machine):
        here = f"--platform says {machine}" if given else f"this machine is {machine}"
        raise InputError(f"{where}: the bundle is for {wanted}, {here}: {what} would not run it (--registry and "
                         f"--index-dir DIR take any platform; --platform OS/ARCH restores anyway)")
    if given or "the venv" not in needs or wanted.os != "linux" or glibc is None:
        return
    found = this_glibc()
    if found is None or glibc_version(found) < glibc_version(glibc):
        have = f"glibc {found}" if found else "no glibc (another C library)"
        level = "manylinux_" + glibc.replace(".", "_")
        raise InputError(f"{where}: the bundle's wheels need glibc {glibc} or newer ({level}); this machine has "
                         f"{have} (--index-dir DIR alone writes them for another machine)")


def runs_here(head: Head, options: RestoreOptions) -> list[str]:
    """What of a restore runs the bundle's content on this machine: the images' destination unless it
    is a registry, and the venv; an index (``--index-dir`` alone) is for other machines."""
    needs = []
    if "images" in options.kinds and head.images and not options.registry:
        needs.append("containerd" if options.containerd else "docker")
    if "wheels" in options.kinds and head.wheels and options.make_venv:
        needs.append("the venv")
    return needs


def platform_for(head: Head, requested: str | None) -> str:
    """The one platform a restore into this machine (docker, containerd, a venv) takes from the bundle:
    ``requested`` (--platform), else the bundle's only one, else this machine's."""
    if requested is not None:
        wanted = Platform.parse(requested)
    elif len(head.platforms) == 1:
        return head.target.platform
    else:
        wanted = Platform.of_this_machine()
    for platform in head.platforms:
        found = Platform.parse(platform)
        if found.matches(wanted.os, wanted.architecture, wanted.variant):
            return platform
    source = "--platform" if requested is not None else "this machine"
    raise InputError(f"the bundle holds {', '.join(head.platforms)}; {source} is {wanted}: pass --platform, or "
                     "use --registry or --index-dir, which take every platform")
