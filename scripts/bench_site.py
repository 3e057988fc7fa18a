"""The site's registry for a cluster, side by side (run by ``scripts/bench.py --only site``).

bench.py's main workload (three images of about 2 GB uncompressed sharing a 1 GB base, 200+ MB of
wheels), built once. Then, each --runs times:

- ``bundler push`` into an empty registry, against what a site did before: ``restore --registry``
  for the images plus ``restore --index-dir`` for the wheels (the index folder a web server serves);
- the registry's disk after the push, against the bytes the push sent (its payload as pushed);
- one node restoring images and a venv from the registry (``restore oci://``), against the same
  node restoring from the bundle file;
- 1, 2 and 4 nodes (each a private dockerd and a venv of its own) restoring at once from the
  registry, against each of them restoring from the file at once.

Goals (issue: the destination is a cluster): a node from the registry is no slower than from the
file; four nodes at once take less than twice one node; the registry holds one copy (disk at most
1.1x the payload as pushed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import Bench, Sample, du, human, measure

from testbed import services

NODES = (1, 2, 4)


def run(bench: Bench, runs: int) -> None:
    profile = bench.profile(bench.refs, name="site")
    built = bench.bundler_build("site: build the bundle", profile) / "b.tar.zst"
    nodes = [services.Dockerd(Path(tempfile.mkdtemp(prefix=f"bench-node{n}-"))).start() for n in range(max(NODES))]
    try:
        for _ in range(runs):
            site = services.Registry(bench.fresh("site-registry")).start()
            try:
                ref = push(bench, built, site)
                old_way(bench, built)
                one_node(bench, built, ref, nodes[0])
                for count in NODES:
                    together(bench, built, ref, nodes[:count])
            finally:
                site.stop()
    finally:
        for node in nodes:
            node.stop()
    report(bench)


def push(bench: Bench, built: Path, site: services.Registry) -> str:
    target = f"{site.host}/bench/stack:1"
    out = bench.fresh("site-push") / "push.json"
    seconds, rss = measure(f"{sys.executable} -m bundler push {built} {target} --plain-http --json > {out}", bench.env,
                           shell=True)
    payload = json.loads(out.read_text())["bytes_sent"]
    bench.add("site: bundler push", Sample(seconds, rss, du(site.root / "data"), payload))
    return f"oci://{target}"


def old_way(bench: Bench, built: Path) -> None:
    site = services.Registry(bench.fresh("site-old-way")).start()
    index, dest = bench.fresh("site-old-way-index"), bench.fresh("site-old-way-dest")
    try:
        seconds, rss = measure(
            f"{sys.executable} -m bundler restore {built} --images-only --registry {site.host} -q && "
            f"{sys.executable} -m bundler restore {built} --wheels-only --index-dir {index} --dest {dest} -q",
            bench.env, shell=True)
        bench.add("site: restore --registry + --index-dir", Sample(seconds, rss, du(site.root / "data") + du(index)))
    finally:
        site.stop()


def _reset(node: services.Dockerd) -> None:
    ids = node.docker("images", "-aq").stdout.decode().split()
    if ids:
        node.docker("rmi", "-f", *ids, check=False)


def _restore(bench: Bench, source: str, dest: Path) -> list[str]:
    return [sys.executable, "-m", "bundler", "restore", source, "--dest", str(dest), "--python", str(bench.python310),
            "-q", *(["--plain-http"] if source.startswith("oci://") else [])]


def one_node(bench: Bench, built: Path, ref: str, node: services.Dockerd) -> None:
    for label, source in (("the file", str(built)), ("the registry", ref)):
        _reset(node)
        dest = bench.fresh("site-node")
        seconds, rss = measure(_restore(bench, source, dest), {**bench.env, "DOCKER_HOST": node.host})
        bench.add(f"site: one node from {label}", Sample(seconds, rss, du(dest)))


def together(bench: Bench, built: Path, ref: str, nodes: list[services.Dockerd]) -> None:
    for label, source in (("the file", str(built)), ("the registry", ref)):
        for node in nodes:
            _reset(node)
        started = time.monotonic()
        running = [subprocess.Popen(_restore(bench, source, bench.fresh(f"site-node{n}")),
                                    env={**bench.env, "DOCKER_HOST": node.host}, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE) for n, node in enumerate(nodes)]
        for process in running:
            _, err = process.communicate()
            if process.returncode:
                raise SystemExit(f"bench: a node's restore failed:\n{err.decode(errors='replace')[-2000:]}")
        bench.add(f"site: {len(nodes)} nodes at once from {label}", Sample(time.monotonic() - started, 0))


def report(bench: Bench) -> None:
    rows = bench.rows

    def med(name: str, attribute: str = "seconds") -> float:
        return rows[name].median(attribute)

    print("\n" + "=" * 100)
    print(f"the site's registry (bench.py's main workload), median of {bench.runs} run(s)")
    push_s, old_s = med("site: bundler push"), med("site: restore --registry + --index-dir")
    print(f"{'push':44} {push_s:8.1f} s   restore --registry + --index-dir {old_s:8.1f} s   ratio {push_s / old_s:5.2f}")
    disk, payload = med("site: bundler push", "disk"), med("site: bundler push", "output")
    print(f"{'registry disk after the push':44} {human(disk):>10}   payload as pushed {human(payload):>10}   "
          f"ratio {disk / payload:5.2f} (goal <= 1.10)")
    print(f"{'':44} (the old way's registry and index folder: {human(med('site: restore --registry + --index-dir', 'disk'))})")
    a, b = med("site: one node from the file"), med("site: one node from the registry")
    print(f"{'one node: restore from the registry':44} {b:8.1f} s   from the file {a:8.1f} s   ratio {b / a:5.2f} "
          "(goal <= 1.00)")
    one = med("site: 1 nodes at once from the registry")
    for count in NODES:
        a, b = med(f"site: {count} nodes at once from the file"), med(f"site: {count} nodes at once from the registry")
        print(f"{f'{count} nodes at once, from the registry':44} {b:8.1f} s   from the file {a:8.1f} s   "
              f"registry/one node {b / one:5.2f}" + ("  (goal < 2.00)" if count == 4 else ""))
