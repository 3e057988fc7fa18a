"""The one-file restorer: built beside a bundle from wheels fetched through the mirrors (the test
bed's index, serving what scripts/setup.sh downloaded once), covered by bundle.json, and run by a
bare CPython from ~/.pyenv with no network, a fresh HOME and none of our packages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.version import Version

from bundler import cli
from bundler.build.context import BuildContext as Context
from bundler.build.restorer import CARRIED, CONNECTED_ONLY, DEFAULT_PYTHONS, make_restorer
from bundler.build.wheels.requirements import parse_lock
from bundler.format.archive import read_head
from bundler.format.head import Head
from conftest import REPO, write_profile
from testbed import bundles

PYENV = Path.home() / ".pyenv" / "versions"
LOCK = REPO / "bundler" / "restorer.lock"


def pyenv_python(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.fail(f"no CPython {version} under {PYENV}: the restorer is tested with each Python it supports")
    return found[-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def beside(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".pyz")


@pytest.fixture(scope="session")
def restorer_mirrors(tmp_path_factory, restorer_index) -> Path:
    path = tmp_path_factory.mktemp("restorer-mirrors") / "mirrors.yaml"
    path.write_text(f"pypi: [{restorer_index.url}]\n")
    return path


@pytest.fixture(scope="session")
def restorer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("restorer-cache")


@pytest.fixture(scope="session")
def restorer_profile(tmp_path_factory, registry, pushed, restorer_index) -> Path:
    return write_profile(tmp_path_factory.mktemp("restorer-profile"), registry.host, [pushed["app"], pushed["app2"]],
                         restorer_index.url, ["alpha==1.0", "native==1.0"], name="stack")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, restorer_profile, restorer_cache) -> Path:
    """A bundle built with its restorer (stack.tar.zst and stack.tar.zst.pyz)."""
    out = tmp_path_factory.mktemp("with-restorer") / "stack.tar.zst"
    assert cli.main(["build", str(restorer_profile), "-o", str(out), "--cache", str(restorer_cache), "-q"]) == 0
    return out


def bare(python: Path, *args: str, home: Path, docker: str | None = None,
         network: bool = False) -> subprocess.CompletedProcess:
    """``python -I ARGS`` with no network (unless ``network``: a site registry on this machine), a fresh
    HOME, no user site, none of our environment; CPython 3.10 on PATH for the venv the bundle's target needs."""
    env = {"HOME": str(home), "PATH": f"{pyenv_python('3.10').parent}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1",
           "LANG": "C.UTF-8"}
    if docker:
        env["DOCKER_HOST"] = docker
    return subprocess.run([*([] if network else ["unshare", "--net"]), str(python), "-I", *args], env=env,
                          capture_output=True, text=True, timeout=600)


# ---- what it carries ---------------------------------------------------------------------------

def test_the_restorer_pins_bundlers_own_dependencies_less_the_connected_sides():
    declared = {Requirement(r).name: Requirement(r) for r in requires("bundler") if "extra ==" not in r}
    pins = {pin.name: pin for pin in parse_lock(LOCK.read_text(), str(LOCK))}
    for name, requirement in declared.items():
        if name in CONNECTED_ONLY:
            assert name not in pins, name
            continue
        assert name in pins, f"{name} is a dependency of bundler but not pinned for the restorer"
        assert requirement.specifier.contains(Version(pins[name].version)), (name, pins[name].version)
    assert all(pin.hashes for pin in pins.values())
    assert set(CONNECTED_ONLY) <= set(declared)


