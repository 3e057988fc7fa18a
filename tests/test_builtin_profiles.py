"""The built-in profiles and the locks shipped with them: they load, fit, keep their constraints,
and `bundler build NAME` fetches what the shipped lock pins. Offline; the re-lock against the real
index is in test_profiles_network.py."""

from __future__ import annotations

import json
import os
import sys
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bundler import cli
from bundler.build import profile as profile_module
from bundler.build.lockfile import Lock, check_lock_fits, read_lock, write_lock
from bundler.build.profile import builtin_lock, builtin_names, load_profile
from bundler.build.wheels.requirements import WheelTarget
from bundler.build.wheels.resolve import default_index_url
from bundler.restore.wheels import run_check
from conftest import REPO, write_profile
from testbed import wheels as tb_wheels

# What each built-in stack is for: these exact wheels, and CUDA wheels (nvidia-*) beside them.
FRAMEWORK_WHEELS = {
    "pytorch-cuda12.1": {"torch": "2.1.2", "torchvision": "0.16.2", "torchaudio": "2.1.2"},
    "paddle-2.6-gpu": {"paddlepaddle-gpu": "2.6.1"},
    "tensorflow-gpu": {"tensorflow": "2.15.0.post1"},
}
CUDA_WHEELS = {"pytorch-cuda12.1": True, "paddle-2.6-gpu": False, "tensorflow-gpu": True}


