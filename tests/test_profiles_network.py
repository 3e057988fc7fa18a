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
from bundler.lockfile import Lock, read_lock
from bundler.profile import builtin_lock, builtin_names, load_profile

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
