"""Models against the manual way (run by ``scripts/bench.py --only models``).

A Hugging Face repository on the test bed's hub (tests/testbed/hubs.py, on 127.0.0.1; its LFS files
behind a redirect to a separate store, as on the Hub): two 512 MiB safetensors shards of random
bytes (real weights barely compress either), a 4 MiB tokenizer.json and a config. Carried two ways:

- bundler: ``bundler build`` of a profile with only that model (cold cache), then ``bundler restore
  --models-only`` into the Hugging Face cache layout;
- manual: ``huggingface_hub.snapshot_download`` into an empty cache (what ``huggingface-cli
  download`` does), ``tar | zstd -3`` of that cache, then ``zstd -dc | tar -x`` on the far side.

Both restores are then read back as a user would: ``HF_HUB_OFFLINE=1 snapshot_download`` must
find the snapshot, and every file must hash to what the hub serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import Sample, clean_env, du, human, measure

from testbed import hubs

REPO_ID = "bench/model"
SHARD = 512 << 20


def files() -> dict[str, bytes]:
    """The repository's files: random shards, made once per bench run."""
    tokens = {f"token{n}": n for n in range(200_000)}
    return {"config.json": json.dumps({"model_type": "bench", "hidden_size": 4096}).encode(),
            "tokenizer.json": json.dumps({"model": {"vocab": tokens}}, indent=1).encode()[:4 << 20],
            "model-00001-of-00002.safetensors": os.urandom(SHARD),
            "model-00002-of-00002.safetensors": os.urandom(SHARD)}


def run(work: Path, runs: int) -> None:
    served = files()
    expected = {path: hashlib.sha256(data).hexdigest() for path, data in served.items()}
    hub = hubs.HuggingFaceHub()
    hub.repo(REPO_ID).commit(served, "main")
    rows: dict[str, list[Sample]] = {}

    def add(name: str, sample: Sample) -> None:
        rows.setdefault(name, []).append(sample)
        print(f"bench: models: {name}: {sample.seconds:.1f} s, peak RSS {human(sample.rss)}, "
              f"output {human(sample.output)}", flush=True)

    env = clean_env()
    env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1"})
    try:
        profile = work / "models.yaml"
        profile.write_text(f"name: models\ntarget:\n  platform: linux/amd64\nmodels:\n  - hf: {REPO_ID}\n"
                           f"mirrors:\n  huggingface: [{hub.url}]\n")
        for number in range(runs):
            out = work / f"models-{number}"
            out.mkdir()
            bundle = out / "b.tar.zst"
            seconds, rss = measure([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o",
                                    str(bundle), "--cache", str(out / "cache"), "-q"], env)
            add("build, bundler", Sample(seconds, rss, 0, bundle.stat().st_size))
            manual = out / "manual.tar.zst"
            fetch = (f"{sys.executable} -c \"from huggingface_hub import snapshot_download; "
                     f"snapshot_download('{REPO_ID}', cache_dir='{out}/hf-cache')\" && "
                     f"tar -C {out}/hf-cache -cf - . | zstd -q -3 -T0 -o {manual}")
            seconds, rss = measure(fetch, {**env, "HF_ENDPOINT": hub.url}, shell=True)
            add("build, snapshot_download + tar | zstd -3", Sample(seconds, rss, 0, manual.stat().st_size))
            dest = out / "site"
            seconds, rss = measure([sys.executable, "-m", "bundler", "restore", str(bundle), "--models-only",
                                    "--dest", str(dest), "-q"], env)
            add("restore, bundler", Sample(seconds, rss, du(dest)))
            check(dest / "huggingface" / "hub", expected, env)
            (out / "manual-site").mkdir()
            seconds, rss = measure(f"zstd -dc {manual} | tar -x -C {out}/manual-site", env, shell=True)
            add("restore, zstd -dc | tar -x", Sample(seconds, rss, du(out / "manual-site")))
            check(out / "manual-site", expected, env)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    finally:
        hub.stop()
    report(rows, runs, sum(len(data) for data in served.values()))


def check(cache: Path, expected: dict[str, str], env: dict[str, str]) -> None:
    """What a user runs on the far side: the snapshot is found offline, and every file is the hub's."""
    script = ("import hashlib, json, pathlib, sys; from huggingface_hub import snapshot_download; "
              f"p = pathlib.Path(snapshot_download('{REPO_ID}', cache_dir=sys.argv[1])); "
              "print(json.dumps({f.relative_to(p).as_posix(): hashlib.file_digest(open(f, 'rb'), 'sha256').hexdigest() "
              "for f in p.rglob('*') if f.is_file()}))")
    result = subprocess.run([sys.executable, "-c", script, str(cache)], env={**env, "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True)
    if result.returncode or json.loads(result.stdout) != expected:
        raise SystemExit(f"bench: the restored models at {cache} are not what the hub served: {result.stderr[-500:]}")


def report(rows: dict[str, list[Sample]], runs: int, served: int) -> None:
    def median(name: str, attribute: str) -> float:
        return statistics.median(getattr(s, attribute) for s in rows[name])

    print("\n" + "=" * 100)
    print(f"models: one Hugging Face repository, {human(served)} (two 512 MiB shards), median of {runs} run(s)")
    for name in rows:
        print(f"  {name:44} {median(name, 'seconds'):6.1f} s  peak RSS {human(median(name, 'rss')):>10}"
              + (f"  {human(median(name, 'output')):>10}" if median(name, "output") else ""))
    build = median("build, bundler", "seconds") / median("build, snapshot_download + tar | zstd -3", "seconds")
    size = median("build, bundler", "output") / median("build, snapshot_download + tar | zstd -3", "output")
    restore = median("restore, bundler", "seconds") / median("restore, zstd -dc | tar -x", "seconds")
    print(f"bundler / manual: build {build:.2f}, carried size {size:.3f}, restore {restore:.2f}")


if __name__ == "__main__":
    raise SystemExit("run it as: scripts/bench.py --only models")
