"""What ``build`` prints: the plan of ``--dry-run``, and the summary of a build (for people, or as JSON
with ``--json``); what ``restore`` prints as its summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bundler.files import free_space, human_size

if TYPE_CHECKING:
    from bundler.bundle import BuildResult
    from bundler.plan import BuildPlan
    from bundler.restore import RestoreReport


def _size(size: int | None) -> str:
    return human_size(size) if size is not None else "size unknown"


def render_plan(planned: BuildPlan, output: Path, cache_root: Path) -> list[str]:
    """``build --dry-run``: each kind's pieces to fetch (with their size and endpoint), what the cache
    has, and the bundle and cache space it comes to."""
    lines = [f"dry run: nothing was downloaded; bundler build would fetch {human_size(planned.fetch_bytes)}"
             + (f" and {planned.unknown} files of unknown size" if planned.unknown else "")]
    for fetch in planned.fetches:
        cached = [p for p in fetch.pieces if p.cached]
        held = [p for p in fetch.pieces if p.held]
        lines.append(f"{fetch.kind:<9} {len(fetch.pieces)}: {len(cached)} in the cache "
                     f"({human_size(fetch.cached_bytes)}), {len(fetch.to_fetch)} to fetch "
                     f"({human_size(fetch.fetch_bytes)})"
                     + (f"; {len(held)} the site holds ({human_size(fetch.held_bytes)}), not carried" if held else ""))
        lines += [f"  fetch   {piece.name}  {_size(piece.size)}  from {piece.source}"
                  + ("  (the site holds it: for the SBOM only)" if piece.held else "") for piece in fetch.to_fetch]
    delta = (f" (a delta: {human_size(planned.held_bytes)} the site holds left out; a rebuilt layer is counted "
             "whole, and may travel as a smaller patch)") if planned.delta else ""
    lines.append(f"bundle    about {human_size(planned.bundle_bytes)} at {output} "
                 f"({human_size(free_space(output.parent))} free there){delta}")
    lines.append(f"cache     about {human_size(planned.cache_bytes)} more in {cache_root} while fetching "
                 f"({human_size(free_space(cache_root))} free there)")
    return lines


def plan_summary(planned: BuildPlan, output: Path, cache_root: Path) -> dict:
    return {"dry_run": True, "output": str(output), "cache": str(cache_root), **planned.as_dict()}


def build_summary(result: BuildResult, seconds: float) -> dict:
    head = result.head
    return {"paths": [str(p) for p in result.paths], "size": result.size, "images": len(head.images),
            "wheels": len(head.wheels), "models": len(head.models), "member_bytes": head.member_bytes,
            "restorer": str(result.restorer) if result.restorer else None, "seconds": round(seconds, 3),
            "fetch_seconds": round(result.fetch_seconds, 3), "pack_seconds": round(result.pack_seconds, 3),
            "fetched": {kind: {"wanted": s.wanted, "cached": s.cached, "downloaded": s.downloaded,
                               "bytes_downloaded": s.bytes_downloaded, "bytes_resumed": s.bytes_resumed,
                               "built": list(s.built)}
                        for kind, s in result.stats.items()}}


def build_line(result: BuildResult, seconds: float) -> str:
    head = result.head
    what = f"{len(head.images)} images, {len(head.wheels)} wheels" + (f", {len(head.models)} models"
                                                                     if head.models else "")
    where = result.paths[0] if len(result.paths) == 1 else f"{len(result.paths)} volumes {result.paths[0]} .. " \
                                                            f"{result.paths[-1].name}"
    return (f"wrote {where}: {human_size(result.size)} ({what}; {human_size(head.member_bytes)} before "
            f"compression) in {seconds:.1f} s (fetching {result.fetch_seconds:.1f} s, packing "
            f"{result.pack_seconds:.1f} s)")


def restore_summary(bundle: Path, report: RestoreReport, seconds: float) -> dict:
    check = None
    if report.check is not None:
        command, code, output = report.check
        check = {"command": command, "exit": code, "output": output}
    return {"bundle": str(bundle), "notes": list(report.notes), "venv": str(report.venv) if report.venv else None,
            "check": check, "seconds": round(seconds, 3)}


def restore_line(bundle: Path, report: RestoreReport, seconds: float) -> str:
    return f"restored {bundle} in {seconds:.1f} s" + (f" (venv {report.venv})" if report.venv else "")