def test_a_bundle_comes_with_its_restorer_covered_by_bundle_json(bundle, built_bundle, capsys):
    restorer = beside(bundle)
    head = Head.from_json(read_head(bundle)[0], str(bundle))
    assert head.format == 1
    assert head.restorer is not None and head.restorer.sha256 == sha256(restorer)
    assert head.restorer.size == restorer.stat().st_size
    assert head.restorer.pythons == DEFAULT_PYTHONS and head.restorer.platform == "linux/amd64"
    assert os.access(restorer, os.X_OK)
    assert cli.main(["inspect", str(bundle)]) == 0
    assert f"restorer  {restorer.name}: CPython 3.9, 3.10, 3.11, 3.12, 3.13 on linux/amd64" in capsys.readouterr().out
    # built with --no-restorer (the session's shared bundle): no file, no key
    assert not beside(built_bundle).exists() and "restorer" not in read_head(built_bundle)[0]


def test_the_restorer_carries_the_air_gapped_side_and_nothing_else(bundle):
    names = zipfile.ZipFile(beside(bundle)).namelist()
    top = {name.split("/")[1] for name in names if name.startswith("site-packages/")}
    for package in ("bundler", "zstandard", "docker", "requests", "urllib3", "yaml", "tqdm", "platformdirs",
                    "packaging", "certifi", "idna", "charset_normalizer"):
        assert package in top, package
    assert not top & set(CONNECTED_ONLY), top & set(CONNECTED_ONLY)
    carried = {name[len("site-packages/"):] for name in names
               if name.startswith("site-packages/bundler/") and name.endswith(".py")}
    # by folder: the format, the air-gapped side, what both sides use, the ground, the air-gapped commands
    for module in ("bundler/restore/verb.py", "bundler/restore/images/docker.py", "bundler/format/head.py",
                   "bundler/oci/registry.py", "bundler/net/endpoints.py", "bundler/errors.py",
                   "bundler/restorer_entry.py", "bundler/cli/__init__.py", "bundler/cli/restore.py",
                   "bundler/cli/node.py"):
        assert module in carried, module
    assert not {m for m in carried if m.startswith("bundler/build/")}, sorted(carried)
    assert not carried & {"bundler/cli/build.py", "bundler/cli/mirrors.py", "bundler/cli/cache.py",
                          "bundler/cli/completion.py", "bundler/cli/diff.py"}, sorted(carried)
    # every folder of the package is one of the two sides, the format, the ground or shared: nothing new
    # lands in the restorer unnoticed
    folders = {p.name for p in (REPO / "bundler").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"build", "cli", *CARRIED}, folders
    for python in DEFAULT_PYTHONS:
        abi = python.replace(".", "")
        assert f"site-packages/zstandard/backend_c.cpython-{abi}-x86_64-linux-gnu.so" in names, python
    made_for = json.loads(zipfile.ZipFile(beside(bundle)).read("site-packages/bundler/restorer.json"))
    assert made_for["pythons"] == list(DEFAULT_PYTHONS)
    assert made_for["platforms"] == [{"platform": "linux/amd64", "sys_platform": "linux", "platform_machine": "x86_64",
                                      "glibc": "2.17"}]


