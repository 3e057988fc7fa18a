"""The test bed's own tests: each real service does what the other tests rely on."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest
import requests

from conftest import offline
from testbed import images as tb_images
from testbed import services


def test_image_pushed_to_registry_is_pulled_and_run_by_dockerd(dockerd, pushed):
    dockerd.docker("pull", pushed["app"])
    result = dockerd.docker("run", "--rm", "--network", "none", pushed["app"])
    assert result.stdout == b"hello from bundler test image one\n"


def test_multi_platform_index_is_in_the_registry(registry, pushed):
    repo, tag = pushed["multi"].split("/", 1)[1].rsplit(":", 1)
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}",
                            headers={"Accept": tb_images.OCI_INDEX})
    assert response.status_code == 200
    platforms = {(m["platform"]["architecture"], m["platform"].get("variant")) for m in response.json()["manifests"]}
    assert platforms == {("amd64", None), ("arm64", "v8")}


def test_wheel_from_index_installs_with_pip(index, python310, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([str(python310), "-m", "venv", str(env_dir)], check=True)
    subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "--index-url", index.url, "alpha"],
                   check=True, capture_output=True)
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import alpha, beta; print(alpha.VERSION, beta.VERSION)"],
                         check=True, capture_output=True, text=True).stdout
    # beta 2.0 needs Python 3.11: pip on 3.10 must have chosen 1.0
    assert out.strip() == "1.0 1.0"


def test_index_serves_pep691_json_with_hashes(index, wheel_dir):
    page = requests.get(f"{index.url}/alpha/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
    (entry,) = page["files"]
    data = (wheel_dir / entry["filename"]).read_bytes()
    assert entry["hashes"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_faulty_proxy_flips_bytes_and_fails_on_purpose(index, faulty):
    good = requests.get(f"{index.url.removesuffix('/simple')}/files/beta-1.0-py3-none-any.whl").content
    flipped = faulty(index.url.removesuffix("/simple"), "flip")
    bad = requests.get(f"{flipped.url}/files/beta-1.0-py3-none-any.whl").content
    assert len(bad) == len(good) and bad != good
    assert requests.get(f"{flipped.url}/simple/beta/").status_code == 200  # pages pass through

    assert requests.get(f"{faulty(index.url, '500').url}/files/x").status_code == 500
    assert requests.get(f"{faulty(index.url, '404').url}/files/x").status_code == 404
    slow = faulty(index.url.removesuffix("/simple"), "slow", delay=1.0)
    started = time.monotonic()
    requests.get(f"{slow.url}/files/beta-1.0-py3-none-any.whl")
    assert time.monotonic() - started >= 1.0
    with pytest.raises(requests.ConnectionError):
        requests.get(services.refusing_url(), timeout=2)


def test_offline_command_has_no_network(index, can_unshare):
    result = offline(["python3", "-c", f"import urllib.request; urllib.request.urlopen({index.url!r}, timeout=3)"],
                     capture_output=True, text=True)
    assert result.returncode != 0
    assert "Network is unreachable" in result.stderr or "Connection refused" in result.stderr


def test_bearer_token_registry_demands_a_token(registry_factory, sample_layout, tmp_path):
    tokens = services.TokenServer(tmp_path / "token", users={"alice": "s3cret"})
    try:
        registry = registry_factory(auth=tokens.registry_auth())
        challenge = requests.get(f"{registry.url}/v2/")
        assert challenge.status_code == 401
        assert challenge.headers["WWW-Authenticate"].startswith(f'Bearer realm="{tokens.url}"')
        sample_layout.push("app", f"{registry.host}/team/app:1.0", creds="alice:s3cret")
        token = requests.get(tokens.url, params={"service": tokens.service, "scope": "repository:team/app:pull"},
                             auth=("alice", "s3cret")).json()["token"]
        response = requests.get(f"{registry.url}/v2/team/app/manifests/1.0",
                                headers={"Authorization": f"Bearer {token}", "Accept": tb_images.OCI_MANIFEST})
        assert response.status_code == 200
        assert requests.get(tokens.url, params={"scope": "repository:team/app:pull"}).status_code == 401
    finally:
        tokens.stop()


def test_basic_auth_registry(registry_factory, sample_layout, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(services.htpasswd_line("bob", "hunter2") + "\n")
    registry = registry_factory(auth={"htpasswd": {"realm": "test", "path": str(htpasswd)}})
    assert requests.get(f"{registry.url}/v2/").status_code == 401
    sample_layout.push("app", f"{registry.host}/team/app:1.0", creds="bob:hunter2")
    assert requests.get(f"{registry.url}/v2/team/app/tags/list", auth=("bob", "hunter2")).json()["tags"] == ["1.0"]
