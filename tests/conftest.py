"""The test bed: every fixture starts a real service on 127.0.0.1 (or a real dockerd on a private socket).

Tests never reach the internet unless marked ``network``; the machine's own pip and uv
configuration is neutralised so that they behave as on a user's machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("default", max_examples=150)
settings.register_profile("thorough", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, str(Path(__file__).parent))

from testbed import images as tb_images  # noqa: E402
from testbed import services  # noqa: E402
from testbed import wheels as tb_wheels  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No user config, no machine pip config, a private cache and config dir for bundler; and Ctrl-C
    as a terminal sends it. A shell that starts the suite as a background job ignores SIGINT in it,
    and every program it starts would inherit that: bundler runs started by the tests could not be
    interrupted as a user's can."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("PIP_", "UV_", "DOCKER_", "BUNDLER_")) or name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            del os.environ[name]
    os.environ.update({
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "DOCKER_CONFIG": str(home / "docker-config"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    yield
    os.environ.clear()
    os.environ.update(saved)


# ---- services ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Dockerd]:
    """A private docker engine for the whole session."""
    # A short path: the daemon's sockets must fit in 108 bytes.
    root = Path(tmp_path_factory.mktemp("dockerd"))
    daemon = services.Dockerd(root).start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., services.Registry]]:
    """Starts distribution registries on free ports; all stop at the end of the session."""
    started: list[services.Registry] = []

    def start(auth: dict | None = None) -> services.Registry:
        registry = services.Registry(tmp_path_factory.mktemp("registry"), auth=auth).start()
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()


@pytest.fixture(scope="session")
def registry(registry_factory: Callable[..., services.Registry]) -> services.Registry:
    """One plain registry shared by the session."""
    return registry_factory()


@pytest.fixture(scope="session")
def sample_layout(tmp_path_factory: pytest.TempPathFactory) -> tb_images.Layout:
    """An OCI layout with the images the tests push:

    - ``app``: busybox + real files + a marker file (runnable)
    - ``app2``: shares the first two layers of ``app``, differs in the last
    - ``multi``: an index for linux/amd64 and linux/arm64/v8
    """
    layout = tb_images.Layout(tmp_path_factory.mktemp("layout"))
    base = tb_images.sample_layers(seed="one")
    layout.add("app", [tb_images.ImageSpec(base)])
    layout.add("app2", [tb_images.ImageSpec(base[:2] + [tb_images.layer_tar({"etc/bundler-test.txt": "two\n"})])])
    layout.add("multi", [
        tb_images.ImageSpec(base[:1] + [tb_images.layer_tar({"etc/bundler-test.txt": "amd64\n"})]),
        tb_images.ImageSpec([tb_images.layer_tar({"etc/bundler-test.txt": "arm64\n"})],
                            platform=("linux", "arm64", "v8")),
    ], index=True)
    return layout


@pytest.fixture(scope="session")
def pushed(registry: services.Registry, sample_layout: tb_images.Layout) -> dict[str, str]:
    """The sample images in the shared registry: name -> reference (docker and OCI manifests)."""
    refs = {
        "app": f"{registry.host}/team/app:1.0",
        "app2": f"{registry.host}/team/app2:1.0",
        "app-oci": f"{registry.host}/team/app-oci:1.0",
        "multi": f"{registry.host}/team/multi:1.0",
    }
    sample_layout.push("app", refs["app"], docker_format=True)
    sample_layout.push("app2", refs["app2"], docker_format=True)
    sample_layout.push("app", refs["app-oci"])
    sample_layout.push("multi", refs["multi"])
    return refs


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels for the index: pure and platform-tagged, with dependencies and environment markers.

    - ``alpha 1.0`` requires ``beta>=1.0`` and, on Windows only, ``winhelper``
    - ``beta 1.0`` and ``beta 2.0`` (2.0 needs Python >= 3.11)
    - ``winhelper 1.0`` (pure)
    - ``native 1.0``: manylinux x86_64, manylinux aarch64 and Windows wheels for cp310 and cp311
    - ``sdistonly 1.0``: only an sdist (pure Python once built)
    - ``nativesdist 1.0``: only an sdist that builds a platform wheel
    - ``dataserver 1.0``: like tensorboard-data-server, a ``manylinux_2_31`` wheel holding a program and a
      ``py3-none-any`` one without it
    - ``gamma 1.0``: pure, with ``Requires-Python: >=3.8`` in its METADATA
    """
    root = tmp_path_factory.mktemp("wheels")
    tb_wheels.build_wheel(root, "alpha", "1.0", requires=["beta>=1.0", 'winhelper; sys_platform == "win32"'])
    tb_wheels.build_wheel(root, "beta", "1.0")
    tb_wheels.build_wheel(root, "beta", "2.0", requires_python=">=3.11")
    tb_wheels.build_wheel(root, "winhelper", "1.0")
    for py in ("cp310", "cp311"):
        # 2 MiB that no compressor shrinks, as in real native wheels: bundles span several 1M volumes
        tb_wheels.build_wheel(root, "native", "1.0", tag=f"{py}-{py}-manylinux_2_17_x86_64.manylinux2014_x86_64",
                              payload=tb_wheels.incompressible(2 << 20))
        tb_wheels.build_wheel(root, "native", "1.0", tag=f"{py}-{py}-win_amd64")
        tb_wheels.build_wheel(root, "native", "1.0", tag=f"{py}-{py}-manylinux_2_17_aarch64.manylinux2014_aarch64")
    tb_wheels.build_sdist(root, "sdistonly", "1.0")
    tb_wheels.build_sdist(root, "nativesdist", "1.0", wheel_tag="cp311-cp311-win_amd64")
    tb_wheels.build_wheel(root, "dataserver", "1.0", tag="py3-none-manylinux_2_31_x86_64",
                          module_code="import pathlib\nBINARY = pathlib.Path(__file__).with_name('payload.bin')\n",
                          payload=b"\x7fELF a server program\n")
    tb_wheels.build_wheel(root, "dataserver", "1.0", module_code="BINARY = None\n")
    tb_wheels.build_wheel(root, "gamma", "1.0", requires_python=">=3.8")
    return root