# ---- running it ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["3.10", "3.9"])
def test_a_bare_python_restores_the_bundle_offline_with_the_restorer(version, bundle, dockerd, tmp_path,
                                                                       can_unshare):
    python = pyenv_python(version)
    home = tmp_path / "home"
    home.mkdir()
    alone = bare(python, "-c", "import zstandard", home=home)
    assert alone.returncode != 0 and "No module named 'zstandard'" in alone.stderr   # the restorer brings it
    head = read_head(bundle)[0]
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    dest = tmp_path / "restored"
    result = bare(python, str(beside(bundle)), "restore", str(bundle), "--dest", str(dest), home=home,
                  docker=dockerd.host)
    assert result.returncode == 0, result.stderr
    for image in head["images"]:
        assert f"loaded {image['tags'][0]}" in result.stdout
        dockerd.docker("image", "inspect", image["id"])
    venv_python = dest / "venv" / "bin" / "python"
    out = subprocess.run([str(venv_python), "-c", "import alpha, native; print(native.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "1.0\n"
    verified = bare(python, str(beside(bundle)), "verify", str(bundle), home=home)
    assert verified.returncode == 0 and f"so does the restorer {beside(bundle).name}" in verified.stdout


def test_a_bare_python_pushes_a_bundle_and_a_node_restores_it_from_the_registry(bundle, registry_factory, tmp_path):
    site = registry_factory()
    python = pyenv_python("3.9")
    pushed = bare(python, str(beside(bundle)), "push", str(bundle), f"{site.host}/stacks/stack:1", "--plain-http",
                  home=tmp_path, network=True)
    assert pushed.returncode == 0, pushed.stderr
    index = tmp_path / "index"
    restored = bare(python, str(beside(bundle)), "restore", f"oci://{site.host}/stacks/stack:1", "--plain-http",
                    "--wheels-only", "--dest", str(tmp_path / "dest"), "--index-dir", str(index), home=tmp_path,
                    network=True)
    assert restored.returncode == 0, restored.stderr
    head = read_head(bundle)[0]
    assert {p.name: sha256(p) for p in (index / "files").iterdir()} == {w["filename"]: w["sha256"]
                                                                          for w in head["wheels"]}


def test_a_bare_python_3_9_serves_a_bundle_with_the_restorer(bundle, tmp_path):
    from test_serve import Serving
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8",
           "NO_PROXY": "127.0.0.1"}
    served = Serving(tmp_path / "site", [bundle], env=env,
                     program=[str(pyenv_python("3.9")), "-I", str(beside(bundle))]).serving()
    try:
        head = read_head(bundle)[0]
        page = requests.get(f"{served.index_url}/simple/alpha/", timeout=10)
        wheel = next(w for w in head["wheels"] if w["name"] == "alpha")
        assert page.status_code == 200 and f"#sha256={wheel['sha256']}" in page.text
        assert served.stop() < 2 and served.process.returncode == 0
    finally:
        served.stop()


def test_the_restorer_lays_out_a_format_2_bundles_models_under_python_3_9(bundle, tmp_path, can_unshare):
    golden = REPO / "tests" / "golden" / "format2-bundler-0.2.0.tar.zst"
    head = read_head(golden)[0]
    dest = tmp_path / "restored"
    result = bare(pyenv_python("3.9"), str(beside(bundle)), "restore", str(golden), "--models-only", "--dest",
                  str(dest), home=tmp_path)
    assert result.returncode == 0, result.stderr
    ms = next(m for m in head["models"] if m["hub"] == "modelscope")
    snapshot = dest / "modelscope" / "models" / ms["repo"].replace("/", "--") / "snapshots" / ms["revision"]
    assert {p.name: sha256(p) for p in snapshot.iterdir()} == {f["path"]: f["sha256"] for f in ms["files"]}
    hf = next(m for m in head["models"] if m["hub"] == "huggingface" and m["repo_type"] == "model")
    cached = dest / "huggingface" / "hub" / f"models--{hf['repo'].replace('/', '--')}" / "snapshots" / hf["commit"]
    assert {str(p.relative_to(cached)): sha256(p) for p in cached.rglob("*") if p.is_file()} == \
        {f["path"]: f["sha256"] for f in hf["files"]}


def test_help_shows_the_air_gapped_commands_only(bundle, tmp_path, can_unshare):
    result = bare(pyenv_python("3.12"), str(beside(bundle)), "--help", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("inspect", "verify", "restore"):
        assert command in result.stdout
    for command in ("build", "lock", "profiles"):
        assert f"    {command} " not in result.stdout
    shown = bare(pyenv_python("3.13"), str(beside(bundle)), "inspect", str(bundle), home=tmp_path)
    assert shown.returncode == 0 and "profile   stack" in shown.stdout
    lacking = bare(pyenv_python("3.11"), str(beside(bundle)), "build", "x", home=tmp_path)
    assert lacking.returncode == 2 and "invalid choice: 'build'" in lacking.stderr


def test_a_bare_python_configures_a_node_for_the_site_and_nothing_of_the_mirror_catalog(bundle, tmp_path):
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{"log-driver": "local"}')
    written = bare(pyenv_python("3.9"), str(beside(bundle)), "mirrors", "config", "docker", "--site",
                   "http://10.0.0.5:5000", "--path", str(daemon_json), "--write", home=tmp_path)
    assert written.returncode == 0, written.stderr
    assert json.loads(daemon_json.read_text()) == {"log-driver": "local", "registry-mirrors": ["http://10.0.0.5:5000"],
                                                   "insecure-registries": ["10.0.0.5:5000"]}
    exports = bare(pyenv_python("3.10"), str(beside(bundle)), "mirrors", "config", "hf", "--site",
                   "http://10.0.0.5:8080", home=tmp_path)
    assert exports.returncode == 0 and "export HF_ENDPOINT=http://10.0.0.5:8080" in exports.stdout
    for args, error in ((["list"], "invalid choice: 'list'"), (["config", "pip"], "required: --site")):
        refused = bare(pyenv_python("3.11"), str(beside(bundle)), "mirrors", *args, home=tmp_path)
        assert refused.returncode == 2 and error in refused.stderr, refused.stderr


def test_an_unsupported_python_is_told_so_in_one_line(bundle, tmp_path, can_unshare):
    result = bare(pyenv_python("3.8"), str(beside(bundle)), "--help", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("bundler: error: this restorer runs on "
                                                                        "CPython 3.9, 3.10, 3.11, 3.12, 3.13; ")
    assert "is CPython 3.8" in result.stderr


def test_a_build_whose_mirrors_lack_the_restorers_wheels_says_so_and_writes_nothing(testbed_profile,
                                                                                             tmp_path, capsys):
    out = tmp_path / "x.tar.zst"
    code = cli.main(["build", str(testbed_profile), "-o", str(out), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "bundler: error: making the restorer (--no-restorer builds without it): fetching " in err, err
    assert "not found on any endpoint" in err
    assert list(tmp_path.glob("x.tar.zst*")) == []


def test_a_restorer_for_another_platform_says_so_in_one_line(restorer_mirrors, restorer_cache, tmp_path,
                                                             can_unshare, capsys):
    out = tmp_path / "arm64.pyz"
    assert cli.main(["restorer", "-o", str(out), "--platform", "linux/arm64", "--python", "3.10", "--mirrors",
                     str(restorer_mirrors), "--cache", str(restorer_cache)]) == 0
    assert "the restorer (" in capsys.readouterr().out
    assert "site-packages/zstandard/backend_c.cpython-310-aarch64-linux-gnu.so" in zipfile.ZipFile(out).namelist()
    result = bare(pyenv_python("3.10"), str(out), "--help", home=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("bundler: error: this restorer is for linux/arm64; this machine is "
                                    "linux/x86_64: make one for it")
    assert cli.main(["restorer", "-o", str(out), "--python", "3.8"]) == 2
    assert "--python 3.8: the restorer runs on CPython 3.9 and later" in capsys.readouterr().err
    assert cli.main(["restorer", "-o", str(tmp_path / "w.pyz"), "--platform", "windows/amd64"]) == 2
    assert "--platform windows/amd64: the one-file restorer is made for Linux machines only" in capsys.readouterr().err
    assert cli.main(["restorer", "-o", str(out), "--mirrors", str(restorer_mirrors)]) == 2
    assert "already exists (use --force" in capsys.readouterr().err


def test_a_bundle_for_x86_and_arm_nodes_has_one_restorer_for_both(restorer_index, restorer_cache, tmp_path,
                                                                   can_unshare, capsys):
    """Grace Hopper nodes beside x86 ones: the restorer beside a two-platform bundle carries every
    Python's extension modules for both machines, and runs on either (arm64 checked by what it holds
    and by the check it makes first: only x86_64 runs here)."""
    from bundler.restorer_entry import mismatch
    profile = tmp_path / "both.yaml"
    profile.write_text(f"name: both\ntarget:\n  platform: [linux/amd64, linux/arm64]\n  python: '3.10'\n"
                       f"python:\n  requirements: [alpha==1.0]\nmirrors:\n  pypi: [{restorer_index.url}]\n")
    out = tmp_path / "both.tar.zst"
    assert cli.main(["build", str(profile), "-o", str(out), "--cache", str(restorer_cache)]) == 0
    said = capsys.readouterr()
    assert f"CPython {', '.join(DEFAULT_PYTHONS)} on linux/amd64, linux/arm64)" in said.out, said
    entry = Head.from_json(read_head(out)[0], str(out)).restorer
    assert entry.platform == "linux/amd64" and entry.platforms == ("linux/amd64", "linux/arm64")
    assert entry.sha256 == sha256(beside(out))
    names = set(zipfile.ZipFile(beside(out)).namelist())
    for python in DEFAULT_PYTHONS:
        for machine in ("x86_64", "aarch64"):
            abi = python.replace(".", "")
            assert f"site-packages/zstandard/backend_c.cpython-{abi}-{machine}-linux-gnu.so" in names, (python, machine)
    made_for = json.loads(zipfile.ZipFile(beside(out)).read("site-packages/bundler/restorer.json"))
    assert [p["platform_machine"] for p in made_for["platforms"]] == ["x86_64", "aarch64"]
    assert mismatch(made_for, "aarch64") is None and mismatch(made_for, "x86_64") is None
    assert mismatch(made_for, "ppc64le").startswith("this restorer is for linux/amd64, linux/arm64; this machine is "
                                                    "linux/ppc64le")
    shown = bare(pyenv_python("3.9"), str(beside(out)), "inspect", str(out), home=tmp_path)
    assert shown.returncode == 0 and "on linux/amd64, linux/arm64," in shown.stdout, shown.stderr
    restored = bare(pyenv_python("3.12"), str(beside(out)), "restore", str(out), "--dest", str(tmp_path / "site"),
                    home=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "site" / "venv" / "bin" / "python").exists()


# ---- integrity, reproducibility, the cache -----------------------------------------------------------

def test_the_same_inputs_give_the_same_restorer_and_a_second_build_takes_it_from_the_cache(
        bundle, restorer_mirrors, restorer_cache, tmp_path):
    ctx = Context.create(mirrors_file=restorer_mirrors, cache_dir=tmp_path / "fresh-cache")
    fresh = make_restorer(("linux/amd64",), DEFAULT_PYTHONS, ctx)
    assert fresh.made and fresh.sha256 == sha256(beside(bundle))
    again = make_restorer(("linux/amd64",), DEFAULT_PYTHONS, Context.create(mirrors_file=restorer_mirrors,
                                                                          cache_dir=restorer_cache))
    assert not again.made and again.sha256 == fresh.sha256


def test_a_split_bundle_has_its_restorer_beside_its_volumes_and_verify_checks_it(
        bundle, restorer_profile, restorer_cache, tmp_path, capsys):
    out = tmp_path / "split.tar.zst"
    code = cli.main(["build", str(restorer_profile), "-o", str(out), "--split", "1M", "--cache", str(restorer_cache)])
    assert code == 0
    captured = capsys.readouterr()
    assert "restorer for CPython 3.9, 3.10, 3.11, 3.12, 3.13 on linux/amd64: taken from the cache" in captured.err
    assert f"wrote {beside(out)}: the restorer" in captured.out
    assert sha256(beside(out)) == sha256(beside(bundle))
    listed = (tmp_path / "split.tar.zst.sha256").read_text()
    assert ".pyz" not in listed and "split.tar.zst.001" in listed   # volumes only: readers take every line
    assert cli.main(["verify", str(tmp_path / "split.tar.zst.002")]) == 0
    assert f"so does the restorer {beside(out).name}" in capsys.readouterr().out

    data = bytearray(beside(out).read_bytes())
    data[len(data) // 2] ^= 0x01
    beside(out).write_bytes(bytes(data))
    assert cli.main(["verify", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"bundler: error: {beside(out)}: the restorer's sha256 is ") and err.count("\n") == 1
    assert "do not run it" in err
    beside(out).unlink()   # no restorer beside it: the bundle alone verifies
    assert cli.main(["verify", str(out)]) == 0
    assert "restorer" not in capsys.readouterr().out


def test_a_tampered_restorer_is_refused_by_an_earlier_restorers_verify(bundle, tmp_path, can_unshare):
    copy = tmp_path / bundle.name
    copy.write_bytes(bundle.read_bytes())
    data = bytearray(beside(bundle).read_bytes())
    data[100] ^= 0x01
    beside(copy).write_bytes(bytes(data))
    result = bare(pyenv_python("3.10"), str(beside(bundle)), "verify", str(copy), home=tmp_path)
    assert result.returncode == 3 and f"{beside(copy)}: the restorer's sha256 is" in result.stderr


def test_the_head_key_is_read_like_every_other(tmp_path, capsys):
    from test_format import golden_head
    entry = {"platform": "linux/amd64", "pythons": ["3.9", "3.10"], "size": 5, "sha256": "a" * 64}
    head = golden_head()
    head["restorer"] = entry
    assert cli.main(["inspect", str(bundles.head_only(tmp_path / "ok.tar.zst", head))]) == 0
    for key, value in (("restorer", []), ("restorer.pythons", ["3.x"]), ("restorer.size", -1),
                       ("restorer.sha256", "sha256:" + "a" * 64), ("restorer.platform", None),
                       ("restorer.platforms", "linux/arm64"), ("restorer.platforms", ["linux/amd64", 64])):
        head = golden_head()
        head["restorer"] = dict(entry)
        if key == "restorer":
            head["restorer"] = value
        else:
            head["restorer"][key.split(".")[1]] = value
        code = cli.main(["inspect", str(bundles.head_only(tmp_path / "bad.tar.zst", head))])
        err = capsys.readouterr().err
        assert code == 3 and f"bundle.json: {key}" in err, (key, err)
    head = golden_head()
    head["restorer"] = dict(entry, platforms=["linux/amd64", "linux/arm64"])
    assert cli.main(["inspect", str(bundles.head_only(tmp_path / "both.tar.zst", head))]) == 0
    head = golden_head()
    head["restorer"] = {k: v for k, v in entry.items() if k != "sha256"}
    assert cli.main(["inspect", str(bundles.head_only(tmp_path / "bad.tar.zst", head))]) == 3
    assert "bundle.json: restorer.sha256: missing" in capsys.readouterr().err


# ---- the manual path: stock tools on a host with no Python -------------------------------------------

def test_the_readmes_manual_path_loads_the_images_with_stock_tools(bundle, dockerd, tmp_path, can_unshare):
    head = read_head(bundle)[0]
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    script = (f"mkdir out && zstd -dc {bundle} | tar -xf - -C out && "
              "tar -C out/images -cf - . | docker load")
    result = subprocess.run(["unshare", "--net", "bash", "-o", "pipefail", "-ec", script], cwd=tmp_path,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_HOST": dockerd.host,
                                 "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for image in head["images"]:
        assert f"Loaded image: {image['tags'][0]}" in result.stdout
        dockerd.docker("image", "inspect", image["id"])


def test_the_restorer_checks_a_signature_with_the_systems_ssh_keygen(restorer_profile, restorer_cache, tmp_path,
                                                                     can_unshare):
    """The restorer carries no cryptography: a signed bundle is checked by ssh-keygen -Y check-novalidate,
    against the trust file it reads itself; a bundle signed by another key is refused."""
    from test_trust import allowed_signers, keygen
    out = tmp_path / "signed.tar.zst"
    alice, mallory = keygen(tmp_path, "alice"), keygen(tmp_path, "mallory")
    assert cli.main(["build", str(restorer_profile), "-o", str(out), "--cache", str(restorer_cache), "-q",
                     "--sign", str(alice)]) == 0
    names = zipfile.ZipFile(beside(out)).namelist()
    assert not any(name.startswith("site-packages/cryptography/") for name in names)
    trusted = allowed_signers(tmp_path / "trusted", alice)
    checked = bare(pyenv_python("3.9"), str(beside(out)), "verify", str(out), "--trust", str(trusted), home=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "signed by alice@site (ED25519 key SHA256:" in checked.stdout
    assert "so does the restorer" in checked.stdout
    assert f"{beside(out)}.sig: signed by alice@site (ED25519 key SHA256:" in checked.stdout   # by ssh-keygen too
    other = allowed_signers(tmp_path / "other", mallory)
    refused = bare(pyenv_python("3.9"), str(beside(out)), "verify", str(out), "--trust", str(other), home=tmp_path)
    assert refused.returncode == 3 and "does not trust" in refused.stderr, refused.stderr


def test_stock_ssh_keygen_checks_the_restorer_before_it_is_run(restorer_profile, restorer_cache, tmp_path, capsys):
    """The README's first step on the air-gapped side: OUT.pyz.sig, checked by ssh-keygen alone, vouches for
    OUT.pyz, and a changed OUT.pyz is refused. verify --trust checks it too: another key's signature, or a
    signature of something else, is refused naming OUT.pyz.sig."""
    from test_trust import allowed_signers, keygen
    alice, mallory = keygen(tmp_path, "alice"), keygen(tmp_path, "mallory")
    trusted = allowed_signers(tmp_path / "allowed_signers", alice)
    out = tmp_path / "signed.tar.zst"
    assert cli.main(["build", str(restorer_profile), "-o", str(out), "--cache", str(restorer_cache),
                     "--sign", str(alice)]) == 0
    pyz, sig = beside(out), tmp_path / "signed.tar.zst.pyz.sig"
    assert f"wrote {sig}: the restorer's signature" in capsys.readouterr().out

    def stock_check(signature: Path, signed: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"ssh-keygen -Y verify -f {trusted} -I alice@site -n bundler "
                                             f"-s {signature} < {signed}"], capture_output=True, text=True)

    accepted = stock_check(sig, pyz)
    assert accepted.returncode == 0 and 'Good "bundler" signature for alice@site' in accepted.stdout, accepted.stderr
    changed = tmp_path / "changed.pyz"
    data = bytearray(pyz.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed.write_bytes(bytes(data))
    assert stock_check(sig, changed).returncode != 0

    assert cli.main(["verify", str(out), "--trust", str(trusted)]) == 0
    assert f"{sig}: signed by alice@site (ED25519 key SHA256:" in capsys.readouterr().out
    genuine = sig.read_bytes()
    sig.unlink()
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(mallory), "-n", "bundler", str(pyz)], check=True,
                   capture_output=True)   # writes OUT.pyz.sig: mallory's signature of the very same restorer
    assert cli.main(["verify", str(out), "--trust", str(trusted)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"bundler: error: {sig}: signed by ED25519 key SHA256:") and "does not trust" in err, err
    sig.write_bytes(genuine)
    (tmp_path / "other").write_bytes(b"another file\n")
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(alice), "-n", "bundler", str(tmp_path / "other")],
                   check=True, capture_output=True)
    os.replace(tmp_path / "other.sig", sig)   # alice's, but of another file
    assert cli.main(["verify", str(out)]) == 3
    assert f"bundler: error: {sig}: not a signature of {pyz.name}" in capsys.readouterr().err

    assert cli.main(["build", str(restorer_profile), "-o", str(out), "--cache", str(restorer_cache), "--force",
                     "-q"]) == 0
    assert pyz.is_file() and not sig.exists()   # an unsigned build leaves no older signature beside it
