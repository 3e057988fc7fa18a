"""Restore with no network (under unshare --net): docker, a registry, containerd, a venv, an index."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from bundler.format.archive import read_head
from conftest import bundler_cmd, offline, write_profile
from testbed import bundles, services


@pytest.fixture
def clean_docker(dockerd, built_bundle):
    """The bundle's images are not in the engine before the test."""
    head, _ = read_head(built_bundle)
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    return head


def restore_offline(dockerd, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    return offline(bundler_cmd("restore", str(bundle), *args), capture_output=True, text=True, env=env)


def image_ids(dockerd) -> set[str]:
    out = dockerd.docker("images", "-q", "--no-trunc").stdout.decode().split()
    return set(out)


def test_full_round_trip_offline_then_a_second_restore_is_a_no_op(dockerd, built_bundle, clean_docker, python310,
                                                                    tmp_path, can_unshare):
    dest = tmp_path / "restored"
    result = restore_offline(dockerd, built_bundle, "--dest", str(dest), "--python", str(python310), "--check")
    assert result.returncode == 0, result.stderr
    for image in clean_docker["images"]:
        assert f"loaded {image['tags'][0]}" in result.stdout
        assert image["id"] in image_ids(dockerd)
    app = next(i for i in clean_docker["images"] if "/team/app:" in i["tags"][0])
    run = dockerd.docker("run", "--rm", "--network", "none", app["tags"][0])
    assert run.stdout == b"hello from bundler test image one\n"
    assert "check ok 1.0" in result.stdout and "check passed" in result.stdout
    venv_python = dest / "venv" / "bin" / "python"
    out = subprocess.run([str(venv_python), "-c", "import alpha, beta, native; print(native.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "1.0\n"
    assert sorted(p.name for p in (dest / "wheels").iterdir()) == sorted(w["filename"] for w in clean_docker["wheels"])

    again = restore_offline(dockerd, built_bundle, "--dest", str(dest), "--python", str(python310))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert again.stdout.count("skipped") == len(clean_docker["images"])


def test_a_damaged_bundle_loads_no_image_and_installs_no_wheel(dockerd, built_bundle, clean_docker, python310,
                                                               tmp_path, can_unshare):
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(built_bundle.read_bytes())
    data[-2000] ^= 0x40   # in the last frame: the wheels, after every image blob went to docker
    damaged.write_bytes(bytes(data))
    before = image_ids(dockerd)
    dest = tmp_path / "restored"
    result = restore_offline(dockerd, damaged, "--dest", str(dest), "--python", str(python310))
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("bundler: error: ") and result.stderr.count("\n") == 1
    assert image_ids(dockerd) == before
    for image in clean_docker["images"]:
        assert image["id"] not in image_ids(dockerd)
    assert not (dest / "venv" / ".bundler-restored").exists()
    site = list((dest / "venv").glob("lib/python3.10/site-packages/alpha*"))
    assert site == []
    assert not list(dest.rglob("*.whl")) and not list(dest.rglob("*.partial"))


@pytest.mark.parametrize("member,expected", [
    (bundles.regular("../escape.txt", b"x"), "unsafe path"),
    (bundles.regular("/etc/escape.txt", b"x"), "unsafe path"),
    (bundles.link("wheels/evil.whl", "../../../../tmp/evil"), "is a symlink"),
    (bundles.link("wheels/hard.whl", "/etc/passwd", hard=True), "is a hard link"),
    (bundles.device("wheels/null.whl"), "is a device"),
])
def test_a_hostile_bundle_writes_nothing_outside_dest(tmp_path, python310, member, expected, can_unshare, dockerd):
    lock = b"# nothing\n"
    bundle = bundles.craft(tmp_path / "hostile.tar.zst", [bundles.regular("requirements.lock", lock), member],
                           listed=[{"path": "requirements.lock", "size": len(lock),
                                    "sha256": hashlib.sha256(lock).hexdigest()},
                                   {"path": "wheels/x-1-py3-none-any.whl", "size": 1, "sha256": "0" * 64}],
                           head_extra={"wheels": [{"name": "x", "version": "1", "filename": "x-1-py3-none-any.whl",
                                                   "sha256": "0" * 64, "size": 1, "built": False}]})
    dest = tmp_path / "dest" / "inner"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = restore_offline(dockerd, bundle, "--dest", str(dest), "--python", str(python310), "--wheels-only")
    assert result.returncode == 3, result.stderr
    assert expected in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "dest") == before
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/evil").exists()
    written = [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    assert written == [], written


def test_hostile_paths_listed_in_bundle_json_are_refused(tmp_path, dockerd, python310):
    bundle = bundles.craft(tmp_path / "h.tar.zst", [bundles.regular("../../x", b"hello")])
    result = restore_offline(dockerd, bundle, "--dest", str(tmp_path / "d"), "--python", str(python310),
                             "--wheels-only")
    assert result.returncode == 3 and "unsafe path" in result.stderr
    assert not (tmp_path.parent / "x").exists()


def test_unlisted_and_missing_members_and_lying_sizes(tmp_path, capsys):
    from bundler import cli
    data = b"payload"
    listed = [{"path": "wheels/a.whl", "size": len(data), "sha256": __import__("hashlib").sha256(data).hexdigest()}]
    cases = {
        "unlisted": ([bundles.regular("wheels/a.whl", data), bundles.regular("wheels/b.whl", data)], listed,
                     "member wheels/b.whl: not listed in bundle.json"),
        "missing": ([], listed, "member wheels/a.whl: listed in bundle.json but not in the bundle"),
        "size": ([bundles.regular("wheels/a.whl", data + b"!")], listed, "bytes in the archive, bundle.json says 7"),
        "twice": ([bundles.regular("wheels/a.whl", data), bundles.regular("wheels/a.whl", data)], listed,
                  "appears twice"),
    }
    for name, (members, listing, message) in cases.items():
        bundle = bundles.craft(tmp_path / f"{name}.tar.zst", members, listed=listing)
        assert cli.main(["verify", str(bundle)]) == 3, name
        assert message in capsys.readouterr().err, name


def test_push_to_a_registry_offline_then_docker_pulls_it(registry_factory, dockerd, built_bundle, tmp_path,
                                                         can_unshare):
    head, _ = read_head(built_bundle)
    # A registry that lives inside the network namespace of the restore, on storage this test keeps.
    site = services.Registry(tmp_path / "site")
    site.port = services.free_port()
    binary = shutil.which("docker-registry")
    config = {"version": 0.1, "log": {"level": "error"}, "http": {"addr": site.host},
              "storage": {"filesystem": {"rootdirectory": str(site.root / "data")}}}
    site.root.mkdir(parents=True)
    (site.root / "config.yml").write_text(json.dumps(config))
    script = textwrap.dedent(f"""\
        set -e
        ip link set lo up
        {binary} serve {site.root / 'config.yml'} >{site.root / 'log'} 2>&1 &
        registry=$!
        for i in $(seq 100); do {sys.executable} -c "import socket; socket.create_connection(('127.0.0.1', {site.port}))" 2>/dev/null && break; sleep 0.1; done
        {' '.join(bundler_cmd('restore', str(built_bundle), '--images-only', '--registry', site.host))}
        {' '.join(bundler_cmd('restore', str(built_bundle), '--images-only', '--registry', site.host))}
        kill $registry
        """)
    result = offline(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    for image in head["images"]:
        target = f"{site.host}/{image['tags'][0].split('/', 1)[1]}"
        assert f"pushed {target}" in result.stdout
        assert f"skipped {target}: already on {site.host}" in result.stdout
    # now serve the same storage on the host network, and let docker pull from it
    served = registry_factory_on(site, registry_factory)
    try:
        app = next(i for i in head["images"] if "/team/app:" in i["tags"][0])
        ref = f"{served.host}/{app['tags'][0].split('/', 1)[1]}"
        dockerd.docker("rmi", "-f", ref, check=False)
        dockerd.docker("pull", ref)
        assert dockerd.docker("run", "--rm", "--network", "none", ref).stdout == b"hello from bundler test image one\n"
    finally:
        served.stop()


def registry_factory_on(site: services.Registry, registry_factory) -> services.Registry:
    served = services.Registry(site.root / "again")
    served.root.mkdir(parents=True, exist_ok=True)
    (served.root / "data").symlink_to(site.root / "data")
    return served.start()


def test_blobs_the_registry_has_are_not_sent_again(registry_factory, built_bundle, tmp_path, capsys):
    from bundler import cli
    site = registry_factory()
    assert cli.main(["restore", str(built_bundle), "--images-only", "--registry", site.host]) == 0
    first = capsys.readouterr().out
    assert "pushed" in first and "already on" not in first
    # a second bundle sharing the base layers: only what is new travels
    head, _ = read_head(built_bundle)
    # the registry keeps the blobs; without app2's manifest the image must be pushed again, its blobs not
    app2 = next(i for i in head["images"] if "/team/app2:" in i["tags"][0])
    repo = app2["name"].split("/", 1)[1].rsplit(":", 1)[0]
    assert requests.delete(f"{site.url}/v2/{repo}/manifests/{app2['manifest']}").status_code in (202, 405)
    assert cli.main(["restore", str(built_bundle), "--images-only", "--registry", site.host]) == 0
    second = capsys.readouterr().out
    assert "blobs already on" in second


def test_index_dir_served_by_http_server_installs_with_pip(built_bundle, tmp_path, python310, can_unshare):
    from bundler import cli
    index_dir = tmp_path / "index"
    assert cli.main(["restore", str(built_bundle), "--wheels-only", "--dest", str(tmp_path / "d"), "--python",
                     str(python310), "--index-dir", str(index_dir)]) == 0
    port = services.free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(index_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        services.wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/simple/", timeout=1).ok, "http.server")
        venv = tmp_path / "venv"
        subprocess.run([str(python310), "-m", "venv", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--index-url",
                              f"http://127.0.0.1:{port}/simple/", "--require-hashes", "-r",
                              str(index_dir / "requirements.lock")], capture_output=True, text=True)
        assert pip.returncode == 0, pip.stderr
        subprocess.run([str(venv / "bin" / "python"), "-c", "import alpha, native"], check=True)
    finally:
        server.terminate()
        server.wait()


def test_containerd_import(containerd, built_bundle, tmp_path, capsys):
    from bundler import cli
    head, _ = read_head(built_bundle)
    args = ["restore", str(built_bundle), "--images-only", "--containerd", "--address", containerd.address,
            "--namespace", "bundler-test"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    listed = containerd.ctr("images", "ls").stdout
    for image in head["images"]:
        name = image["annotations"]["io.containerd.image.name"]
        assert f"imported {name}" in out
        assert name in listed and image["manifest"] in listed
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("skipped") == len(head["images"])


def test_no_docker_engine_is_clear_and_wheels_only_still_works(built_bundle, tmp_path, python310, monkeypatch,
                                                               capsys):
    from bundler import cli
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    code = cli.main(["restore", str(built_bundle), "--dest", str(tmp_path / "d"), "--python", str(python310)])
    err = capsys.readouterr().err
    assert code == 1 and "no docker engine at unix://" in err and "--wheels-only" in err
    assert cli.main(["restore", str(built_bundle), "--dest", str(tmp_path / "d"), "--python", str(python310),
                     "--wheels-only"]) == 0


def test_a_python_of_the_wrong_version_is_named(built_bundle, tmp_path, capsys):
    from bundler import cli
    code = cli.main(["restore", str(built_bundle), "--wheels-only", "--dest", str(tmp_path / "d"), "--python",
                     sys.executable])
    err = capsys.readouterr().err
    assert code == 2 and "the bundle's wheels are for 3.10" in err


def test_a_damaged_bundle_tags_no_image_it_names_and_an_intact_one_does(dockerd, registry, sample_layout, pushed,
                                                                       built_bundle, tmp_path, monkeypatch, capsys):
    """An image the engine holds under tag A, in a bundle that also names it B: B is given only once
    every member matched."""
    from bundler import cli
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    tag_a, tag_b = pushed["app"], f"{registry.host}/team/app:also"
    sample_layout.push("app", tag_b, docker_format=True)
    profile = write_profile(tmp_path, registry.host, [tag_a, tag_b], "http://127.0.0.1:9/simple", [], name="retag")
    bundle = tmp_path / "retag.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(bundle), "-q"]) == 0
    dockerd.docker("rmi", tag_b, check=False)
    assert cli.main(["restore", str(built_bundle), "--images-only"]) == 0    # tag A, and its image
    image_id = json.loads(dockerd.docker("image", "inspect", tag_a).stdout)[0]["Id"]
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["restore", str(damaged), "--images-only"]) == 3
    assert capsys.readouterr().err.startswith("bundler: error: ")
    assert dockerd.docker("image", "inspect", tag_b, check=False).returncode != 0
    assert cli.main(["restore", str(bundle), "--images-only"]) == 0
    assert f"tagged {tag_b}" in capsys.readouterr().out
    assert json.loads(dockerd.docker("image", "inspect", tag_b).stdout)[0]["Id"] == image_id
    assert cli.main(["restore", str(bundle), "--images-only"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_rerun_repairs_wheels_damaged_on_disk(built_bundle, tmp_path, python310, capsys):
    """A wheel of DEST/wheels and one of the --index-dir's files/ with a byte flipped (sizes unchanged):
    the rerun hashes what it keeps, takes both again from the bundle and says so."""
    from bundler import cli
    dest, index = tmp_path / "dest", tmp_path / "index"
    args = ["restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--python", str(python310),
            "--index-dir", str(index)]
    assert cli.main(args) == 0
    wheels = {w["filename"]: w["sha256"] for w in read_head(built_bundle)[0]["wheels"]}
    kept = next((dest / "wheels").glob("alpha-*.whl"))
    served = next((index / "files").glob("native-*.whl"))
    _flip(kept)
    _flip(served)
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to do" not in out and "installed offline" not in out, out   # the venv stays as it was
    assert f"wheels: repaired {kept} (its sha256 did not match)" in out, out
    assert f"index: repaired {served} (its sha256 did not match)" in out, out
    assert _sha256s(dest / "wheels") == wheels and _sha256s(index / "files") == wheels
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to do: everything in the bundle is already restored" in out and "repaired" not in out, out


def test_a_rerun_on_a_nearly_full_disk_has_nothing_to_do(built_bundle, tmpfs, tmp_path, python310, capsys):
    """DEST on a filesystem where the first restore fits (the wheels, and pip unpacking them) but three
    times the wheels no longer does: the rerun writes nothing, so it asks for no space."""
    from bundler import cli
    wheel_bytes = read_head(built_bundle)[0]["totals"]["wheels"]
    disk = tmpfs(3 * wheel_bytes + (256 << 10))
    args = ["restore", str(built_bundle), "--wheels-only", "--dest", str(disk / "dest"), "--venv",
            str(tmp_path / "venv"), "--python", str(python310)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert shutil.disk_usage(disk).free < 3 * wheel_bytes
    capsys.readouterr()
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "nothing to do: everything in the bundle is already restored" in capsys.readouterr().out
