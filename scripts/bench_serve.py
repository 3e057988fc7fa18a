"""bundler serve for a cluster, measured (run by ``scripts/bench.py --only serve``).

bench.py's main workload (three images of about 2 GB uncompressed sharing a 1 GB base, 200+ MB of
wheels), built once. Then, each --runs times, on a fresh site folder:

- the time from starting ``bundler serve`` to a node's first successful ``docker pull`` (the bundle
  verified and pushed first), and the same after a restart on the same folder (nothing pushed again);
- 1, 2 and 4 nodes at once, each a private dockerd started with the daemon.json ``mirrors config
  docker --site`` writes and a venv reading the pip.conf ``mirrors config pip --site`` writes,
  pulling the three images while pip installs the wheels;
- the index's wheel throughput: every wheel downloaded through it (its redirect to the registry's
  blob followed, as pip does), against ``python -m http.server`` over the same files;
- the peak RSS of serve's own process (the index, the push), and of serve with its registries.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import psutil
import requests
from bench import Bench, Sample, human

from testbed import services

NODES = (1, 2, 4)


class Serving:
    """``bundler serve`` on fixed ports, its output, and the peak RSS of it and of its process tree."""

    def __init__(self, bench: Bench, bundles: list[Path], root: Path, *, ports: tuple[int, int, int]) -> None:
        self.registry_port, self.index_port, self.push_port = ports
        command = [sys.executable, "-m", "bundler", "serve", *map(str, bundles), "--root", str(root),
                   "--registry-port", str(ports[0]), "--index-port", str(ports[1]), "--push-port", str(ports[2]), "-q"]
        self.started = time.monotonic()
        self.process = psutil.Popen(command, env=bench.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        self.lines: list[str] = []
        self.own_peak = self.tree_peak = 0
        self._done = threading.Event()
        threading.Thread(target=lambda: self.lines.extend(line.rstrip() for line in self.process.stdout),
                         daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                own = self.process.memory_info().rss
                tree = own + sum(p.memory_info().rss for p in self.process.children(recursive=True))
                self.own_peak, self.tree_peak = max(self.own_peak, own), max(self.tree_peak, tree)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def serving(self, timeout: float = 1800) -> float:
        """Seconds from the start to its 'serving' line."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("serving; ") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("bench: bundler serve did not start:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.02)
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self._done.set()


def run(bench: Bench, runs: int) -> None:
    profile = bench.profile(bench.refs, name="serve")
    built = bench.bundler_build("serve: build the bundle", profile) / "b.tar.zst"
    ports = tuple(services.free_port() for _ in range(3))
    site_url, index_url = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    nodes, configs = [], []
    for number in range(max(NODES)):
        folder = Path(tempfile.mkdtemp(prefix=f"bench-serve-node{number}-"))
        daemon, pip_conf = folder / "daemon.json", folder / "pip.conf"
        for tool, url, path in (("docker", site_url, daemon), ("pip", index_url, pip_conf)):
            subprocess.run([sys.executable, "-m", "bundler", "mirrors", "config", tool, "--site", url, "--write",
                            "--path", str(path)], check=True, env=bench.env, capture_output=True)
        nodes.append(services.Dockerd(folder / "d", config_file=daemon).start())
        configs.append(pip_conf)
    images = [f"127.0.0.1:{ports[0]}/{ref.split('/', 1)[1]}" for ref in bench.refs]
    try:
        for _ in range(runs):
            root = bench.fresh("serve-site")
            pull = {"root": root, "ports": ports, "node": nodes[0], "image": images[0]}
            first = first_pull(bench, [built], label="first start (verify and push)", **pull)
            site = first_pull(bench, [built], label="restart on the same DIR", keep=True, **pull)
            try:
                for count in NODES:
                    together(bench, nodes[:count], configs[:count], images=images)
                throughput(bench, index_url, built)
            finally:
                site.stop()
            bench.add("serve: peak RSS", Sample(0, max(first.own_peak, site.own_peak),
                                                output=max(first.tree_peak, site.tree_peak)))
    finally:
        for node in nodes:
            node.stop()
    report(bench)


def _reset(node: services.Dockerd) -> None:
    ids = node.docker("images", "-aq").stdout.decode().split()
    if ids:
        node.docker("rmi", "-f", *ids, check=False)


def first_pull(bench: Bench, bundles: list[Path], *, root: Path, ports: tuple[int, int, int], node: services.Dockerd,
               image: str, label: str, keep: bool = False) -> Serving:
    """From starting serve to the node's first pull done; the site is stopped unless ``keep``."""
    _reset(node)
    site = Serving(bench, bundles, root, ports=ports)
    serving = site.serving()
    node.docker("pull", image, timeout=1800)
    seconds = time.monotonic() - site.started
    bench.add(f"serve: {label}: to serving", Sample(serving, 0))
    bench.add(f"serve: {label}: to a node's first docker pull", Sample(seconds, site.own_peak, output=site.tree_peak))
    if not keep:
        site.stop()
    return site


