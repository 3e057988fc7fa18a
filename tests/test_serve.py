"""bundler serve: a site with no registry gets one, a real CNCF distribution, from the bundles themselves.

Each test starts ``bundler serve`` as a process of its own on 127.0.0.1 ports, and everything that
reaches it is a real client configured by ``bundler mirrors config --site``: three private dockerds
pulling at once by the images' own names (daemon.json), containerd (hosts.toml), pip and uv
(pip.conf), huggingface_hub (HF_ENDPOINT), ``restore oci://``, ``bundler push`` of a delta into the
running site, and skopeo copying a served bundle to another registry. The registry is Debian's
docker-registry, or, with none on PATH, the registry:2 image (made here from that same program)
that a bundle carries, run by a private dockerd.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from bundler import cli
from bundler.format.archive import read_head
from conftest import bundler_cmd, write_profile
from testbed import images as tb_images
from testbed import services

HUB_REPOSITORY = "bundler-serve-test"      # docker.io/bundler-serve-test/...: no one published it; the site has it
READY_TIMEOUT = 240


class Serving:
    """A ``bundler serve`` process, its ports, and every line it printed."""

    def __init__(self, root: Path, bundles: list[Path], *args: str, env: dict | None = None,
                 listen: str = "127.0.0.1", program: list[str] | None = None) -> None:
        """``program``: what runs bundler (default: this Python's ``-m bundler``; the one-file restorer)."""
        self.root, self.listen = root, listen
        self.registry_port, self.index_port, self.push_port = (services.free_port() for _ in range(3))
        command = [*(program or bundler_cmd()), "serve", *map(str, bundles), "--root", str(root), "--listen", listen,
                   "--registry-port", str(self.registry_port), "--index-port", str(self.index_port), "--push-port",
                   str(self.push_port), "-q", *args]
        self.lines: list[str] = []
        self.err: list[str] = []
        self.started = time.monotonic()
        self.process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env or os.environ)
        self._readers = [threading.Thread(target=self._read, args=(stream, out), daemon=True)
                         for stream, out in ((self.process.stdout, self.lines), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, out: list[str]) -> None:
        for line in stream:
            out.append(line.rstrip("\n"))

    @property
    def registry_host(self) -> str:
        return f"{self.listen}:{self.registry_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_host}"

    @property
    def index_url(self) -> str:
        return f"http://{self.listen}:{self.index_port}"

    @property
    def push_host(self) -> str:
        return f"127.0.0.1:{self.push_port}"

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr\n" + "\n".join(self.err)

    def serving(self, timeout: float = READY_TIMEOUT) -> Serving:
        """Once it says it serves; fails with its output when it exits first."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("serving; ") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"bundler serve did not start (exit {self.process.returncode}):\n{self.output()}")
            time.sleep(0.05)
        return self

    def ended(self, timeout: float = READY_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Seconds from the signal to the process's end."""
        if self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.ended(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.ended(30)
        return time.monotonic() - started

    def log(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    def logged(self, pattern: str, count: int = 1, timeout: float = 10) -> list[str]:
        """The log's lines that match, once there are ``count`` of them: a request's line is written
        after its answer, and reaches this process through a pipe, so it may come after the client is done."""
        deadline = time.monotonic() + timeout
        while len(self.log(pattern)) < count:
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.05)
        return self.log(pattern)


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what the site serves ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub_bundle(tmp_path_factory, registry, sample_layout, index):
    """Images named as on Docker Hub (docker.io/bundler-serve-test/app:1.0, app2:1.0: the test bed's
    registry is docker.io's only mirror), and the wheels of alpha, native and gamma."""
    folder = tmp_path_factory.mktemp("serve-hub")
    for tag in ("app", "app2"):
        sample_layout.push(tag, f"{registry.host}/{HUB_REPOSITORY}/{tag}:1.0", docker_format=True)
    profile = write_profile(folder, "docker.io", [f"{HUB_REPOSITORY}/app:1.0", f"{HUB_REPOSITORY}/app2:1.0"],
                            index.url, ["alpha==1.0", "native==1.0", "gamma==1.0"], name="hubnames")
    profile.write_text(profile.read_text().replace("docker.io: [official]", f"docker.io: [{registry.url}]"))
    out = folder / "hub.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def site(hub_bundle, sample_models_bundle, built_bundle, tmp_path_factory):
    """One site serving three bundles for the module's tests: images named as on Docker Hub, models, and
    the test bed's bundle, whose images are named after the test bed's registry (127.0.0.1:PORT/team/...)."""
    served = Serving(tmp_path_factory.mktemp("site"), [hub_bundle, sample_models_bundle, built_bundle]).serving()
    yield served
    served.stop()


def mirrors_config(tool: str, url: str, path: Path, *extra: str) -> str:
    result = subprocess.run(bundler_cmd("mirrors", "config", tool, "--site", url, "--write", "--path", str(path),
                                        *extra), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_serve_prints_the_addresses_and_each_nodes_lines_and_the_registry_is_read_only(site, hub_bundle):
    head, _ = read_head(hub_bundle)
    out = "\n".join(site.lines)
    tag = re.search(r"^  bundles:(hubnames-[0-9a-f]{12})  hub.tar.zst, pushed: ", out, re.MULTILINE)
    assert tag, out
    assert re.search(r"^  bundles:models-[0-9a-f]{12}  models.tar.zst, pushed: ", out, re.MULTILINE), out
    for line in (f"registry  {site.registry_url}  read-only",
                 f"index     {site.index_url}/simple/  PEP 503 and PEP 691",
                 f"hf        {site.index_url}  Hugging Face endpoint",
                 f"push      {site.push_host}  this machine only: bundler push BUNDLE {site.push_host}/bundles:TAG",
                 f"  bundler mirrors config docker --site {site.registry_url} --write",
                 f"  bundler mirrors config containerd --site {site.registry_url} --write",
                 f"  bundler mirrors config pip --site {site.index_url} --write",
                 f"  bundler mirrors config hf --site {site.index_url} --write"):
        assert line in out, line
    # read-only to clients: a write is refused, and logged as refused
    write = requests.post(f"{site.registry_url}/v2/{HUB_REPOSITORY}/app/blobs/uploads/", timeout=10)
    assert write.status_code == 405
    site.logged(rf"registry 127\.0\.0\.1 POST /v2/{HUB_REPOSITORY}/app/blobs/uploads/ 405 \d+ refused$")
    # every served image by its own name, as the bundle's head says
    for image in head["images"]:
        _, repository = image["name"].split("/", 1)
        repository, tag_name = repository.rsplit(":", 1)
        manifest = requests.get(f"{site.registry_url}/v2/{repository}/manifests/{tag_name}", timeout=10, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                      "application/vnd.oci.image.manifest.v1+json"})
        assert manifest.status_code == 200 and manifest.json()["config"]["digest"] == image["id"]


def hub_tag(site: Serving) -> str:
    return re.search(r"^  bundles:(hubnames-[0-9a-f]{12}) ", "\n".join(site.lines), re.MULTILINE)[1]


# ---- nodes -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_three_docker_nodes_pull_by_the_images_own_names_at_once(site, hub_bundle, tmp_path):
    head, _ = read_head(hub_bundle)
    nodes = []
    for number in range(3):
        config = tmp_path / f"daemon{number}.json"
        mirrors_config("docker", site.registry_url, config)
        nodes.append(services.Dockerd(tmp_path / f"n{number}", config_file=config))
    starting = [threading.Thread(target=node.start) for node in nodes]
    try:
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        names = [f"{HUB_REPOSITORY}/app:1.0", f"{HUB_REPOSITORY}/app2:1.0"]    # docker.io's: only the site has them
        failures: list[str] = []

        def pull(node: services.Dockerd) -> None:
            for name in names:
                result = node.docker("pull", name, check=False)
                if result.returncode:
                    failures.append(result.stderr.decode())

        pulling = [threading.Thread(target=pull, args=(node,)) for node in nodes]
        for thread in pulling:
            thread.start()
        for thread in pulling:
            thread.join()
        assert not failures, failures
        for node in nodes:
            for name, image in zip(names, head["images"]):
                assert node.docker("image", "inspect", name, "--format", "{{.Id}}").stdout.decode().strip() == \
                    image["id"]
        # any served image also by the site's own name, as for a registry other than docker.io
        by_site = f"{site.registry_host}/{HUB_REPOSITORY}/app2:1.0"
        nodes[0].docker("pull", by_site)
        assert nodes[0].docker("image", "inspect", by_site, "--format", "{{.Id}}").stdout.decode().strip() == \
            head["images"][1]["id"]
    finally:
        for node in nodes:
            node.stop()
    site.logged(rf"registry 127\.0\.0\.1 (HEAD|GET) /v2/{HUB_REPOSITORY}/app/manifests/1\.0 200 ", count=3)


def test_containerd_pulls_by_the_original_names_through_the_hosts_toml_mirrors_config_writes(site, registry,
                                                                                             containerd, tmp_path):
    hosts = tmp_path / "certs.d"
    mirrors_config("containerd", site.registry_url, hosts)     # the registries are read from the site's bundles
    assert sorted(p.parent.name for p in hosts.glob("*/hosts.toml")) == sorted(["docker.io", registry.host])
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    names = {f"docker.io/{HUB_REPOSITORY}/app:1.0": f"{HUB_REPOSITORY}/app",   # only the site has this one
             f"{registry.host}/team/app:1.0": "team/app"}                    # the site first, its registry after
    try:
        for name in names:
            containerd.ctr("image", "pull", "--hosts-dir", str(hosts), name, namespace="serve-test")
        listed = {line.split()[0]: line.split()[2] for line in containerd.ctr("image", "ls", namespace="serve-test")
                  .stdout.splitlines()[1:]}
        for name, repository in names.items():
            digest = requests.get(f"{site.registry_url}/v2/{repository}/manifests/1.0", timeout=10,
                                  headers={"Accept": accept}).headers["Docker-Content-Digest"]
            assert listed[name] == digest, name
        site.logged(r"registry 127\.0\.0\.1 (HEAD|GET) /v2/team/app/manifests/1\.0 200 ")
    finally:
        containerd.ctr("image", "rm", *names, namespace="serve-test", check=False)


def test_pip_and_uv_install_from_the_index_their_bytes_from_the_registry(site, hub_bundle, python310, tmp_path):
    head, _ = read_head(hub_bundle)
    pip_conf = tmp_path / "pip.conf"
    mirrors_config("pip", site.index_url, pip_conf)
    assert f"index-url = {site.index_url}/simple/" in pip_conf.read_text()
    venv = tmp_path / "venv"
    subprocess.run([str(python310), "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_CONFIG_FILE": str(pip_conf)}
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
                                "alpha==1.0", "native==1.0", "gamma==1.0"], capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import alpha, beta, native, gamma; print(native.VERSION)"],
                           capture_output=True, text=True)
    assert probe.stdout == "1.0\n", probe.stderr
    # each wheel came from the registry's blob, by the index's redirect
    for wheel in head["wheels"]:
        site.logged(rf"index 127\.0\.0\.1 GET /files/{wheel['sha256']}/{re.escape(wheel['filename'])} 302 -> "
                    rf"http://127\.0\.0\.1:{site.registry_port}/v2/bundles/blobs/sha256:{wheel['sha256']}$")
    site.logged(rf"registry 127\.0\.0\.1 GET /v2/bundles/blobs/sha256:{head['wheels'][0]['sha256']} 200 ")
    # uv, given the same index
    uv_venv = tmp_path / "uv-venv"
    subprocess.run([str(python310), "-m", "venv", str(uv_venv)], check=True)
    uv = Path(sys.executable).with_name("uv")
    result = subprocess.run([str(uv), "pip", "install", "--no-cache", "--python", str(uv_venv / "bin" / "python"),
                             "--index-url", f"{site.index_url}/simple/", "alpha==1.0", "gamma==1.0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(uv_venv / "bin" / "python"), "-c", "import alpha, beta, gamma"]).returncode == 0


def test_the_index_lists_every_wheel_with_its_hash_and_requires_python_in_html_and_json(site, hub_bundle):
    head, _ = read_head(hub_bundle)
    gamma = next(w for w in head["wheels"] if w["name"] == "gamma")
    page = requests.get(f"{site.index_url}/simple/gamma/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert (f'<a href="/files/{gamma["sha256"]}/{gamma["filename"]}#sha256={gamma["sha256"]}" '
            f'data-requires-python="&gt;=3.8">{gamma["filename"]}</a>') in page.text
    listed = requests.get(f"{site.index_url}/simple/gamma/", timeout=10,
                          headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert listed.headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    assert listed.json()["files"] == [{"filename": gamma["filename"], "url": f"/files/{gamma['sha256']}/"
                                       f"{gamma['filename']}", "hashes": {"sha256": gamma["sha256"]},
                                       "size": gamma["size"], "requires-python": ">=3.8"}]
    projects = requests.get(f"{site.index_url}/simple/", timeout=10).text
    assert {w["name"] for w in head["wheels"]} <= set(re.findall(r'href="([^/]+)/"', projects))
    # a name as users type it is sent to its normalised page; what the site lacks is refused, and logged so
    assert requests.get(f"{site.index_url}/simple/Gamma/", timeout=10, allow_redirects=False).headers["Location"] == \
        "/simple/gamma/"
    assert requests.get(f"{site.index_url}/simple/torch/", timeout=10).status_code == 404
    site.logged(r"index 127\.0\.0\.1 GET /simple/torch/ 404 \d+ refused: no wheel of torch on this site$")


def test_huggingface_hub_downloads_every_served_model_from_the_site(site, sample_models_bundle, tmp_path):
    head, _ = read_head(sample_models_bundle)
    environment = tmp_path / "environment"
    mirrors_config("hf", site.index_url, environment)
    endpoint = dict(line.split("=", 1) for line in environment.read_text().splitlines())["HF_ENDPOINT"]
    assert endpoint == site.index_url
    script = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
found = {}
for repo, kind, revision in json.loads(sys.argv[1]):
    found[f"{kind}:{repo}@{revision}"] = snapshot_download(repo, repo_type=kind, revision=revision)
found["one"] = hf_hub_download("team/tiny", "config.json", revision="v1.0")
print(json.dumps(found))
"""
    wanted = [(m["repo"], m["repo_type"], m["revision"]) for m in head["models"] if m["hub"] == "huggingface"]
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(wanted)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    for model in head["models"]:
        if model["hub"] != "huggingface":
            continue
        folder = Path(found[f"{model['repo_type']}:{model['repo']}@{model['revision']}"])
        assert {str(p.relative_to(folder)): sha256(p) for p in folder.rglob("*") if p.is_file()} == \
            {f["path"]: f["sha256"] for f in model["files"]}, model["repo"]
    tiny = next(m for m in head["models"] if m["repo"] == "team/tiny" and m["revision"] == "v1.0")
    config = next(f for f in tiny["files"] if f["path"] == "config.json")
    assert sha256(Path(found["one"])) == config["sha256"]
    # a ranged read of an LFS file, through the redirect, from the registry
    weights = next(f for f in tiny["files"] if f["path"] == "model.safetensors")
    part = requests.get(f"{site.index_url}/team/tiny/resolve/v1.0/model.safetensors", headers={"Range": "bytes=8-15"},
                        timeout=10)
    assert part.status_code == 206 and len(part.content) == 8
    first = requests.head(f"{site.index_url}/team/tiny/resolve/v1.0/model.safetensors", timeout=10)
    assert first.status_code == 302 and first.headers["X-Linked-Size"] == str(weights["size"])
    assert first.headers["X-Linked-Etag"] == f'"{weights["sha256"]}"' and first.headers["X-Repo-Commit"] == \
        tiny["commit"]
    missing = requests.head(f"{site.index_url}/team/absent/resolve/main/x.json", timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"


# ---- a bundle back from the site, deltas, and other registries -----------------------------------

def test_a_node_restores_a_served_bundle_with_restore_oci(site, hub_bundle, tmp_path):
    head, _ = read_head(hub_bundle)
    index = tmp_path / "index"
    result = subprocess.run(bundler_cmd("restore", f"oci://{site.registry_host}/bundles:{hub_tag(site)}",
                                        "--plain-http", "--wheels-only", "--dest", str(tmp_path / "dest"),
                                        "--index-dir", str(index)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {p.name: sha256(p) for p in (index / "files").iterdir()} == {w["filename"]: w["sha256"]
                                                                          for w in head["wheels"]}


def test_a_delta_pushed_into_the_running_site_is_served_at_once(site, delta_bundles, tmp_path):
    base, delta = delta_bundles["v1"], delta_bundles["d2"]
    assert requests.get(f"{site.index_url}/simple/winhelper/", timeout=10).status_code == 404
    for bundle, tag in ((base, "delta-v1"), (delta, "delta-v2")):
        pushed = subprocess.run(bundler_cmd("push", str(bundle), f"{site.push_host}/bundles:{tag}", "--plain-http"),
                                capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr
    index = tmp_path / "index"
    result = subprocess.run(bundler_cmd("restore", f"oci://{site.registry_host}/bundles:delta-v2", "--plain-http",
                                        "--wheels-only", "--dest", str(tmp_path / "dest"), "--index-dir", str(index)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    head, _ = read_head(delta)
    assert {p.name for p in (index / "files").iterdir()} == {w["filename"] for w in head["wheels"]}
    # the index lists the delta's new wheel within moments (it reads the registry again when asked)
    deadline = time.monotonic() + 10
    while requests.get(f"{site.index_url}/simple/winhelper/", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "\n".join(site.lines[-20:])
        time.sleep(0.2)


def test_skopeo_copies_a_served_bundle_to_another_registry(site, hub_bundle, registry_factory, tmp_path):
    other = registry_factory()
    copied = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                             f"docker://{site.registry_host}/bundles:{hub_tag(site)}",
                             f"docker://{other.host}/enclave/hub:1"], capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    index = tmp_path / "index"
    result = subprocess.run(bundler_cmd("restore", f"oci://{other.host}/enclave/hub:1", "--plain-http", "--wheels-only",
                                        "--dest", str(tmp_path / "dest"), "--index-dir", str(index)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    head, _ = read_head(hub_bundle)
    assert {p.name for p in (index / "files").iterdir()} == {w["filename"] for w in head["wheels"]}


# ---- refusals, restarts and stopping -------------------------------------------------------------

class PortWatch:
    """Tries to connect to ports every few milliseconds while a test runs: did any ever open?"""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.opened, self._done = ports, set(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            self.opened |= {port for port in self.ports if not refused(port)}
            time.sleep(0.01)

    def stop(self) -> set[int]:
        self._done.set()
        self._thread.join()
        return self.opened


def test_a_damaged_bundle_is_refused_with_exit_3_and_nothing_is_served(built_bundle, hub_bundle, tmp_path):
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(built_bundle.read_bytes())
    data[int(len(data) * 0.6)] ^= 0x01
    damaged.write_bytes(bytes(data))
    root = tmp_path / "site"
    served = Serving(root, [hub_bundle, damaged])
    watch = PortWatch([served.registry_port, served.index_port])
    code = served.ended()
    assert watch.stop() == set(), "a public port opened"
    assert code == 3, served.output()
    assert len(served.err) == 1 and served.err[0].startswith("bundler: error: ") and "damaged.tar.zst" in \
        served.err[0], served.err
    assert not (root / "registry" / "docker" / "registry" / "v2" / "repositories").exists()   # the good one neither
    assert all(refused(port) for port in (served.registry_port, served.index_port, served.push_port))
    assert not started_for(root)


def started_for(root: Path) -> list[psutil.Process]:
    """The processes running with the site's folder on their command line (its registries)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(root) in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def blob_files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (root / "registry").rglob("data") if p.is_file()}


def test_a_restart_serves_at_once_without_pushing_and_sigterm_stops_everything_within_2_s(built_bundle, tmp_path):
    root = tmp_path / "site"
    first = Serving(root, [built_bundle]).serving()
    assert first.stop(signal.SIGINT) < 2
    assert first.process.returncode == 0 and first.lines[-1] == "interrupted: every process serve started has stopped"
    assert first.log(r" push 127\.0\.0\.1 PUT /v2/bundles/manifests/testbed-[0-9a-f]{12} 201 ")
    held = blob_files(root)
    second = Serving(root, [built_bundle]).serving()
    took = time.monotonic() - second.started
    assert re.search(r"^  bundles:testbed-[0-9a-f]{12}  testbed\.tar\.zst, served already$", "\n".join(second.lines),
                     re.MULTILINE), second.output()
    assert not second.log(r" push 127\.0\.0\.1 (POST|PUT|PATCH) "), "a blob was sent again"
    assert blob_files(root) == held
    assert took < 20, f"the restart took {took:.1f} s to serve"
    # it serves: a registry read and an index page
    assert requests.get(f"{second.registry_url}/v2/team/app/tags/list", timeout=10).json()["tags"] == ["1.0"]
    assert requests.get(f"{second.index_url}/simple/alpha/", timeout=10).status_code == 200
    # SIGTERM: every process it started ends, within 2 s, and no port is left open
    children = second.process.children(recursive=True)
    registries = [c for c in children if c.name() == "docker-registry"]
    assert len(registries) == 2, children     # the public and the private registry (each under its supervisor)
    assert second.stop(signal.SIGTERM) < 2
    assert second.process.returncode == 0 and second.lines[-1].startswith("stopped by SIGTERM")
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not started_for(root)
    assert all(refused(port) for port in (second.registry_port, second.index_port, second.push_port))


def test_a_serve_killed_outright_leaves_no_registry_running(built_bundle, tmp_path):
    root = tmp_path / "site"
    served = Serving(root, [built_bundle]).serving()
    children = served.process.children(recursive=True)
    assert len([c for c in children if c.name() == "docker-registry"]) == 2, children
    served.stop(signal.SIGKILL)
    _, alive = psutil.wait_procs(children, timeout=2)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE], alive
    assert not started_for(root)
    assert all(refused(port) for port in (served.registry_port, served.push_port))


def certificate_for(folder: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` (an IP), and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "site-cert.pem", folder / "site-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_the_sites_own_certificate(built_bundle, tmp_path):
    # 127.0.0.2: loopback still, but not the address bundler's registry client takes for plain HTTP
    cert, key = certificate_for(tmp_path, "127.0.0.2")
    served = Serving(tmp_path / "site", [built_bundle], "--tls-cert", str(cert), "--tls-key", str(key),
                     listen="127.0.0.2").serving()
    try:
        registry, index = f"https://{served.registry_host}", f"https://127.0.0.2:{served.index_port}"
        assert any(line.startswith(f"registry  {registry}  read-only") for line in served.lines), served.output()
        head, _ = read_head(built_bundle)
        wheel = next(w for w in head["wheels"] if w["name"] == "alpha")
        page = requests.get(f"{index}/simple/alpha/", timeout=10, verify=str(cert)).text
        link = re.search(r'href="([^"#]+)#sha256=', page)[1]
        fetched = requests.get(f"{index}{link}", timeout=10, verify=str(cert))
        assert fetched.url.startswith(f"{registry}/v2/bundles/blobs/sha256:")
        assert hashlib.sha256(fetched.content).hexdigest() == wheel["sha256"]
        downloaded = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--dest",
                                     str(tmp_path / "pip"), "--index-url", f"{index}/simple/", "--cert", str(cert),
                                     "alpha==1.0"], capture_output=True, text=True)
        assert downloaded.returncode == 0, downloaded.stderr
        assert sha256(tmp_path / "pip" / wheel["filename"]) == wheel["sha256"]
        tag = re.search(r"bundles:(testbed-[0-9a-f]{12})", served.output())[1]
        restored = subprocess.run(bundler_cmd("restore", f"oci://{served.registry_host}/bundles:{tag}", "--wheels-only",
                                              "--dest", str(tmp_path / "dest"), "--index-dir", str(tmp_path / "index")),
                                  capture_output=True, text=True, env={**os.environ, "REQUESTS_CA_BUNDLE": str(cert)})
        assert restored.returncode == 0, restored.stderr
        with pytest.raises(requests.ConnectionError):   # plain HTTP to the index is refused, and logged so
            requests.get(f"http://127.0.0.2:{served.index_port}/simple/", timeout=10)
        served.logged(r"index 127\.0\.0\.1 TLS handshake failed: .* refused$")
    finally:
        served.stop()


# ---- where the registry comes from ---------------------------------------------------------------

@pytest.fixture(scope="module")
def registry_image_bundle(tmp_path_factory, registry):
    """A bundle carrying registry:2 (docker.io/library/registry:2), an image made here of this machine's
    own docker-registry and the libraries ldd names for it, as /bin/registry."""
    program = shutil.which("docker-registry") or shutil.which("registry")
    files: dict[str, bytes | str] = {"bin/registry": Path(program).read_bytes()}
    for line in subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout.splitlines():
        found = re.search(r"(/\S+) \(0x", line)
        if found:
            files[found[1].lstrip("/")] = Path(found[1]).resolve().read_bytes()
    folder = tmp_path_factory.mktemp("registry-image")
    layout = tb_images.Layout(folder / "layout")
    layout.add("2", [tb_images.ImageSpec([tb_images.layer_tar(files)], cmd=["serve", "/etc/docker/registry/config.yml"],
                                         env=["PATH=/bin"])])
    layout.push("2", f"{registry.host}/library/registry:2", docker_format=True)
    profile = write_profile(folder, "docker.io", ["registry:2"], "http://127.0.0.1:9/simple", [], name="site-registry")
    profile.write_text(profile.read_text().replace("docker.io: [official]", f"docker.io: [{registry.url}]"))
    out = folder / "registry.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "-q"]) == 0
    return out


def no_registry_program(tmp_path: Path) -> Path:
    """A PATH with no registry program (nor docker CLI, nor ctr) on it."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return empty


@pytest.mark.slow
def test_with_no_registry_program_the_registry_image_a_bundle_carries_runs_in_docker(registry_image_bundle,
                                                                                    built_bundle, dockerd, tmp_path):
    dockerd.docker("rmi", "-f", "registry:2", check=False)
    env = {**os.environ, "PATH": str(no_registry_program(tmp_path)), "DOCKER_HOST": dockerd.host}
    root = tmp_path / "site"
    served = Serving(root, [registry_image_bundle, built_bundle], env=env).serving()
    try:
        assert f"with CNCF distribution (registry:2 in the docker engine at {dockerd.host})" in served.lines[
            next(i for i, line in enumerate(served.lines) if line.startswith("serving "))]
        running = dockerd.docker("ps", "--format", "{{.Names}}").stdout.decode().split()
        assert len([name for name in running if name.startswith("bundler-serve-")]) == 2, running
        assert requests.get(f"{served.registry_url}/v2/team/app/tags/list", timeout=10).json()["tags"] == ["1.0"]
        assert requests.get(f"{served.index_url}/simple/alpha/", timeout=10).status_code == 200
        assert served.stop() < 2
    finally:
        served.stop()
    left = dockerd.docker("ps", "-a", "--format", "{{.Names}}").stdout.decode().split()
    assert not [name for name in left if name.startswith("bundler-serve-")], left
    # a restart takes the image docker now holds, and serves what the storage holds
    again = Serving(root, [], env=env).serving()
    try:
        assert requests.get(f"{again.registry_url}/v2/team/app/tags/list", timeout=10).json()["tags"] == ["1.0"]
    finally:
        again.stop()


def test_with_no_registry_anywhere_serve_exits_1_saying_both_ways_to_get_one(built_bundle, tmp_path):
    env = {**os.environ, "PATH": str(no_registry_program(tmp_path)), "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    served = Serving(tmp_path / "site", [built_bundle], env=env)
    assert served.ended() == 1
    assert len(served.err) == 1, served.err
    assert "apt install docker-registry" in served.err[0] and "carry the registry:2 image in a served bundle" in \
        served.err[0]
    assert all(refused(port) for port in (served.registry_port, served.index_port, served.push_port))


@pytest.mark.slow
def test_with_no_registry_program_nor_docker_the_registry_image_runs_in_containerd(registry_image_bundle,
                                                                                  built_bundle, containerd, tmp_path):
    folder = no_registry_program(tmp_path)
    (folder / "ctr").symlink_to(shutil.which("ctr"))
    env = {**os.environ, "PATH": str(folder), "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
           "CONTAINERD_ADDRESS": containerd.address, "CONTAINERD_NAMESPACE": "serve-test"}
    root = tmp_path / "site"
    served = Serving(root, [registry_image_bundle, built_bundle], env=env).serving()
    try:
        assert f"with CNCF distribution (docker.io/library/registry:2 in containerd at {containerd.address})" in \
            "\n".join(served.lines)
        assert requests.get(f"{served.registry_url}/v2/team/app/tags/list", timeout=10).json()["tags"] == ["1.0"]
        assert served.stop() < 2
    finally:
        served.stop()
    assert containerd.ctr("containers", "ls", "-q", namespace="serve-test").stdout.split() == []
    containerd.ctr("image", "rm", "docker.io/library/registry:2", namespace="serve-test", check=False)


def test_bad_arguments_and_a_taken_port_are_one_line_each_and_start_nothing(built_bundle, tmp_path, capsys):
    cert, key = certificate_for(tmp_path, "127.0.0.1")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [str(services.free_port()) for _ in range(2)]
    base = ["serve", str(built_bundle), "--root", str(tmp_path / "site"), "--index-port", ports[0], "--push-port",
            ports[1], "--registry-port"]
    try:
        for args, code, said in (
                ([ports[0]], 2, f"--registry-port {ports[0]}, --index-port {ports[0]} and --push-port {ports[1]}: three "
                                "different ports are needed"),
                ([str(taken.getsockname()[1]), "--tls-cert", str(cert)], 2, "--tls-cert and --tls-key go together"),
                ([str(taken.getsockname()[1]), "--tls-cert", str(key), "--tls-key", str(key)], 2,
                 "not a certificate and its key"),
                ([str(taken.getsockname()[1])], 1, f"--registry-port {taken.getsockname()[1]}: cannot listen on "
                                                   f"127.0.0.1:{taken.getsockname()[1]}")):
            assert cli.main([*base, *args]) == code, args
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and said in err, err
    finally:
        taken.close()
    with pytest.raises(SystemExit) as exited:
        cli.main([*base, str(services.free_port()), "--index-port", "99999"])
    assert exited.value.code == 2 and "'99999' is not a port number" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_the_log_stays_one_request_a_line_while_threads_write_at_once():
    """The index's threads and the registries' relays log at once: every line must come out whole
    (print() writes a line and its end apart, and two lines came out glued under a test run's load)."""
    code = """
import threading
from bundler.cli.site import log_line
def work(n):
    for i in range(2000):
        log_line(f"index 127.0.0.1 GET /simple/p{n}/ 200 {i}")
threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 16000
    whole = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ index 127\.0\.0\.1 GET /simple/p\d/ 200 \d+\Z")
    assert [line for line in lines if not whole.match(line)] == []
