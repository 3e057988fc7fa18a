"""The small point, side by side (run by ``scripts/bench.py --only small [--level-small 9]``).

bench.py's main workload built by the manual pipeline (docker pull, docker save | zstd -T0 -3, pip
download + tar | zstd -3) and by ``bundler build --level 9``, alternated in each run so that the
machine's other load falls on both alike; beside them the same bundler build with its layers framed
with the 64 MiB window that level 9 used before (the 128 MiB it uses now is the most a stock
``zstd -d`` takes without flags). Every bundle is then decoded by the zstd CLI without flags. Goal:
at most 0.83x the manual pipeline's size in at most 0.5x its time.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys

from bench import Bench, Sample, du, human, measure

# the same build with level 9's layer window at 64 MiB (how it was before 128 MiB), for the comparison
WINDOW_26 = ("import sys\n"
             "import bundler.build.images.layers as layers\n"
             "layers.SMALL_BUNDLE_WINDOW_LOG = 26\n"
             "from bundler import cli\n"
             "raise SystemExit(cli.main(sys.argv[1:]))\n")


def run(bench: Bench, runs: int) -> None:
    profile = bench.profile(bench.refs)
    level = str(bench.level_small)
    manual = "build: manual (docker pull, save | zstd, pip download)"
    rows = {"128": f"build: bundler --level {level} (128 MiB window)",
            "64": f"build: bundler --level {level}, 64 MiB window (as before)"}
    for _ in range(runs):
        bench.manual_build()
        for window, prefix in (("128", ["-m", "bundler"]), ("64", ["-c", WINDOW_26])):
            out = bench.fresh(f"small-{window}")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, rss = measure([sys.executable, *prefix, "build", "--no-restorer", str(profile), "-o",
                                    str(out / "b.tar.zst"), "--cache", str(out / "cache"), "-q", "--level", level],
                                   bench.env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            bench.cpu.setdefault(rows[window], []).append(after.ru_utime + after.ru_stime - before.ru_utime
                                                          - before.ru_stime)
            bench.add(rows[window], Sample(seconds, rss, du(out), du(out / "b.tar.zst")))
            stock = subprocess.run(["bash", "-o", "pipefail", "-c", f"zstd -dc {out / 'b.tar.zst'} | tar -t | wc -l"],
                                   capture_output=True, text=True)
            if stock.returncode:
                raise SystemExit(f"bench: zstd -dc (no flags) cannot read the bundle: {stock.stderr.strip()}")
            print(f"bench: zstd -dc without flags reads it: {stock.stdout.strip()} members", flush=True)
    print("\n" + "=" * 100)
    print(f"the small point (bench.py's main workload), median of {runs} run(s)")
    print(f"{'':60} {'time':>8} {'peak RSS':>10} {'output':>10} {'size/manual':>12} {'time/manual':>12}")
    base = bench.rows[manual]
    for name in (manual, *rows.values()):
        row = bench.rows[name]
        print(f"{name:60} {row.median('seconds'):7.1f}s {human(row.median('rss')):>10} "
              f"{human(row.median('output')):>10} {row.median('output') / base.median('output'):12.3f} "
              f"{row.median('seconds') / base.median('seconds'):12.3f}")
    cpu = {window: statistics.median(bench.cpu[name]) for window, name in rows.items()}
    print(f"  CPU seconds of the bundler builds (what the machine's other load moves least): 128 MiB window "
          f"{cpu['128']:.1f} s, 64 MiB {cpu['64']:.1f} s ({cpu['128'] / cpu['64']:.2f}x)")
    small = bench.rows[rows["128"]]
    size = small.median("output") / base.median("output")
    time = small.median("seconds") / base.median("seconds")
    print(f"  size, --level {level} / manual {size:.3f} [<= 0.83] {'met' if size <= 0.83 else 'MISSED'}; "
          f"time {time:.3f} [<= 0.5] {'met' if time <= 0.5 else 'MISSED'}")