def together(bench: Bench, nodes: list[services.Dockerd], configs: list[Path], *, images: list[str]) -> None:
    """Every node pulls the images while pip installs the wheels into a fresh venv of its own, all at once."""
    venvs = []
    for number, node in enumerate(nodes):
        _reset(node)
        venv = bench.fresh(f"serve-venv{number}")
        subprocess.run([str(bench.python310), "-m", "venv", str(venv)], check=True)
        venvs.append(venv)
    failures: list[str] = []

    def pull(node: services.Dockerd) -> None:
        for image in images:
            result = node.docker("pull", image, check=False, timeout=1800)
            if result.returncode:
                failures.append(result.stderr.decode(errors="replace"))

    def install(venv: Path, pip_conf: Path) -> None:
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir",
                                 "--no-compile", "-r", str(bench.requirements)], capture_output=True, text=True,
                                env={**bench.env, "PIP_CONFIG_FILE": str(pip_conf)})
        if result.returncode:
            failures.append(result.stderr[-2000:])

    work = [threading.Thread(target=pull, args=(node,)) for node in nodes]
    work += [threading.Thread(target=install, args=(venv, conf)) for venv, conf in zip(venvs, configs)]
    started = time.monotonic()
    for thread in work:
        thread.start()
    for thread in work:
        thread.join()
    if failures:
        raise SystemExit("bench: a node failed:\n" + failures[0])
    bench.add(f"serve: {len(nodes)} nodes at once (docker pull + pip install)", Sample(time.monotonic() - started, 0))


def _links(index_url: str) -> list[str]:
    """Every wheel's URL on the index, as pip finds them."""
    with requests.Session() as session:
        root = session.get(f"{index_url}/simple/", timeout=30).text
        found = []
        for project in re.findall(r'href="([^"]+)"', root):
            page_url = urljoin(f"{index_url}/simple/", project)
            page = session.get(page_url, timeout=30).text
            found += [urljoin(page_url, href.split("#", 1)[0]) for href in re.findall(r'href="([^"]+)"', page)]
    return found


def _download_all(urls: list[str]) -> tuple[float, int]:
    total = 0
    started = time.monotonic()
    with requests.Session() as session:
        for url in urls:
            with session.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                for chunk in response.iter_content(1 << 20):
                    total += len(chunk)
    return time.monotonic() - started, total


def throughput(bench: Bench, index_url: str, built: Path) -> None:
    """Every wheel through the index (redirected to the registry), then from python -m http.server."""
    from bundler.format.archive import read_head
    urls = _links(index_url)
    seconds, size = _download_all(urls)
    bench.add("serve: wheels through the index", Sample(seconds, 0, output=size))
    head, _ = read_head(built)
    folder = bench.fresh("serve-static")
    for wheel in head["wheels"]:
        shutil.copyfile(bench.index.root / wheel["filename"], folder / wheel["filename"])
    port = services.free_port()
    static = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        services.wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=2).ok, "http.server")
        seconds, size = _download_all([f"http://127.0.0.1:{port}/{w['filename']}" for w in head["wheels"]])
        bench.add("serve: wheels from python -m http.server", Sample(seconds, 0, output=size))
    finally:
        static.terminate()
        static.wait()


def report(bench: Bench) -> None:
    rows = bench.rows

    def med(name: str, attribute: str = "seconds") -> float:
        return rows[name].median(attribute)

    print("\n" + "=" * 100)
    print(f"bundler serve (bench.py's main workload), median of {bench.runs} run(s)")
    for label in ("first start (verify and push)", "restart on the same DIR"):
        print(f"{label:44} to serving {med(f'serve: {label}: to serving'):7.1f} s   to a node's first docker pull "
              f"{med(f'serve: {label}: to a node' + chr(39) + 's first docker pull'):7.1f} s")
    one = med("serve: 1 nodes at once (docker pull + pip install)")
    for count in NODES:
        seconds = med(f"serve: {count} nodes at once (docker pull + pip install)")
        print(f"{f'{count} nodes at once: docker pull + pip install':44} {seconds:7.1f} s   against one node "
              f"{seconds / one:5.2f}")
    rates = {}
    for name in ("serve: wheels through the index", "serve: wheels from python -m http.server"):
        rates[name] = med(name, "output") / med(name)
    index_rate, static_rate = rates.values()
    print(f"{'wheel throughput through the index':44} {human(index_rate)}/s   python -m http.server "
          f"{human(static_rate)}/s   ratio {index_rate / static_rate:5.2f}")
    print(f"{'peak RSS':44} serve {human(med('serve: peak RSS', 'rss'))}   serve and its registries "
          f"{human(med('serve: peak RSS', 'output'))}")
