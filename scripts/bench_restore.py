"""Restore into docker against ``docker load`` alone (run by ``scripts/bench.py --only restore``).

For 1, 2 and 4 images of bench.py's workload (a 1.2 GiB base shared by every image, a top layer of
about 270 MiB each; the fourth image is made once beside the main workload, which it does not
change): ``bundler restore b.tar.zst --images-only`` against ``docker load -i`` of a ``docker save``
tar of the same images, uncompressed and already on disk, into the same empty engine, alternately,
each --runs times; the ratio of the medians, and each side's peak RSS. The bundle is bench.py's
default build of those images (``--images-only`` profile, zstd level 3).

BUNDLER_BENCH_BASELINE=DIR adds a column: the restore of the bundler whose source tree is DIR (an
earlier commit checked out there), run on the same bundle, for a before/after in the same run.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys

import psutil
from bench import CACHE, MB, Bench, Sample, Workload, du, human, main_images, measure, push

COUNTS = (1, 2, 4)
TOP4_SOURCES = ["/usr/lib/google-cloud-sdk"]


def fourth_image(bench: Bench) -> str:
    """img4: the main workload's base and a top of its own, pushed beside img1..img3."""
    images = main_images()
    base = images["img1"][0]
    layers = dict(images)
    layers["img4"] = [base, ("top4", TOP4_SOURCES, 270 * MB)]
    layout = Workload(CACHE).build("restore4", layers)   # the same bytes as main's for img1..img3
    ref = f"{bench.registry.host}/bench/img4:1"
    push(layout, "img4", ref)
    return ref


def cpu_measure(bench: Bench, command: list[str], env: dict[str, str]) -> tuple[Sample, float, float]:
    """``measure``, with the CPU seconds the command's processes and the docker engine spent meanwhile:
    on a shared machine the wall time follows the CPU a run needs more than it does on an idle one."""
    engine = psutil.Process(bench.dockerd.process.pid)
    engine_before = sum(engine.cpu_times()[:4])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, rss = measure(command, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return Sample(seconds, rss), client, sum(engine.cpu_times()[:4]) - engine_before


def load_avg() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(bench: Bench, runs: int) -> None:
    refs = [*bench.refs, fourth_image(bench)]
    baseline = os.environ.get("BUNDLER_BENCH_BASELINE")
    print(f"bench: restore: {load_avg()} at the start", flush=True)
    table = []
    for count in COUNTS:
        profile = bench.profile(refs[:count], wheels=False, name=f"restore{count}")
        out = bench.fresh(f"restore-{count}")
        bundle = out / "b.tar.zst"
        subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o", str(bundle),
                        "--cache", str(out / "cache"), "-q"], env=bench.env, check=True)
        bench.docker_reset()
        for ref in refs[:count]:
            bench.dockerd.docker("pull", "-q", ref)
        saved = out / "save.tar"
        bench.dockerd.docker("save", "-o", str(saved), *refs[:count], timeout=1200)
        rows = {"docker": f"restore {count}: docker load -i (docker save tar on disk)",
                "bundler": f"restore {count}: bundler restore --images-only"}
        if baseline:
            rows["baseline"] = f"restore {count}: bundler restore --images-only, {baseline}"
        commands = {"docker": ["docker", "load", "-q", "-i", str(saved)],
                    "bundler": [sys.executable, "-m", "bundler", "restore", str(bundle), "--images-only", "-q"],
                    "baseline": [sys.executable, "-m", "bundler", "restore", str(bundle), "--images-only", "-q"]}
        for number in range(runs):
            order = list(rows) if number % 2 == 0 else list(reversed(rows))   # neither side always goes first
            for side in order:
                bench.docker_reset()
                env = {**bench.env, "PYTHONPATH": baseline} if side == "baseline" else bench.env
                sample, client, engine = cpu_measure(bench, commands[side], env)
                bench.add(rows[side], sample)
                bench.cpu.setdefault(rows[side], []).append(client + engine)
                print(f"bench: {rows[side]}: CPU {client:.1f} s client + {engine:.1f} s engine; {load_avg()}",
                      flush=True)
        loaded = bench.dockerd.docker("images", "-aq").stdout.split()
        if len(loaded) != count:
            raise SystemExit(f"bench: after the last restore docker holds {len(loaded)} images, not {count}")
        table.append((count, du(saved), du(bundle), rows))
        bench.docker_reset()
        subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"bench: restore: {load_avg()} at the end", flush=True)
    report(bench, table, baseline)


def report(bench: Bench, table: list, baseline: str | None) -> None:
    def med(name: str, attribute: str = "seconds") -> float:
        return bench.rows[name].median(attribute)

    print("\n" + "=" * 110)
    print(f"restore into docker against docker load alone, median of {bench.runs} run(s); peak RSS of each command")
    print("CPU: seconds of the command's processes and the docker engine together, median")
    extra = f" {'before':>9} {'before/load':>11}" if baseline else ""
    print(f"{'images':>6} {'save tar':>10} {'bundle':>9} {'docker load -i':>14} {'bundler':>9} {'ratio':>6} "
          f"{'RSS load':>10} {'RSS bundler':>11} {'CPU load':>9} {'CPU bundler':>11}{extra}")
    for count, saved, bundle, rows in table:
        load, ours = med(rows["docker"]), med(rows["bundler"])
        cpu_load, cpu_ours = (statistics.median(bench.cpu[rows[side]]) for side in ("docker", "bundler"))
        line = (f"{count:6} {human(saved):>10} {human(bundle):>9} {load:13.1f}s {ours:8.1f}s {ours / load:6.2f} "
                f"{human(med(rows['docker'], 'rss')):>10} {human(med(rows['bundler'], 'rss')):>11} "
                f"{cpu_load:8.1f}s {cpu_ours:10.1f}s")
        if baseline:
            before = med(rows["baseline"])
            line += f" {before:8.1f}s {before / load:11.2f}"
        print(line)
        spread = ", ".join(f"{s.seconds:.1f}" for s in bench.rows[rows["bundler"]].samples)
        spread_load = ", ".join(f"{s.seconds:.1f}" for s in bench.rows[rows["docker"]].samples)
        print(f"{'':6} runs: docker load {spread_load}; bundler {spread}")
    worst = max(med(rows["bundler"]) / med(rows["docker"]) for _, _, _, rows in table)
    print(f"goal: bundler restore at most 1.0x docker load -i at 1, 2 and 4 images: worst {worst:.2f}x, "
          f"{'met' if worst <= 1.0 else 'missed'}")
    largest = max(s.rss for *_, rows in table for s in bench.rows[rows["bundler"]].samples)
    print(f"peak RSS of any bundler restore: {human(largest)}")


if __name__ == "__main__":
    raise SystemExit("run it as: scripts/bench.py --only restore")
