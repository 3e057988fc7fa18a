"""The entry point of the one-file restorer (``python3 OUT.pyz restore OUT``; restorer.py makes it).

shiv's bootstrap unpacks the restorer's site-packages and calls ``main`` before anything else of
ours runs, so this module refuses a Python or a machine the restorer was not made for in one line
(exit 2), before the first extension module fails to load with a traceback. It therefore keeps to
what every CPython 3 parses: no ``from __future__ import annotations``, no ``X | Y``, no builtin
generics in annotations.
"""

import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

EXIT_INPUT = 2
MADE_FOR = "restorer.json"       # written beside this module when the restorer is made


def mismatch(made_for: dict, machine: Optional[str] = None) -> Optional[str]:
    """Why this interpreter on this machine (``machine``: platform.machine()'s answer) cannot run the
    restorer, or None when it can."""
    machine = machine or platform.machine() or "unknown"
    ours = [p for p in made_for["platforms"]
            if sys.platform == p["sys_platform"] and machine.lower() == p["platform_machine"].lower()]
    if not ours:
        made = ", ".join(p["platform"] for p in made_for["platforms"])
        return (f"this restorer is for {made}; this machine is {sys.platform}/{machine}: make one "
                "for it on the connected side with `bundler restorer -o FILE --platform OS/ARCH`")
    implementation = sys.implementation.name
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if implementation != "cpython" or version not in made_for["pythons"]:
        this = "CPython" if implementation == "cpython" else implementation
        runs_on = ", ".join(made_for["pythons"])
        return (f"this restorer runs on CPython {runs_on}; {sys.executable or 'this interpreter'} is {this} "
                f"{version}: run it with one of those")
    needed = ours[0].get("glibc")
    if needed:
        found = _glibc()
        if found is None or _numbers(found) < _numbers(needed):
            has = f"glibc {found}" if found else "another C library"
            return f"this restorer's extension modules need glibc {needed} or later; this machine has {has}"
    return None


def _glibc() -> Optional[str]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    name, _, version = text.partition(" ")
    return version if name == "glibc" and version else None


def _numbers(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def main() -> int:
    made_for = json.loads(Path(__file__).with_name(MADE_FOR).read_text(encoding="utf-8"))
    problem = mismatch(made_for)
    if problem is not None:
        sys.stderr.write(f"bundler: error: {problem}\n")
        return EXIT_INPUT
    from bundler import cli
    return cli.main(sys.argv[1:], air_gapped=True)
