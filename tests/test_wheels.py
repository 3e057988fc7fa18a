"""Wheels: resolved for the target (not this machine), locked with hashes, fetched through mirrors."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bundler.build.cache import Cache
from bundler.build.context import BuildContext as Context
from bundler.build.lockfile import dump_lock, read_lock, write_lock
from bundler.build.mirrors import Mirrors
from bundler.build.options import FetchStats
from bundler.build.profile import load_profile
from bundler.build.verb import lock
from bundler.build.wheels.fetch import Source, WheelFetcher, fetch_wheels, sources_for
from bundler.build.wheels.requirements import WheelTarget, add_hashes, parse_lock
from bundler.build.wheels.resolve import build_wheel, default_index_url
from bundler.errors import InputError, IntegrityError, LockError
from bundler.net.endpoints import Endpoint, Fallback
from bundler.oci.reference import Platform
from conftest import offline
from testbed import services
from testbed import wheels as tb_wheels
from testbed.policy import FAST_RETRY

LINUX310 = WheelTarget(Platform.parse("linux/amd64"), "3.10")


def profile_file(tmp_path: Path, requirements: list[str], platform: str = "linux/amd64", python: str = "3.10",
                 extra: str = "") -> Path:
    path = tmp_path / "profile.yaml"
    reqs = "".join(f"    - {r!r}\n" for r in requirements)
    path.write_text(f"name: wheels-test\ntarget:\n  platform: {platform}\n  python: \"{python}\"\n"
                    f"python:\n  requirements:\n{reqs}{extra}")
    return path


def context(tmp_path: Path, *pypi: str) -> Context:
    mirrors = Mirrors({}, tuple(Endpoint(u, "test") for u in pypi))
    return Context(policy=FAST_RETRY, mirrors=mirrors, cache_dir=tmp_path / "cache",
                   fallback=Fallback(FAST_RETRY, sleep=lambda s: None))


def locked_names(text: str) -> dict[str, str]:
    return {pin.name: pin.version for pin in parse_lock(text, "test")}


def test_lock_for_windows_keeps_the_dependency_the_host_would_drop(index, tmp_path):
    windows = lock(load_profile(str(profile_file(tmp_path, ["alpha==1.0"], "windows/amd64"))),
                   context(tmp_path, index.url))
    assert locked_names(windows.requirements) == {"alpha": "1.0", "beta": "1.0", "winhelper": "1.0"}
    linux = lock(load_profile(str(profile_file(tmp_path, ["alpha==1.0"]))), context(tmp_path, index.url))
    assert locked_names(linux.requirements) == {"alpha": "1.0", "beta": "1.0"}
    for pin in parse_lock(windows.requirements, "test"):
        assert pin.hashes  # every pin carries its sha256


def test_lock_for_another_python_version_picks_what_supports_it(index, tmp_path):
    for python, beta in (("3.10", "1.0"), ("3.11", "2.0")):
        result = lock(load_profile(str(profile_file(tmp_path, ["beta"], python=python))), context(tmp_path, index.url))
        assert locked_names(result.requirements)["beta"] == beta


def test_resolution_falls_back_to_the_next_mirror(index, tmp_path):
    refused = services.refusing_url()
    result = lock(load_profile(str(profile_file(tmp_path, ["alpha==1.0"]))), context(tmp_path, refused, index.url))
    assert locked_names(result.requirements)["alpha"] == "1.0"


def test_unresolvable_requirement_is_bad_input_naming_the_mirror(index, tmp_path):
    with pytest.raises(InputError, match=rf"python.requirements\[0\]: alpha==9.9: no solution for .* \(resolved "
                                         rf"through {index.url}\): Because there is no version of alpha==9.9"):
        lock(load_profile(str(profile_file(tmp_path, ["alpha==9.9"]))), context(tmp_path, index.url))


def test_local_version_on_an_extra_index_cannot_shadow_an_exact_pin(index, tmp_path):
    extra_dir = tmp_path / "extra"
    tb_wheels.build_wheel(extra_dir, "alpha", "1.0+cu121", requires=["beta>=1.0"])
    extra = services.IndexServer(extra_dir).start()
    try:
        path = profile_file(tmp_path, ["alpha==1.0"], extra=f"  extra_index_urls: [{extra.url}]\n")
        with pytest.raises(InputError, match=r"alpha==1.0 resolved to 1.0\+cu121, a local build from an extra "
                                             r"index; ask for alpha==1.0\+cu121"):
            lock(load_profile(str(path)), context(tmp_path, index.url))
        path = profile_file(tmp_path, ["alpha==1.0+cu121"], extra=f"  extra_index_urls: [{extra.url}]\n")
        result = lock(load_profile(str(path)), context(tmp_path, index.url))
        assert locked_names(result.requirements)["alpha"] == "1.0+cu121"
    finally:
        extra.stop()


def fetcher(tmp_path: Path, *urls: str, target: WheelTarget = LINUX310, builder=None) -> WheelFetcher:
    return WheelFetcher(target, [Source(u) for u in urls], Fallback(FAST_RETRY, sleep=lambda s: None),
                        Cache(tmp_path / "cache"), builder)


def test_fetch_picks_the_wheel_for_the_target(index, tmp_path):
    text = lock(load_profile(str(profile_file(tmp_path, ["native==1.0"]))), context(tmp_path, index.url)).requirements
    (linux,) = fetch_wheels(parse_lock(text, "t"), fetcher(tmp_path, index.url))
    assert linux.filename == "native-1.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    windows_target = WheelTarget(Platform.parse("windows/amd64"), "3.11")
    text = lock(load_profile(str(profile_file(tmp_path, ["native==1.0"], "windows/amd64", "3.11"))),
                context(tmp_path, index.url)).requirements
    (windows,) = fetch_wheels(parse_lock(text, "t"), fetcher(tmp_path, index.url, target=windows_target))
    assert windows.filename == "native-1.0-cp311-cp311-win_amd64.whl"


def test_tampered_wheel_from_a_mirror_is_skipped(index, faulty, tmp_path):
    text = lock(load_profile(str(profile_file(tmp_path, ["alpha==1.0"]))), context(tmp_path, index.url)).requirements
    pins = parse_lock(text, "t")
    flipping = faulty(index.url.removesuffix("/simple"), "flip")
    stats = FetchStats()
    wheels = fetch_wheels(pins, fetcher(tmp_path, flipping.url + "/simple", index.url), stats=stats)
    assert {w.name for w in wheels} == {"alpha", "beta"}
    assert any("/files/" in r for r in flipping.requests)  # the tampered bytes were offered, and refused
    cache = Cache(tmp_path / "cache")
    for wheel in wheels:
        data = cache.path(f"sha256:{wheel.sha256}").read_bytes()
        assert data == (index.root / wheel.filename).read_bytes()
    with pytest.raises(IntegrityError, match=r"fetching (alpha|beta)==1\.0: every endpoint failed: .*which the lock does not allow"):
        fetch_wheels(pins, fetcher(tmp_path / "other", flipping.url + "/simple"))


def test_interrupted_wheel_download_resumes(index, faulty, tmp_path):
    path = index.root / "beta-1.0-py3-none-any.whl"
    pins = parse_lock(f"beta==1.0 --hash=sha256:{tb_wheels.sha256_file(path)}\n", "t")
    f = fetcher(tmp_path, index.url)
    half = path.read_bytes()[: path.stat().st_size // 2]
    f.cache.partial(f"file-{path.name}").write_bytes(half)
    proxy = faulty(index.url.removesuffix("/simple"), "ok")
    f.sources = [Source(proxy.url + "/simple")]
    stats = FetchStats()
    (wheel,) = fetch_wheels(pins, f, stats=stats)
    assert stats.bytes_resumed == len(half)
    assert proxy.ranges == [(f"/files/{path.name}", f"bytes={len(half)}-")]
    assert f.cache.path(f"sha256:{wheel.sha256}").read_bytes() == path.read_bytes()


def test_wheel_installs_offline_with_require_hashes_into_python310(index, python310, tmp_path, can_unshare):
    text = lock(load_profile(str(profile_file(tmp_path, ["alpha==1.0"]))), context(tmp_path, index.url)).requirements
    wheels = fetch_wheels(parse_lock(text, "t"), fetcher(tmp_path, index.url))
    folder = tmp_path / "wheels"
    folder.mkdir()
    cache = Cache(tmp_path / "cache")
    for wheel in wheels:
        (folder / wheel.filename).write_bytes(cache.path(f"sha256:{wheel.sha256}").read_bytes())
    (tmp_path / "requirements.lock").write_text(text)
    venv = tmp_path / "venv"
    subprocess.run([str(python310), "-m", "venv", str(venv)], check=True)
    result = offline([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(folder),
                      "--require-hashes", "-r", str(tmp_path / "requirements.lock")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import alpha, beta; print(alpha.NAME, beta.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "alpha 1.0\n"


def test_pure_sdist_is_built_into_a_wheel(index, tmp_path):
    text = lock(load_profile(str(profile_file(tmp_path, ["sdistonly==1.0"]))), context(tmp_path, index.url)).requirements
    cache = Cache(tmp_path / "cache")
    f = fetcher(tmp_path, index.url, builder=lambda sdist, name, pin, target: build_wheel(sdist, name, pin, target,
                                                                                         None, cache))
    stats = FetchStats()
    (wheel,) = fetch_wheels(parse_lock(text, "t"), f, stats=stats)
    assert wheel.built and wheel.filename == "sdistonly-1.0-py3-none-any.whl"
    assert stats.built == ["sdistonly==1.0"]
    # the bundle's lock must accept the built wheel's hash
    extended = add_hashes(text, {"sdistonly": [wheel.sha256]})
    (pin,) = parse_lock(extended, "t")
    assert wheel.sha256 in pin.hashes and len(pin.hashes) == 2


def test_sdist_that_compiles_for_another_target_is_refused_naming_it(index, tmp_path):
    text = lock(load_profile(str(profile_file(tmp_path, ["nativesdist==1.0"]))),
                context(tmp_path, index.url)).requirements
    cache = Cache(tmp_path / "cache")
    f = fetcher(tmp_path, index.url, builder=lambda sdist, name, pin, target: build_wheel(sdist, name, pin, target,
                                                                                         None, cache))
    with pytest.raises(LockError, match=r"nativesdist==1.0: only an sdist is published, and it compiles to "
                                        r"cp311-cp311-win_amd64, which does not run on linux/amd64 CPython 3.10"):
        fetch_wheels(parse_lock(text, "t"), f)


def test_lock_file_round_trip_and_user_pip_compile_lock(index, tmp_path):
    user_lock = tmp_path / "requirements.lock"
    beta = tb_wheels.sha256_file(index.root / "beta-1.0-py3-none-any.whl")
    user_lock.write_text(textwrap.dedent(f"""\
        #
        # This file is autogenerated by pip-compile with Python 3.10
        #
        --index-url https://pypi.tuna.tsinghua.edu.cn/simple

        beta==1.0 \\
            --hash=sha256:{beta}
            # via -r requirements.in
        winhelper==1.0 ; sys_platform == "win32" \\
            --hash=sha256:{"0" * 64}
        """))
    path = tmp_path / "p.yaml"
    path.write_text("name: userlock\ntarget: {platform: linux/amd64, python: '3.10'}\n"
                    "python:\n  lock: requirements.lock\n")
    result = lock(load_profile(str(path)), context(tmp_path, index.url))
    pins = result.pins()
    assert [(p.name, p.applies_to(LINUX310)) for p in pins] == [("beta", True), ("winhelper", False)]
    assert result.created is None   # no SOURCE_DATE_EPOCH: the file is dated when it is written
    write_lock(result, tmp_path / "out.lock")
    again = read_lock(tmp_path / "out.lock")
    assert again == replace(result, created=again.created) and abs(again.created - time.time()) < 60
    assert dump_lock(again) == (tmp_path / "out.lock").read_text()


BROKEN_LOCKS = [
    ("beta>=1.0 --hash=sha256:" + "a" * 64, "beta is not pinned to one version"),
    ("beta==1.0", "beta==1.0 has no --hash"),
    ("beta==1.0 --hash=md5:abc", "is not --hash=sha256"),
    ("-r other.txt", "-r is not allowed in a lock"),
    ("beta @ https://x/beta.whl --hash=sha256:" + "a" * 64, "direct URL requirements"),
    ("beta==1.0 --hash=sha256:" + "a" * 64 + "\nbeta==1.0 --hash=sha256:" + "b" * 64, "pinned twice"),
]


@pytest.mark.parametrize("text,message", BROKEN_LOCKS)
def test_broken_requirement_locks_are_located(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    (tmp_path / "r.lock").write_text("# header\n" + text + "\n")
    path.write_text("name: x\ntarget: {platform: linux/amd64, python: '3.10'}\npython:\n  lock: r.lock\n")
    with pytest.raises(LockError, match=rf"r.lock:\d+: .*{message}"):
        lock(load_profile(str(path)), context(tmp_path))


def test_sources_put_official_as_the_clients_default(index):
    sources = sources_for((Endpoint("https://mirror/simple"), Endpoint("official")), default_index_url,
                          ["https://extra/simple"], ["https://links/page.html"])
    assert [s.url for s in sources] == ["https://mirror/simple", default_index_url(), "https://extra/simple",
                                        "https://links/page.html"]
    assert sources[-1].kind == "links"


@pytest.mark.network
def test_torch_lock_for_linux_cp310_has_its_cuda_wheels(tmp_path):
    """On any machine, the lock for linux/amd64 + 3.10 keeps torch's nvidia-* wheels."""
    result = lock(load_profile(str(profile_file(tmp_path, ["torch==2.1.2"]))), context(tmp_path, "official"))
    names = locked_names(result.requirements)
    assert names["torch"] == "2.1.2"
    assert "nvidia-cudnn-cu12" in names and "triton" in names


