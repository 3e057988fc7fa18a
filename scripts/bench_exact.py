"""The exact-images trade-off, side by side (run by ``scripts/bench.py --only exact``).

The same three images (bench.py's workload: a 1.2 GiB shared base, three tops) carried two ways:
unpacked (the default: layers gunzipped, checked, zstd-compressed into the bundle) and exact
(``--exact-images``: layers kept as the registry serves them, gzip, its own manifests). For each:
the build (cold cache), the bundle's size, a restore into docker, and a restore into a registry.
`skopeo copy` to an OCI layout is the reference for pulling the same bytes.
"""

from __future__ import annotations

import sys

from bench import Bench, Sample, du, human, measure

from testbed import services

MODES = {"unpacked": [], "exact": ["--exact-images"]}


def run(bench: Bench, runs: int) -> None:
    profile = bench.profile(bench.refs, wheels=False, name="exact")
    for _ in range(runs):
        bench.pulls()
        for mode, flags in MODES.items():
            out = bench.fresh(f"exact-{mode}")
            seconds, rss = measure([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o",
                                    str(out / "b.tar.zst"), "--cache", str(out / "cache"), "-q", *flags], bench.env)
            bench.add(f"exact: build, {mode}", Sample(seconds, rss, du(out), du(out / "b.tar.zst")))
            bench.docker_reset()
            seconds, rss = measure([sys.executable, "-m", "bundler", "restore", str(out / "b.tar.zst"),
                                    "--images-only", "-q"], bench.env)
            bench.add(f"exact: restore into docker, {mode}", Sample(seconds, rss))
            site = services.Registry(bench.fresh(f"exact-site-{mode}")).start()
            try:
                seconds, rss = measure([sys.executable, "-m", "bundler", "restore", str(out / "b.tar.zst"),
                                        "--images-only", "--registry", site.host, "-q"], bench.env)
                bench.add(f"exact: restore into a registry, {mode}", Sample(seconds, rss, du(site.root)))
            finally:
                site.stop()
    report(bench)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def report(bench: Bench) -> None:
    rows = bench.rows
    print("\n" + "=" * 100)
    print(f"exact images against unpacked ones (3 images), median of {bench.runs} run(s)")
    print(f"{'':56} {'unpacked':>12} {'exact':>12} {'exact/unpacked':>15}")
    for what, row, attribute, show in (("build (cold cache)", "build", "seconds", seconds),
                                       ("bundle size", "build", "output", human),
                                       ("peak RSS of the build", "build", "rss", human),
                                       ("restore into docker", "restore into docker", "seconds", seconds),
                                       ("restore into a registry", "restore into a registry", "seconds", seconds),
                                       ("the registry's disk after it", "restore into a registry", "disk", human)):
        a = rows[f"exact: {row}, unpacked"].median(attribute)
        b = rows[f"exact: {row}, exact"].median(attribute)
        print(f"{what:56} {show(a):>12} {show(b):>12} {b / a:15.2f}")
    skopeo = rows["pull: skopeo copy (3 images, one OCI layout)"].median("seconds")
    exact = rows["exact: build, exact"].median("seconds")
    print(f"{'skopeo copy of the same images (the floor for exact)':56} {skopeo:11.1f}s {'':12} "
          f"{exact / skopeo:15.2f}  (exact build / skopeo)")


if __name__ == "__main__":
    raise SystemExit("run it as: scripts/bench.py --only exact")
