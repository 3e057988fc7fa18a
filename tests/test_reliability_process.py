"""Interruption, full disks, concurrent builds, secrets."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from bundler import cli
from bundler.format.archive import read_head
from conftest import bundler_cmd, write_profile
from testbed import services


def damaged_blobs(cache: Path) -> list[str]:
    """The blobs of the cache that do not hash to their names."""
    import hashlib
    bad = []
    for blob in (cache / "blobs" / "sha256").iterdir():
        if hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name:
            bad.append(blob.name)
    return bad


def test_builds_killed_at_random_moments_leave_no_output_and_resume(registry, pushed, index, faulty, tmp_path):
    counting = faulty(registry.url, "ok")
    profile = write_profile(tmp_path, registry.host, [pushed["app"], pushed["app2"]], index.url,
                            ["alpha==1.0", "native==1.0"])
    profile.write_text(profile.read_text().replace(f"{registry.host}: [official]", f"{registry.host}: [{counting.url}]"))
    cache, out = tmp_path / "cache", tmp_path / "out.tar.zst"
    command = bundler_cmd("build", "--no-restorer", str(profile), "-o", str(out), "--cache", str(cache), "--level", "19", "-q")
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    full = time.monotonic() - started
    full_bytes = counting.bytes_sent
    out.unlink()
    for partial in tmp_path.glob("out.tar.zst*"):
        partial.unlink()
    import shutil
    shutil.rmtree(cache)

    rng = random.Random(7)
    kills = []
    for _ in range(12):
        counting.bytes_sent = 0
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.05, full)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # killed after the rename (or not at all), the bundle is whole; before it, there is none
        assert not out.exists() or cli.main(["verify", str(out), "-q"]) == 0, f"a killed build left a broken {out}"
        if out.exists():
            out.unlink()
        kills.append((round(delay, 2), counting.bytes_sent))
        assert not damaged_blobs(cache), "a killed build left a damaged blob in the cache"
    counting.bytes_sent = 0
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert cli.main(["verify", str(out)]) == 0
    refetched = counting.bytes_sent
    print(f"12 kills at {[k[0] for k in kills]} s of a {full:.1f} s build; a full fetch is {full_bytes} bytes "
          f"of blobs; the final run fetched {refetched} bytes again")
    assert refetched < full_bytes
    left = [p for p in (cache / "tmp").rglob("*") if p.is_file()]
    assert not left, f"killed builds leaked {sum(p.stat().st_size for p in left)} bytes in the cache's tmp/: {left}"


def test_restores_killed_at_random_moments_then_a_rerun_completes(dockerd, built_bundle, python310, tmp_path):
    head, _ = read_head(built_bundle)
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    dest = tmp_path / "dest"
    command = bundler_cmd("restore", str(built_bundle), "--dest", str(dest), "--python", str(python310), "-q")
    rng = random.Random(11)
    for _ in range(6):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for image in head["images"]:
        assert dockerd.docker("image", "inspect", image["id"], check=False).returncode == 0
    subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import alpha, native"], check=True)
    assert not list(dest.rglob("*.partial"))


def test_a_full_disk_under_the_output_is_a_clear_error(testbed_profile, small_disk, tmp_path, capsys):
    out = small_disk / "b.tar.zst"
    code = cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1 and ("needs about" in err or "no space left" in err), err
    assert list(small_disk.iterdir()) == []
    assert not damaged_blobs(tmp_path / "cache")


def test_a_full_disk_under_the_cache_is_a_clear_error_and_the_cache_stays_whole(testbed_profile, small_disk,
                                                                                tmp_path, capsys):
    out = tmp_path / "b.tar.zst"
    code = cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "--cache", str(small_disk / "cache")])
    err = capsys.readouterr().err
    assert code == 1 and ("fetching needs about" in err or "no space left on device" in err), err
    assert err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob("b.tar.zst*"))
    assert not damaged_blobs(small_disk / "cache")


def test_a_full_disk_under_a_restore_is_a_clear_error(built_bundle, small_disk, python310, capsys):
    dest = small_disk / "dest"
    code = cli.main(["restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--python", str(python310)])
    err = capsys.readouterr().err
    assert code == 1 and ("needs about" in err or "no space left" in err), err
    assert not [p for p in small_disk.rglob("*") if p.is_file() and p.suffix in (".whl", ".partial")]


def test_two_builds_sharing_a_cache_at_once_both_succeed(testbed_profile, tmp_path):
    # the race is a matter of timing: a layer one build kept whole while the other framed it was
    # once gone under the first (or packed unframed, giving another bundle); 8 rounds caught it
    lock = tmp_path / "l.lock"
    subprocess.run(bundler_cmd("lock", str(testbed_profile), "-o", str(lock)), check=True)
    for round_ in range(8):
        cache = tmp_path / f"shared{round_}"
        outputs = [tmp_path / f"{round_}-{n}.tar.zst" for n in (1, 2)]
        processes = [subprocess.Popen(bundler_cmd("build", "--no-restorer", str(testbed_profile), "--lock", str(lock), "-o", str(out),
                                                  "--cache", str(cache), "-q"), stderr=subprocess.PIPE, text=True)
                     for out in outputs]
        for process in processes:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"round {round_}: {err}"
        assert outputs[0].read_bytes() == outputs[1].read_bytes(), f"round {round_}"
        assert not damaged_blobs(cache)


def test_a_registry_password_never_appears_anywhere(registry_factory, sample_layout, index, tmp_path, monkeypatch):
    user, password = "carol", "Pa55-w0rd-bundler-secret"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(services.htpasswd_line(user, password) + "\n")
    secured = registry_factory(auth={"htpasswd": {"realm": "test", "path": str(htpasswd)}})
    sample_layout.push("app", f"{secured.host}/team/app:1.0", creds=f"{user}:{password}")
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"auths": {secured.host: {"auth": encoded}}}))
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    profile = write_profile(tmp_path, secured.host, [f"{secured.host}/team/app:1.0"], index.url, ["alpha==1.0"])
    outputs = []
    for args in (("lock", str(profile), "-o", str(tmp_path / "x.lock"), "--debug"),
                 ("build", "--no-restorer", str(profile), "-o", str(tmp_path / "x.tar.zst"), "--debug"),
                 ("inspect", str(tmp_path / "x.tar.zst"), "--json"),
                 ("restore", str(tmp_path / "x.tar.zst"), "--images-only", "--registry", secured.host, "--debug")):
        result = subprocess.run(bundler_cmd(*args), env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert "pushed" in outputs[-1]
    # and a failing login, with --debug: the traceback must not carry it either
    (config / "config.json").write_text(json.dumps({"auths": {secured.host: {
        "auth": base64.b64encode(f"{user}:wrong-{password}".encode()).decode()}}}))
    result = subprocess.run(bundler_cmd("build", "--no-restorer", str(profile), "-o", str(tmp_path / "y.tar.zst"), "--debug"),
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0
    outputs.append(result.stdout + result.stderr)
    bundle = subprocess.run(["zstd", "-dc", str(tmp_path / "x.tar.zst")], capture_output=True, check=True).stdout
    for secret in (password, encoded, base64.b64encode(f"{user}:wrong-{password}".encode()).decode()):
        assert secret.encode() not in bundle
        assert secret not in (tmp_path / "x.lock").read_text()
        for text in outputs:
            assert secret not in text, text[-2000:]


def test_a_half_made_venv_is_made_again(built_bundle, python310, tmp_path, capsys):
    """A restore killed while the venv was being made leaves python but no pip: the next one recovers."""
    dest = tmp_path / "dest"
    subprocess.run([str(python310), "-m", "venv", "--without-pip", str(dest / "venv")], check=True)
    assert cli.main(["restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--python",
                     str(python310)]) == 0
    subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import alpha, native"], check=True)
    other = tmp_path / "not-a-venv"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert cli.main(["restore", str(built_bundle), "--wheels-only", "--dest", str(dest), "--venv", str(other),
                     "--python", str(python310)]) == 2
    assert "is not a venv" in capsys.readouterr().err and (other / "precious.txt").exists()