def pins_of(lock: Lock) -> dict[str, str]:
    return {pin.name: pin.version for pin in lock.pins()}


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_profile_ships_a_lock_that_fits_it(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description and profile.check
    lock_path = builtin_lock(profile)
    assert lock_path is not None and lock_path.name == f"{name}.lock"
    lock = read_lock(lock_path)
    check_lock_fits(lock, profile, lock_path)
    pins = pins_of(lock)
    for framework, version in FRAMEWORK_WHEELS[name].items():
        assert pins.get(framework) == version, f"{name}: {framework} is not locked at {version}"
    assert any(n.startswith("nvidia-") for n in pins) == CUDA_WHEELS[name]


@pytest.mark.parametrize("name", builtin_names())
def test_every_requirement_and_constraint_holds_in_the_lock(name):
    """numpy<2, protobuf<5, setuptools<81...: a profile edited without re-locking fails here."""
    profile = load_profile(name)
    lock = read_lock(builtin_lock(profile))
    target = WheelTarget(profile.target.platform, profile.target.python)
    pins = pins_of(lock)
    for text in profile.python.requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(target.environment()):
            continue
        locked = pins.get(canonicalize_name(requirement.name))
        assert locked is not None, f"{name}: {requirement.name} is not in the lock"
        assert requirement.specifier.contains(locked, prereleases=True), \
            f"{name}: the lock has {requirement.name}=={locked}, the profile asks for {text!r}"


def test_the_constraints_that_make_the_stacks_work_are_there():
    constraints = {name: set(load_profile(name).python.requirements) for name in builtin_names()}
    assert "numpy<2" in constraints["pytorch-cuda12.1"]
    assert {"numpy<2", "protobuf>=3.20.2,<5"} <= constraints["paddle-2.6-gpu"]
    assert "setuptools<81" in constraints["tensorflow-gpu"]


def test_shipped_locks_name_no_index():
    """The lock holds pins and hashes only: the index comes from the mirrors at build time."""
    official_host = urlsplit(default_index_url()).hostname
    for name in builtin_names():
        text = builtin_lock(load_profile(name)).read_text()
        assert official_host not in text
        assert "--index-url" not in text and "--extra-index-url" not in text and "--find-links" not in text


def test_locks_ship_in_the_package():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["bundler.profiles"] == "profiles"
    patterns = config["package-data"]["bundler.profiles"]
    for path in (REPO / "profiles").iterdir():
        if path.suffix in (".yaml", ".lock"):
            assert any(fnmatch(path.name, p) for p in patterns), f"{path.name} would not ship"


# ---- the checks, against stand-ins for the frameworks on a machine without a GPU ----------------

STUBS = {
    "torch": """
        __version__ = "2.1.2+cu121"
        class version: cuda = "12.1"
        class cuda:
            is_available = staticmethod(lambda: False)
        class _T:
            def __matmul__(self, other): return self
            def sum(self): return self
            def item(self): return 8.0
        def ones(*shape, device="cpu"): return _T()
        """,
    "paddle": """
        __version__ = "2.6.1"
        class version:
            cuda = staticmethod(lambda: "11.8")
            cudnn = staticmethod(lambda: "8.6.0")
        class device:
            class cuda:
                device_count = staticmethod(lambda: 0)
        class utils:
            @staticmethod
            def run_check():
                raise RuntimeError("(PreconditionNotMet) The third-party dynamic library (libcuda.so) not found")
        class CPUPlace: pass
        class _T:
            def __init__(self, values): self.values = values
            def __mul__(self, k): return _T([v * k for v in self.values])
            def numpy(self): return self
            def tolist(self): return self.values
        def to_tensor(values, place=None): return _T(values)
        """,
    "tensorflow": """
        import contextlib
        __version__ = "2.15.0"
        class sysconfig:
            get_build_info = staticmethod(lambda: {"cuda_version": "12.2", "cudnn_version": "8"})
        class config:
            list_physical_devices = staticmethod(lambda kind: [])
        device = staticmethod(lambda name: contextlib.nullcontext())
        ones = staticmethod(lambda shape: 1.0)
        reduce_sum = staticmethod(lambda x: 4.0)
        """,
}


@pytest.fixture
def stub_venv(tmp_path, monkeypatch) -> Path:
    """A 'venv' whose python sees the stand-ins instead of the real frameworks."""
    import textwrap
    stubs = tmp_path / "stubs"
    for module, source in STUBS.items():
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__init__.py").write_text(textwrap.dedent(source))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setenv("PYTHONPATH", str(stubs))
    return venv


@pytest.mark.parametrize("name,says", [
    ("pytorch-cuda12.1", ["CUDA available: False: no NVIDIA GPU or driver visible here", "matmul on cpu: 8.0"]),
    ("paddle-2.6-gpu", ["no GPU visible here", "paddle.utils.run_check() failed: RuntimeError",
                        "paddle.to_tensor([1., 2.]) * 2 = [2.0, 4.0]"]),
    ("tensorflow-gpu", ["GPUs: none visible here", "tf.reduce_sum(tf.ones([2, 2])) = 4.0"]),
])
def test_check_reports_no_gpu_plainly_and_passes(name, says, stub_venv):
    _, code, output = run_check(load_profile(name).check, stub_venv)
    assert code == 0, output
    for words in says:
        assert words in output


def test_check_fails_when_the_framework_does_not_import(stub_venv, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.devnull)
    for name in builtin_names():
        _, code, output = run_check(load_profile(name).check, stub_venv)
        assert code != 0 and "ModuleNotFoundError" in output


# ---- bundler build NAME uses the shipped lock --------------------------------------------------

@pytest.fixture
def builtin_dir(tmp_path, monkeypatch, index) -> Path:
    """A stand-in for bundler/profiles: profile 'tb' asks for alpha, its shipped lock pins only beta
    (a fresh resolve gives alpha and beta, so the bundle tells which was used)."""
    folder = tmp_path / "builtin"
    folder.mkdir()
    write_profile(folder, "localhost:5000", [], index.url, ["alpha"], name="tb")
    beta = tb_wheels.sha256_file(index.root / "beta-1.0-py3-none-any.whl")
    write_lock(Lock("tb", "linux/amd64", "3.10", 315532800, (), f"beta==1.0 \\\n    --hash=sha256:{beta}\n"),
               folder / "tb.lock")
    monkeypatch.setattr(profile_module, "_builtin_dir", lambda: folder)
    return folder


def bundle_wheels(capsys, path: Path) -> list[str]:
    assert cli.main(["inspect", str(path), "--json"]) == 0
    return sorted(w["name"] for w in json.loads(capsys.readouterr().out)["wheels"])


def test_build_of_a_builtin_profile_fetches_what_its_lock_pins(builtin_dir, tmp_path, capsys):
    out = tmp_path / "tb.tar.zst"
    assert cli.main(["build", "--no-restorer", "tb", "-o", str(out), "--cache", str(tmp_path / "cache")]) == 0
    err = capsys.readouterr().err
    assert f"using {builtin_dir / 'tb.lock'}, the lock shipped with the built-in profile tb (--resolve" in err
    assert bundle_wheels(capsys, out) == ["beta"]

    assert cli.main(["build", "--no-restorer", "tb", "-o", str(out), "--force", "--resolve", "--cache", str(tmp_path / "cache")]) == 0
    assert "shipped with" not in capsys.readouterr().err
    assert bundle_wheels(capsys, out) == ["alpha", "beta"]

    with pytest.raises(SystemExit) as exit_:
        cli.main(["build", "--no-restorer", "tb", "--resolve", "--lock", str(builtin_dir / "tb.lock")])
    assert exit_.value.code == 2
    assert "argument --lock: not allowed with argument --resolve" in capsys.readouterr().err


def test_profiles_show_names_the_shipped_lock(builtin_dir, capsys):
    assert cli.main(["profiles", "show", "tb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"# {builtin_dir / 'tb.yaml'}", f"# lock: {builtin_dir / 'tb.lock'} (bundler build tb "
                                                          "fetches what it pins)"]


def test_a_lock_beside_a_users_own_profile_is_not_used_implicitly(builtin_dir, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    for suffix in (".yaml", ".lock"):
        (own / f"tb{suffix}").write_bytes((builtin_dir / f"tb{suffix}").read_bytes())
    assert builtin_lock(load_profile(str(own / "tb.yaml"))) is None
    assert builtin_lock(load_profile("tb")) == builtin_dir / "tb.lock"


# ---- Paddle's CUDA 12 build through its find-links page, as the paddle profile documents -----

PADDLE_PAGE = "https://www.paddlepaddle.org.cn/whl/linux/mkl/avx/stable.html"


class LinksPage:
    """A find-links page like Paddle's: one HTML page of absolute links, no hashes, no PEP 503 layout."""

    def __init__(self, folder: Path) -> None:
        from testbed.services import _QuietHandler, _serve
        page = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                file = folder / self.path.removeprefix("/files/")
                status = 200
                if self.path == "/whl/stable.html":
                    links = "".join(f'<a href="{page.base}/files/{p.name}">{p.name}</a><br>\n'
                                    for p in sorted(folder.glob("*.whl")))
                    body, kind = f"<html><body>\n{links}</body></html>\n".encode(), "text/html"
                elif self.path.startswith("/files/") and file.is_file():
                    body, kind = file.read_bytes(), "application/octet-stream"
                else:
                    status, body, kind = 404, b"not found", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _serve(Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.base}/whl/stable.html"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_paddles_cuda12_build_comes_from_its_find_links_page_as_documented(tmp_path, capsys):
    from testbed.services import IndexServer
    index_dir, page_dir = tmp_path / "index", tmp_path / "page"
    deps = ["numpy>=1.13", "protobuf>=3.20.2"]
    for name, version in (("numpy", "1.26.4"), ("numpy", "2.2.6"), ("protobuf", "4.25.9"), ("protobuf", "7.36.2")):
        tb_wheels.build_wheel(index_dir, name, version)
    # the index has the CUDA 11.8 build; Paddle's page has the CUDA 12.0 one, tagged linux_x86_64 as Paddle tags it
    tb_wheels.build_wheel(index_dir, "paddlepaddle-gpu", "2.6.1", deps, tag="cp310-cp310-manylinux1_x86_64")
    tb_wheels.build_wheel(page_dir, "paddlepaddle-gpu", "2.6.1.post120", deps, tag="cp310-cp310-linux_x86_64")
    index, page = IndexServer(index_dir).start(), LinksPage(page_dir)
    try:
        documented = [line[len("  # "):] for line in load_profile("paddle-2.6-gpu").source_text.splitlines()
                      if line.startswith("  #   ")]
        python = "\n".join(documented)
        assert PADDLE_PAGE in python
        profile = tmp_path / "paddle-cu12.yaml"
        profile.write_text("name: paddle-cu12\ntarget: {platform: linux/amd64, python: '3.10'}\npython:\n"
                           + python.replace(PADDLE_PAGE, page.url) + f"\nmirrors:\n  pypi: [{index.url}]\n")
        out = tmp_path / "paddle-cu12.tar.zst"
        assert cli.main(["build", "--no-restorer", str(profile), "--wheels-only", "-o", str(out), "--cache", str(tmp_path / "c")]) == 0
        capsys.readouterr()
        assert cli.main(["inspect", str(out), "--json"]) == 0
        wheels = {w["name"]: w["filename"] for w in json.loads(capsys.readouterr().out)["wheels"]}
    finally:
        index.stop()
        page.stop()
    assert wheels == {"paddlepaddle-gpu": "paddlepaddle_gpu-2.6.1.post120-cp310-cp310-linux_x86_64.whl",
                      "numpy": "numpy-1.26.4-py3-none-any.whl", "protobuf": "protobuf-4.25.9-py3-none-any.whl"}