def write_python_profile(folder: Path, requirements: list[str], pypi: list[str]) -> Path:
    path = folder / "p.yaml"
    path.write_text("name: p\ntarget:\n  platform: linux/amd64\n  python: '3.10'\npython:\n  requirements:\n"
                    + "".join(f"    - {r!r}\n" for r in requirements) + f"mirrors:\n  pypi: [{', '.join(pypi)}]\n")
    return path


def test_a_requirement_nothing_satisfies_is_the_profiles_fault_and_no_other_mirror_is_asked(index, faulty, tmp_path,
                                                                                            capsys):
    from bundler import cli
    from testbed.services import refusing_url
    other = faulty(index.url.removesuffix("/simple"))    # it would answer, if asked
    profile = write_python_profile(tmp_path, ["alpha==1.0", "beta==9.9"],
                                   [refusing_url(), index.url, f"{other.url}/simple"])
    code = cli.main(["lock", str(profile), "--cache", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"bundler: error: {profile}:8: python.requirements[1]: beta==9.9: no solution for "
                          f"linux/amd64 CPython 3.10 glibc 2.31 (resolved through {index.url}): Because there is no "
                          "version of beta==9.9"), err
    assert err.count("\n") == 1 and other.requests == []


def test_a_conflict_names_each_requirement_it_involves(index, tmp_path, capsys):
    from bundler import cli
    profile = write_python_profile(tmp_path, ["beta<1.0", "alpha==1.0"], [index.url])
    assert cli.main(["lock", str(profile), "--cache", str(tmp_path / "cache"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{profile}:8: python.requirements[1]: alpha==1.0: no solution" in err, err
    assert f"; see also {profile}:7: python.requirements[0] (beta<1.0)" in err, err


def test_a_requirements_file_is_named_by_its_own_line(index, tmp_path, capsys):
    from bundler import cli
    (tmp_path / "requirements.in").write_text("# the stack\nalpha==1.0\nbeta==9.9  # too new\n")
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: p\ntarget:\n  platform: linux/amd64\n  python: '3.10'\npython:\n  requirements_file: "
                       f"requirements.in\nmirrors:\n  pypi: [{index.url}]\n")
    assert cli.main(["lock", str(profile), "--cache", str(tmp_path / "cache"), "-q"]) == 2
    assert f"{tmp_path / 'requirements.in'}:3: beta==9.9: no solution" in capsys.readouterr().err


def test_a_wheel_the_cache_chose_before_is_not_carried_when_the_lock_pins_other_bytes(index, wheel_dir, tmp_path):
    """A file published again under its name (a private index, a mirror that rebuilt it): a lock made
    since pins the new bytes, and the cache's earlier choice for that pin, which the lock's hashes do
    not list, is not what the bundle carries (pip install --require-hashes would refuse it)."""
    name = "native-1.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(wheel_dir, rebuilt)
    tb_wheels.build_wheel(rebuilt, "native", "1.0", tag=name.removeprefix("native-1.0-").removesuffix(".whl"),
                          payload=b"rebuilt\n")
    other = services.IndexServer(rebuilt).start()
    try:
        profile = load_profile(str(profile_file(tmp_path, ["native==1.0"])))
        (before,) = fetch_wheels(parse_lock(lock(profile, context(tmp_path, index.url)).requirements, "t"),
                                 fetcher(tmp_path, index.url))
        (pin,) = parse_lock(lock(profile, context(tmp_path, other.url)).requirements, "t")
        (after,) = fetch_wheels([pin], fetcher(tmp_path, other.url))
    finally:
        other.stop()
    assert before.sha256 == tb_wheels.sha256_file(index.root / name) != tb_wheels.sha256_file(rebuilt / name)
    assert after.sha256 == tb_wheels.sha256_file(rebuilt / name) and after.sha256 in pin.hashes
