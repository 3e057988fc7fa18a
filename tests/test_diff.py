"""bundler diff: what changes between two bundles (heads only) or locks, kind by kind, with sizes."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from bundler import cli
from bundler.files import human_size
from bundler.format.archive import read_head
from testbed import services
from testbed import wheels as tb_wheels


def write(folder, name, registry_host, image, index_url, requirements, glibc):
    path = folder / f"{name}.yaml"
    path.write_text(f"name: stack\ntarget:\n  platform: linux/amd64\n  python: '3.10'\n  glibc: '{glibc}'\n"
                    f"images:\n  - {image}\npython:\n  requirements: {json.dumps(requirements)}\n"
                    f"mirrors:\n  registries:\n    {registry_host}: [official]\n  pypi: [{index_url}]\n")
    return path


@pytest.fixture(scope="module")
def versions(tmp_path_factory, registry_factory, sample_layout, index):
    """Two bundles of one stack: B's image was pushed again with another top layer, B adds a wheel, and
    B's glibc takes another file of one wheel."""
    folder = tmp_path_factory.mktemp("versions")
    site = registry_factory()
    image = f"{site.host}/team/stack:1"
    sides = {}
    for name, source, requirements, glibc in (("a", "app", ["alpha==1.0", "dataserver==1.0"], "2.28"),
                                               ("b", "app2", ["alpha==1.0", "dataserver==1.0", "native==1.0"],
                                                "2.31")):
        sample_layout.push(source, image, docker_format=True)
        profile = write(folder, name, site.host, image, index.url, requirements, glibc)
        assert cli.main(["lock", str(profile), "-o", str(folder / f"{name}.lock"), "-q"]) == 0
        assert cli.main(["build", "--no-restorer", str(profile), "--lock", str(folder / f"{name}.lock"), "-o",
                         str(folder / f"{name}.tar.zst"), "--cache", str(folder / "cache"), "-q"]) == 0
        sides[name] = folder / name
    return sides