@pytest.fixture(scope="session")
def index(wheel_dir: Path) -> Iterator[services.IndexServer]:
    server = services.IndexServer(wheel_dir).start()
    yield server
    server.stop()


@pytest.fixture
def faulty() -> Iterator[Callable[..., services.FaultyProxy]]:
    """Starts misbehaving proxies in front of real services; they stop after the test."""
    proxies: list[services.FaultyProxy] = []

    def start(upstream: str, fault: str = "ok", **kwargs: object) -> services.FaultyProxy:
        proxy = services.FaultyProxy(upstream, fault, **kwargs)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


# ---- tools ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def python310() -> Path:
    """CPython 3.10 from pyenv, the target Python of most tests."""
    candidates = sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))
    found = candidates[-1] if candidates else shutil.which("python3.10")
    if not found:
        pytest.skip("no CPython 3.10 here (looked in ~/.pyenv/versions and on PATH)")
    return Path(found)


def offline(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command with no network at all (a fresh network namespace, loopback down)."""
    return subprocess.run(["unshare", "--net", *args], **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, mounted for the test (needs root, as the test bed does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.fail(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of a given size in bytes (rounded up to KiB, then to pages) for the test; each is
    unmounted after it."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounts)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={-(-size // 1024)}k", "tmpfs", str(folder)],
                                capture_output=True)
        if result.returncode:
            pytest.fail(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session")
def can_unshare() -> None:
    result = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if result.returncode:
        pytest.fail(f"unshare --net does not work here: {result.stderr.decode().strip()}")


def bundler_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bundler", *args]


# ---- a profile over the test bed, and bundles built from it ----------------------------------

def write_profile(folder: Path, registry_host: str, images: list[str], index_url: str,
                  requirements: list[str], name: str = "testbed", check: str | None = None) -> Path:
    """A profile whose mirrors point only at the test bed (nothing on the internet)."""
    lines = [f"name: {name}", "description: images and wheels from the test bed",
             "target:", "  platform: linux/amd64", '  python: "3.10"']
    if images:
        lines += ["images:"] + [f"  - {ref}" for ref in images]
    if requirements:
        lines += ["python:", "  requirements:"] + [f"    - {r!r}" for r in requirements]
    if check:
        lines.append(f"check: {check}")
    lines += ["mirrors:", "  registries:", f"    {registry_host}: [official]", f"  pypi: [{index_url}]"]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def testbed_profile(tmp_path_factory, registry, pushed, index) -> Path:
    """Two images sharing layers, and three wheels (alpha, beta, native)."""
    return write_profile(tmp_path_factory.mktemp("profile"), registry.host, [pushed["app"], pushed["app2"]],
                         index.url, ["alpha==1.0", "native==1.0"],
                         check="python -c \"import alpha, native; print('check ok', alpha.VERSION)\"")


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory, testbed_profile) -> Path:
    """A bundle of the test-bed profile, built once per session (tests copy it before damaging it)."""
    from bundler import cli
    out = tmp_path_factory.mktemp("bundle") / "testbed.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q"]) == 0
    return out


# ---- update bundles: v1, and v2 as a full bundle and as a delta against v1 -----------------------

DELTA_SEED = "delta-module"


def _data_files() -> dict[str, bytes | str]:
    return tb_images.real_files(Path("/usr/lib/python3"), 2_000_000, prefix="usr/lib/app")


@pytest.fixture(scope="session")
def delta_updates(tmp_path_factory, registry, index):
    """v1 and v2 of the image in the test bed's registry, and three profiles over them."""
    folder = tmp_path_factory.mktemp("delta")
    base = tb_images.busybox_layer()
    files = _data_files()
    changed = dict(files)
    for number, name in enumerate(sorted(files)):
        if number % 50 == 0:   # 2 % of the files: a package upgrade in a pip install layer
            changed[name] = (files[name] if isinstance(files[name], bytes) else b"") + b"\n# upgraded\n"
    data_v1, data_v2 = tb_images.layer_tar(files), tb_images.layer_tar(changed)
    layout = tb_images.Layout(folder / "layout")
    marker = {v: tb_images.layer_tar({"etc/bundler-test.txt": f"{DELTA_SEED} {v}\n"}) for v in ("v1", "v2", "extra")}
    layout.add("1", [tb_images.ImageSpec([base, data_v1, marker["v1"]])])
    layout.add("2", [tb_images.ImageSpec([base, data_v2, marker["v2"]])])
    layout.add("extra", [tb_images.ImageSpec([base, data_v1, marker["extra"]])])
    refs = {tag: f"{registry.host}/delta/{'extra' if tag == 'extra' else 'app'}:{'1' if tag == 'extra' else tag}"
            for tag in ("1", "2", "extra")}
    for tag, ref in refs.items():
        layout.push(tag, ref, docker_format=True)
    v1 = write_profile(folder, registry.host, [refs["1"]], index.url, ["alpha==1.0"], name="delta-v1")
    v2 = write_profile(folder, registry.host, [refs["2"], refs["extra"]], index.url,
                       ["alpha==1.0", "native==1.0", "winhelper==1.0"], name="delta-v2")
    return {"folder": folder, "refs": refs, "v1": v1, "v2": v2}


@pytest.fixture(scope="session")
def delta_bundles(delta_updates):
    """The full v1 bundle, and v2 as a delta against it (and in full, to compare with)."""
    from bundler import cli
    folder = delta_updates["folder"]
    out = {"v1": folder / "v1.tar.zst", "v2": folder / "v2.tar.zst", "d2": folder / "d2.tar.zst"}
    build = ["build", "--no-restorer"]
    assert cli.main([*build, str(delta_updates["v1"]), "-o", str(out["v1"]), "-q"]) == 0
    assert cli.main([*build, str(delta_updates["v2"]), "-o", str(out["v2"]), "-q"]) == 0
    since = ["--since", str(out["v1"])]
    assert cli.main([*build, str(delta_updates["v2"]), *since, "-o", str(out["d2"]), "-q"]) == 0
    return out


@pytest.fixture(scope="session")
def containerd(tmp_path_factory) -> Iterator[services.Containerd]:
    daemon = services.Containerd(Path(tmp_path_factory.mktemp("ctd"))).start()
    yield daemon
    daemon.stop()


# ---- model hubs ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def hubs():
    """A Hugging Face endpoint (with its LFS store) and a ModelScope endpoint over small repositories."""
    from testbed.hubs import sample_hubs
    found = sample_hubs()
    yield found
    found.stop()


@pytest.fixture(scope="session")
def sample_models_bundle(hubs, tmp_path_factory) -> Path:
    """A bundle of every sample model (both hubs, no lock), built once: what the site tests push and serve."""
    from test_models import models_profile

    from bundler import cli
    folder = tmp_path_factory.mktemp("sample-models")
    profile = models_profile(folder, [hubs.hf.url], [hubs.ms.url])
    out = folder / "models.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="session")
def hub_clients_index() -> Iterator[services.IndexServer]:
    """A PEP 503 index over huggingface_hub, modelscope and their dependencies for CPython 3.10 (the
    wheels scripts/setup.sh downloads once): what a restored venv installs to read the models."""
    folder = REPO / ".testbed-wheels" / "hub-clients"
    if not (folder / ".complete").is_file():
        pytest.fail(f"{folder}: missing; run scripts/setup.sh (it downloads the hub clients' wheels once)")
    server = services.IndexServer(folder).start()
    yield server
    server.stop()


# ---- the restorer's wheels ---------------------------------------------------------------------

RESTORER_WHEELS = REPO / ".testbed-wheels" / "restorer"   # scripts/setup.sh downloads them: the test bed's PyPI


@pytest.fixture(scope="session")
def restorer_index(tmp_path_factory, wheel_dir):
    """The test bed's wheels and the restorer's, on one PEP 503 index."""
    if not (RESTORER_WHEELS / ".complete").is_file():
        pytest.fail(f"{RESTORER_WHEELS} is missing or incomplete: scripts/setup.sh downloads the restorer's wheels "
                    "once")
    root = tmp_path_factory.mktemp("restorer-index")
    for folder in (wheel_dir, RESTORER_WHEELS):
        for path in folder.iterdir():
            if path.name.endswith((".whl", ".tar.gz")):
                (root / path.name).symlink_to(path)
    server = services.IndexServer(root).start()
    yield server
    server.stop()
