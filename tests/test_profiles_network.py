"""Re-lock every built-in profile against the real index and show what changed since its shipped lock.

Opt-in (`scripts/test.sh -m network`). A newer transitive release is information, printed as a
diff; the test fails only when the re-lock itself fails or the fresh lock loses one of the stack's
own wheels: a framework pin, or a CUDA (nvidia-*) wheel the shipped lock has.
"""

from __future__ import annotations

import datetime

import pytest
from test_builtin_profiles import FRAMEWORK_WHEELS, pins_of

from bundler import cli
from bundler.build.lockfile import Lock, read_lock
from bundler.build.profile import builtin_lock, builtin_names, load_profile
from conftest import bundler_cmd

pytestmark = pytest.mark.network


def lock_diff(shipped: Lock, fresh: Lock) -> list[str]:
    old, new = pins_of(shipped), pins_of(fresh)
    lines = [f"  changed  {name} {old[name]} -> {new[name]}" for name in sorted(old.keys() & new.keys())
             if old[name] != new[name]]
    lines += [f"  added    {name} {new[name]}" for name in sorted(new.keys() - old.keys())]
    lines += [f"  removed  {name} {old[name]}" for name in sorted(old.keys() - new.keys())]
    return lines


@pytest.mark.parametrize("name", builtin_names())
def test_relock_against_the_index_and_show_the_difference(name, tmp_path, capsys):
    shipped_path = builtin_lock(load_profile(name))
    shipped = read_lock(shipped_path)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("pypi: [official]\n")   # the upstream index only: no mirror's lag in the diff
    fresh_path = tmp_path / f"{name}.lock"
    code = cli.main(["lock", name, "--wheels-only", "--mirrors", str(mirrors), "--cache", str(tmp_path / "cache"),
                     "-o", str(fresh_path), "-q"])
    assert code == 0, capsys.readouterr().err
    fresh = read_lock(fresh_path)

    changes = lock_diff(shipped, fresh)
    made = datetime.datetime.fromtimestamp(shipped.created, datetime.timezone.utc)
    with capsys.disabled():
        print(f"\n{name}: re-locked today against {shipped_path} (locked {made:%Y-%m-%d}): "
              + (f"{len(changes)} difference(s)" if changes else "no difference"))
        for line in changes:
            print(line)
        if changes:
            print(f"  to ship the new lock: scripts/lock-profiles.sh {name}")

    old, new = pins_of(shipped), pins_of(fresh)
    own = set(FRAMEWORK_WHEELS[name]) | {n for n in old if n.startswith("nvidia-")}
    lost = sorted(n for n in own if n not in new)
    assert not lost, f"{name}: the fresh lock lost {', '.join(lost)}"
    for framework, version in FRAMEWORK_WHEELS[name].items():
        assert new[framework] == version


# Files each stack's wheels must carry (under site-packages) that a pure-Python stand-in of the same
# wheel lacks: chosen for a glibc below what the wheel needs, tensorboard-data-server 0.7.2 came as its
# 2 KiB py3-none-any wheel and `tensorboard` could not serve.
KNOWN_BINARIES = {
    "tensorflow-gpu": {"tensorboard-data-server": "tensorboard_data_server/bin/server",
                       "nvidia-cuda-runtime-cu12": "nvidia/cuda_runtime/lib/libcudart.so.12"},
    "pytorch-cuda12.1": {"nvidia-cuda-runtime-cu12": "nvidia/cuda_runtime/lib/libcudart.so.12"},
    "paddle-2.6-gpu": {"protobuf": "google/_upb/_message.abi3.so"},
}


def pin_blocks(requirements: str) -> dict[str, str]:
    """Each pin's lines (the pin, its hashes, its comments) of a pip-tools lock, by canonical name."""
    from packaging.utils import canonicalize_name
    blocks: dict[str, str] = {}
    name = None
    for line in requirements.splitlines(keepends=True):
        if line[:1].isalnum():
            name = canonicalize_name(line.split("==")[0].split("[")[0])
            blocks[name] = ""
        if name is not None:
            blocks[name] += line
    return blocks


@pytest.mark.parametrize("name", builtin_names())
def test_the_shipped_lock_restores_each_stacks_known_binaries(name, tmp_path, python310, can_unshare, capsys):
    """The known packages' pins, cut from the shipped lock (none has dependencies), built for the
    profile's target from the real index and restored offline: their programs and libraries are there."""
    import subprocess

    from conftest import offline
    profile = load_profile(name)
    shipped = read_lock(builtin_lock(profile))
    blocks = pin_blocks(shipped.requirements)
    (tmp_path / "known.lock").write_text("".join(blocks[package] for package in KNOWN_BINARIES[name]))
    (tmp_path / "known.yaml").write_text(
        f"name: {name}-known\ntarget:\n  platform: {profile.target.platform}\n  python: '{profile.target.python}'\n"
        f"  glibc: '{profile.target.glibc}'\npython:\n  lock: known.lock\nmirrors:\n  pypi: [official]\n")
    bundle = tmp_path / "known.tar.zst"
    assert cli.main(["build", "--no-restorer", str(tmp_path / "known.yaml"), "-o", str(bundle), "--cache", str(tmp_path / "cache"),
                     "-q"]) == 0, capsys.readouterr().err
    dest = tmp_path / "dest"
    restored = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310), "-q"),
                       capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    site = dest / "venv" / "lib" / f"python{profile.target.python}" / "site-packages"
    for package, path in KNOWN_BINARIES[name].items():
        assert (site / path).is_file() and (site / path).stat().st_size > 1 << 16, f"{name}: {package} lacks {path}"
    if name == "tensorflow-gpu":
        subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "from tensorboard_data_server import "
                        "server_binary; assert server_binary(), 'no server binary'"], check=True)