def test_two_bundles(versions, capsys):
    a, b = (versions[s].with_suffix(".tar.zst") for s in "ab")
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    head_a, head_b = read_head(a)[0], read_head(b)[0]
    assert out[0] == f"A  {a}: bundle of stack (1 images, 3 wheels)"
    assert out[1] == f"B  {b}: bundle of stack (1 images, 4 wheels)"
    assert out[2] == "images    1 changed, 0 added, 0 removed, 0 unchanged"
    name = head_b["images"][0]["name"].split("@")[0]
    assert out[3].startswith(f"  changed  {name}  {head_a['images'][0]['digest']} -> {head_b['images'][0]['digest']}")
    assert re.fullmatch(r"layers    1 added \([0-9.]+ KiB\), 1 removed \([0-9.]+ KiB\), 2 unchanged \([0-9.]+ MiB\)",
                        out[4]), out[4]
    assert out[5] == "wheels    1 changed, 1 added, 0 removed, 2 unchanged"
    assert out[6].startswith("  changed  dataserver  1.0  dataserver-1.0-py3-none-any.whl -> "
                             "dataserver-1.0-py3-none-manylinux_2_31_x86_64.whl  (")
    assert out[7] == "  added    native  1.0  (2.0 MiB)"
    added_layer = [d for d in head_b["images"][0]["layer_digests"] if d not in head_a["images"][0]["layer_digests"]]
    wheels = {w["name"]: w["size"] for w in head_b["wheels"]}
    new = sum(m["size"] for m in head_b["members"] if m["path"].endswith(added_layer[0][7:])) + \
        wheels["native"] + wheels["dataserver"]
    assert out[8] == f"B carries {human_size(new)} that A does not"

    assert cli.main(["diff", str(a), str(b), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["kinds"]["images"]["layers"]["unchanged"] == 2
    assert found["kinds"]["wheels"]["new_bytes"] == wheels["native"] + wheels["dataserver"]


def test_a_lock_against_a_bundle_compares_versions(versions, capsys):
    lock, bundle = versions["a"].with_suffix(".lock"), versions["b"].with_suffix(".tar.zst")
    assert cli.main(["diff", str(lock), str(bundle)]) == 0
    out = capsys.readouterr().out
    assert f"A  {lock}: lock of stack" in out
    assert "wheels    0 changed, 1 added, 0 removed, 3 unchanged" in out
    assert "  added    native  1.0  (2.0 MiB)" in out and "B carries" not in out


def test_a_missing_side_is_named(versions, tmp_path, capsys):
    assert cli.main(["diff", str(tmp_path / "none.lock"), str(versions["b"].with_suffix(".tar.zst"))]) == 2
    assert f"{tmp_path / 'none.lock'}" in capsys.readouterr().err


ARM64_WHEEL = "native-1.0-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


@pytest.fixture(scope="module")
def arm64_rebuilt(tmp_path_factory, registry, pushed, wheel_dir, index):
    """Two bundles of one two-platform stack, for each order of its platforms: in B, only the arm64
    wheel of native was rebuilt (the same file name, other bytes)."""
    folder = tmp_path_factory.mktemp("arm64")
    rebuilt = folder / "wheels"
    shutil.copytree(wheel_dir, rebuilt)
    tb_wheels.build_wheel(rebuilt, "native", "1.0", tag="cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64",
                          payload=b"rebuilt for arm64\n")
    assert (rebuilt / ARM64_WHEEL).read_bytes() != (wheel_dir / ARM64_WHEEL).read_bytes()
    other = services.IndexServer(rebuilt).start()
    bundles = {}
    try:
        for order in (["linux/amd64", "linux/arm64"], ["linux/arm64", "linux/amd64"]):
            for side, index_url in (("a", index.url), ("b", other.url)):
                profile = folder / f"{side}-{order[0].split('/')[1]}.yaml"
                profile.write_text(f"name: both\ntarget:\n  platform: {json.dumps(order)}\n  python: '3.10'\n"
                                   f"images:\n  - {pushed['multi']}\npython:\n  requirements: [alpha==1.0, native==1.0]\n"
                                   f"mirrors:\n  registries:\n    {registry.host}: [official]\n  pypi: [{index_url}]\n")
                out = profile.with_suffix(".tar.zst")
                assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "--cache", str(folder / "cache"),
                                 "-q"]) == 0
                bundles[order[0], side] = out
    finally:
        other.stop()
    return bundles


@pytest.mark.parametrize("first", ["linux/amd64", "linux/arm64"])
def test_a_wheel_changed_for_one_platform_shows_whichever_platform_comes_first(arm64_rebuilt, first, capsys):
    a, b = arm64_rebuilt[first, "a"], arm64_rebuilt[first, "b"]
    old, new = ({w["filename"]: w for w in read_head(side)[0]["wheels"]}[ARM64_WHEEL] for side in (a, b))
    assert old["sha256"] != new["sha256"] and old["platforms"] == new["platforms"] == ["linux/arm64"]
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"A  {a}: bundle of both (2 images, 4 wheels)", out
    assert "images    0 changed, 0 added, 0 removed, 2 unchanged" in out     # one name, two platforms
    assert "wheels    1 changed, 0 added, 0 removed, 3 unchanged" in out, out   # alpha and beta serve both
    (changed,) = [line for line in out if line.startswith("  changed  ")]
    assert changed == (f"  changed  native [linux/arm64]  1.0  sha256:{old['sha256'][:12]}.. -> "
                       f"sha256:{new['sha256'][:12]}..  ({human_size(old['size'])} -> {human_size(new['size'])})")
    assert out[-1] == f"B carries {human_size(new['size'])} that A does not"

    assert cli.main(["diff", str(a), str(b), "--json"]) == 0
    wheels = json.loads(capsys.readouterr().out)["kinds"]["wheels"]
    assert wheels["unchanged"] == 3 and not wheels["added"] and not wheels["removed"]
    (change,) = wheels["changed"]
    assert change["from"]["platforms"] == change["to"]["platforms"] == ["linux/arm64"]
    assert (change["from"]["sha256"], change["to"]["sha256"]) == (old["sha256"], new["sha256"])
    assert change["to"]["key"] == "native" and change["to"]["detail"] == ARM64_WHEEL
    assert wheels["new_bytes"] == new["size"]
