"""bundler mirrors list | check | config: the layers as build sees them, probes of live, dead and
slow endpoints, and daemon.json / pip.conf written without losing anything.

Every mirrors file here overrides docker.io and PyPI with 127.0.0.1 endpoints (or the command is
scoped by a profile), so no test depends on the built-in public mirrors being reachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bundler import cli
from bundler.build.mirrors import Mirrors
from bundler.net.endpoints import OFFICIAL, Endpoint
from conftest import write_profile
from testbed import images as tb_images
from testbed import services

LIVE_LATENCY = re.compile(r"\d+ ms\Z")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def mirrors_file(folder: Path, registries: dict[str, list[str]], pypi: list[str]) -> Path:
    lines = ["registries:"] + [f"  {host}: [{', '.join(urls)}]" for host, urls in registries.items()] if registries else []
    lines.append(f"pypi: [{', '.join(pypi)}]")
    path = folder / "mirrors.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(text: str) -> list[list[str]]:
    """A rendered table's lines as cells (columns are two or more spaces apart; cells hold single ones)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def table(out: str) -> list[list[str]]:
    """The check table: the lines before the first blank one, less the header."""
    return rows(out.split("\n\n")[0])[1:]


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- list --------------------------------------------------------------------------------------

def test_list_shows_each_upstreams_endpoints_in_order_with_the_layer_they_came_from(tmp_path, monkeypatch, capsys):
    config_home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    user = config_home / "bundler" / "mirrors.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("registries:\n  127.0.0.1:5002: [http://127.0.0.1:6002]\npypi: [http://127.0.0.1:6003/simple]\n")
    profile = write_profile(tmp_path, "127.0.0.1:5001", ["busybox:1.36", "127.0.0.1:5001/team/app:1.0",
                                                         "127.0.0.1:5002/team/other:2.0"],
                            "http://127.0.0.1:6004/simple", ["alpha==1.0"])
    flag = tmp_path / "flag.yaml"
    flag.write_text("pypi: [http://127.0.0.1:6005/simple, official]\n")

    code, out, err = run(capsys, "mirrors", "list", "--profile", str(profile), "--mirrors", str(flag))
    assert (code, err) == (0, "")
    assert rows(out) == [
        ["UPSTREAM", "#", "ENDPOINT", "ORIGIN"],
        ["docker.io", "1", "https://docker.m.daocloud.io", "built-in"],
        ["docker.io", "2", "official", "built-in"],
        ["127.0.0.1:5001", "1", "official", f"profile {profile}"],
        ["127.0.0.1:5002", "1", "http://127.0.0.1:6002", f"user file {user}"],
        ["pypi", "1", "http://127.0.0.1:6005/simple", f"--mirrors {flag}"],
        ["pypi", "2", "official", f"--mirrors {flag}"],
    ]

    code, out, _ = run(capsys, "mirrors", "list", "--profile", str(profile), "--mirrors", str(flag), "--json")
    listed = {u["name"]: [(e["endpoint"], e["origin"]) for e in u["endpoints"]] for u in json.loads(out)["upstreams"]}
    assert code == 0
    assert list(listed) == ["docker.io", "127.0.0.1:5001", "127.0.0.1:5002", "pypi"]
    assert listed["127.0.0.1:5002"] == [("http://127.0.0.1:6002", f"user file {user}")]


def test_list_without_a_profile_shows_every_configured_registry(tmp_path, capsys):
    flag = mirrors_file(tmp_path, {"127.0.0.1:5009": ["http://127.0.0.1:6009"]}, ["http://127.0.0.1:6010/simple"])
    code, out, _ = run(capsys, "mirrors", "list", "--mirrors", str(flag))
    assert code == 0
    assert [row[0] for row in rows(out)[1:]] == ["docker.io"] * 2 + ["127.0.0.1:5009", "pypi"]


def test_a_broken_mirrors_file_is_bad_input_naming_the_line(tmp_path, capsys):
    flag = tmp_path / "mirrors.yaml"
    flag.write_text("registries:\n  docker.io: [ftp://127.0.0.1/]\n")
    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag))
    assert (code, out) == (2, "")
    assert err == (f"bundler: error: {flag}:2: registries.docker.io[0]: 'ftp://127.0.0.1/' is not an http(s) URL "
                   "or 'official'\n")


# ---- check -------------------------------------------------------------------------------------

def test_check_probes_live_dead_and_slow_endpoints_at_once(registry, index, faulty, tmp_path, capsys):
    dead = services.refusing_url()
    files = index.url.removesuffix("/simple")
    # payload_only=False: the proxies also hold back /v2/ and the simple pages, which is what check asks for
    slow_hub = faulty(registry.url, "slow", delay=10, payload_only=False)
    slow_private = faulty(registry.url, "slow", delay=10, payload_only=False)
    slow_index = faulty(files, "slow", delay=10, payload_only=False)
    flag = mirrors_file(tmp_path, {"docker.io": [dead, slow_hub.url, registry.url],
                                   registry.host: [slow_private.url, OFFICIAL]},
                        [f"{dead}/simple", f"{slow_index.url}/simple", index.url])
    origin = f"--mirrors {flag}"

    started = time.monotonic()
    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "2", "--project", "alpha")
    elapsed = time.monotonic() - started

    assert (code, err) == (0, "")
    probed = table(out)
    assert [row[:4] for row in probed] == [
        ["docker.io", dead, origin, "connection refused"],
        ["docker.io", slow_hub.url, origin, "timed out after 2 s"],
        ["docker.io", registry.url, origin, "ok, HTTP 200"],
        [registry.host, slow_private.url, origin, "timed out after 2 s"],
        [registry.host, f"official ({registry.url}/v2/)", origin, "ok, HTTP 200"],
        ["pypi", f"{dead}/simple", origin, "connection refused"],
        ["pypi", f"{slow_index.url}/simple", origin, "timed out after 2 s"],
        ["pypi", index.url, origin, "ok, HTTP 200"],
    ]
    assert [bool(LIVE_LATENCY.match(row[4])) for row in probed] == [row[3].startswith("ok") for row in probed]
    assert [row[4] for row in probed if not row[3].startswith("ok")] == ["-"] * 5
    summary = out.split("\n\n")[1].splitlines()
    assert [re.sub(r"\(\d+ ms\)", "(N ms)", line) for line in summary] == [
        f"docker.io: 1 of 3 working, fastest {registry.url} (N ms)",
        f"{registry.host}: 1 of 2 working, fastest official (N ms)",
        f"pypi: 1 of 3 working, fastest {index.url} (N ms)",
    ]
    # three endpoints that do not answer in time, each bounded by the timeout, probed side by side:
    # one at a time would take 6 s, and waiting for the proxies 10 s
    assert elapsed < 5.5, elapsed


def test_check_exits_1_naming_the_upstream_with_no_working_endpoint(registry, tmp_path, capsys):
    dead = services.refusing_url()
    flag = mirrors_file(tmp_path, {"docker.io": [registry.url]}, [f"{dead}/simple"])
    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3")
    assert code == 1
    assert err == "bundler: error: no working endpoint for pypi; 2 endpoints probed, 3 s allowed each\n"
    assert [row[3] for row in table(out)] == ["ok, HTTP 200", "connection refused"]
    assert out.split("\n\n")[1].splitlines()[1] == "pypi: 0 of 1 working"

    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3", "--json")
    report = json.loads(out)
    assert (code, report["failed"]) == (1, ["pypi"])
    hub, pypi = report["upstreams"]
    assert hub["name"] == "docker.io" and hub["endpoints"][0]["ok"] is True
    assert hub["endpoints"][0]["url"] == f"{registry.url}/v2/"
    assert hub["endpoints"][0]["latency_ms"] > 0
    assert pypi["endpoints"] == [{"endpoint": f"{dead}/simple", "origin": f"--mirrors {flag}",
                                  "url": f"{dead}/simple/pip/", "ok": False, "alive": False,
                                  "status": "connection refused", "latency_ms": None, "manifest": None,
                                  "manifest_problem": None}]
    assert err == "bundler: error: no working endpoint for pypi; 2 endpoints probed, 3 s allowed each\n"


def test_an_index_must_serve_the_projects_simple_page(registry, index, faulty, tmp_path, capsys):
    files = index.url.removesuffix("/simple")
    portal = faulty(files, "html200", payload_only=False)   # an error page with status 200
    flag = mirrors_file(tmp_path, {"docker.io": [registry.url]}, [f"{portal.url}/simple", index.url])
    code, out, _ = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3", "--project", "alpha")
    assert code == 0
    assert [row[3] for row in table(out)][1:] == ["HTTP 200, but not a simple page listing alpha", "ok, HTTP 200"]

    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3", "--project", "nosuch")
    assert code == 1
    assert [row[3] for row in table(out)][1:] == ["HTTP 200, but not a simple page listing nosuch",
                                                  "HTTP 404 Not Found"]
    assert err == "bundler: error: no working endpoint for pypi; 3 endpoints probed, 3 s allowed each\n"


def test_check_with_a_profile_probes_only_what_its_build_uses(testbed_profile, registry, index, capsys):
    code, out, err = run(capsys, "mirrors", "check", "--profile", str(testbed_profile), "--timeout", "3",
                         "--project", "alpha")
    assert (code, err) == (0, "")
    origin = f"profile {testbed_profile}"
    assert [row[:4] for row in table(out)] == [
        [registry.host, f"official ({registry.url}/v2/)", origin, "ok, HTTP 200"],
        ["pypi", index.url, origin, "ok, HTTP 200"],
    ]


def manifest_digest(registry_url: str, repository: str, tag: str) -> str:
    response = requests.get(f"{registry_url}/v2/{repository}/manifests/{tag}", timeout=10,
                            headers={"Accept": tb_images.OCI_INDEX + ", application/vnd.docker.distribution"
                                                                     ".manifest.v2+json"})
    assert response.status_code == 200
    return "sha256:" + hashlib.sha256(response.content).hexdigest()


def test_check_tag_finds_the_mirror_that_never_synced_the_image(registry, registry_factory, pushed, sample_layout,
                                                               index, tmp_path, capsys):
    stale = registry_factory()          # alive, but never synced the image
    outdated = registry_factory()       # holds an older build under the same tag
    sample_layout.push("app2", f"{outdated.host}/team/app:1.0", docker_format=True)
    flag = mirrors_file(tmp_path, {"docker.io": [registry.url], registry.host: [stale.url, outdated.url, OFFICIAL]},
                        [index.url])
    image = pushed["app"]
    digest, older = manifest_digest(registry.url, "team/app", "1.0"), manifest_digest(outdated.url, "team/app", "1.0")
    assert digest != older

    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3", "--project", "alpha",
                         "--tag", image)
    assert (code, err) == (0, "")
    probed = table(out)
    assert probed[0][0] == "docker.io" and len(probed[0]) == 5          # no IMAGE cell: another registry
    assert [(row[1], row[3], row[5]) for row in probed[1:4]] == [
        (stale.url, "ok, HTTP 200", "missing: HTTP 404 Not Found"),
        (outdated.url, "ok, HTTP 200", older[:19] + ".."),
        (f"official ({registry.url}/v2/)", "ok, HTTP 200", digest[:19] + ".."),
    ]
    assert out.splitlines()[-1] == f"{image}: the endpoints disagree on its digest; one that serves an older one is stale"

    code, out, _ = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "3", "--project", "alpha",
                       "--tag", image, "--json")
    upstream = json.loads(out)["upstreams"][1]
    assert code == 0
    assert [(e["ok"], e["manifest"], e["manifest_problem"]) for e in upstream["endpoints"]] == [
        (False, None, "missing: HTTP 404 Not Found"), (True, older, None), (True, digest, None)]

    only_stale = mirrors_file(tmp_path, {"docker.io": [registry.url], registry.host: [stale.url]}, [index.url])
    code, _, err = run(capsys, "mirrors", "check", "--mirrors", str(only_stale), "--timeout", "3",
                       "--project", "alpha", "--tag", image)
    assert code == 1
    assert err == (f"bundler: error: no working endpoint for {registry.host} (none has {image}); 3 endpoints probed, "
                   "3 s allowed each\n")


def test_check_tag_goes_through_the_token_flow(registry_factory, sample_layout, index, registry, tmp_path, capsys):
    tokens = services.TokenServer(tmp_path / "token")        # anonymous pulls get a token, as on Docker Hub
    try:
        secured = registry_factory(auth=tokens.registry_auth())
        sample_layout.push("app", f"{secured.host}/team/app:1.0")
        flag = mirrors_file(tmp_path, {"docker.io": [registry.url], secured.host: [OFFICIAL]}, [index.url])
        code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--timeout", "5",
                             "--project", "alpha", "--tag", f"{secured.host}/team/app:1.0")
        assert (code, err) == (0, "")
        secured_row = table(out)[1]
        assert secured_row[3] == "ok, HTTP 401, wants a login or token"
        assert secured_row[5].startswith("sha256:")
        assert any("scope=repository%3Ateam%2Fapp%3Apull" in r for r in tokens.requests)
    finally:
        tokens.stop()


def test_a_bad_tag_is_bad_input(tmp_path, capsys):
    flag = mirrors_file(tmp_path, {"docker.io": [services.refusing_url()]}, [services.refusing_url() + "/simple"])
    code, out, err = run(capsys, "mirrors", "check", "--mirrors", str(flag), "--tag", "Team/App:1.0")
    assert (code, out) == (2, "")
    assert "'Team' is not a valid repository name component (repository names are lowercase)" in err


# ---- build --fastest ---------------------------------------------------------------------------

def test_by_latency_puts_answering_endpoints_fastest_first_and_keeps_the_rest_in_order():
    a, b, c, d = (Endpoint(f"http://127.0.0.1:{port}", "test") for port in (1, 2, 3, 4))
    official = Endpoint(OFFICIAL, "test")
    mirrors = Mirrors({"docker.io": (a, b, c, official), "127.0.0.1:5000": (a, b)}, (a, d, b))
    latency = {("docker.io", a): None, ("docker.io", b): 0.3, ("docker.io", c): None, ("docker.io", official): 0.1,
               ("pypi", a): 0.2, ("pypi", d): 0.05, ("pypi", b): 0.2}
    ordered = mirrors.by_latency(latency)
    assert ordered.registries == {"docker.io": (official, b, a, c), "127.0.0.1:5000": (a, b)}
    assert ordered.pypi == (d, a, b)


def test_build_fastest_asks_the_quickest_endpoint_first(registry, pushed, index, faulty, tmp_path, capsys):
    slow = faulty(registry.url, "slow", delay=1.5, payload_only=False)   # answers, but late
    profile = write_profile(tmp_path, registry.host, [pushed["app"]], index.url, [])
    flag = mirrors_file(tmp_path, {registry.host: [slow.url, OFFICIAL]}, [index.url])
    out = tmp_path / "app.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(profile), "--mirrors", str(flag), "--fastest", "-o", str(out))
    assert code == 0, err
    assert slow.requests == ["/v2/"]           # probed once, then never asked for the image
    assert re.search(rf"fastest first: {re.escape(registry.host)}: official \(\d+ ms\), {re.escape(slow.url)} "
                     rf"\(\d+ ms\)\n", err), err


# ---- config docker -----------------------------------------------------------------------------

DAEMON_JSON = """{
    "max-concurrent-downloads": 3,
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "registry-mirrors": ["https://old-mirror.example"],
    "features": {"buildkit": true}
}
"""


def hub_mirrors(tmp_path: Path, *urls: str) -> Path:
    return mirrors_file(tmp_path, {"docker.io": list(urls)}, [OFFICIAL])


def test_config_docker_prints_the_merged_file_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "etc" / "daemon.json"
    target.parent.mkdir()
    target.write_text(DAEMON_JSON)
    flag = hub_mirrors(tmp_path, "http://127.0.0.1:5001", "https://127.0.0.1:5002", OFFICIAL)
    before = files_in(target.parent)
    code, out, err = run(capsys, "mirrors", "config", "docker", "--mirrors", str(flag), "--path", str(target))
    assert (code, err) == (0, "")
    assert json.loads(out) == {"max-concurrent-downloads": 3, "log-opts": {"max-size": "10m", "max-file": "3"},
                               "registry-mirrors": ["http://127.0.0.1:5001", "https://127.0.0.1:5002"],
                               "features": {"buildkit": True}}
    assert files_in(target.parent) == before


def test_config_docker_write_keeps_other_keys_backs_up_and_is_idempotent(tmp_path, capsys):
    target = tmp_path / "etc" / "daemon.json"
    target.parent.mkdir()
    target.write_text(DAEMON_JSON)
    target.chmod(0o640)
    flag = hub_mirrors(tmp_path, "http://127.0.0.1:5001", OFFICIAL)
    code, out, err = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, err) == (0, "")
    (backup,) = [p for p in target.parent.iterdir() if p != target]
    assert re.fullmatch(r"daemon\.json\.bak-\d{8}-\d{6}", backup.name)
    assert backup.read_text() == DAEMON_JSON
    assert out == (f"wrote {target} (the old one is {backup})\n"
                   "restart docker to use the mirrors:\n  sudo systemctl daemon-reload\n  sudo systemctl restart docker\n"
                   "then check: docker info --format '{{.RegistryConfig.Mirrors}}'\n")
    written = json.loads(target.read_text())
    assert list(written) == ["max-concurrent-downloads", "log-opts", "registry-mirrors", "features"]
    assert written["registry-mirrors"] == ["http://127.0.0.1:5001"]
    assert {k: v for k, v in written.items() if k != "registry-mirrors"} == \
        {k: v for k, v in json.loads(DAEMON_JSON).items() if k != "registry-mirrors"}
    assert target.stat().st_mode & 0o777 == 0o640

    after_first = files_in(target.parent)
    code, out, _ = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, out) == (0, f"{target} already says this; nothing written\n")
    assert files_in(target.parent) == after_first

    # the same settings in the user's own layout are left as they are, not reformatted
    target.write_text(json.dumps(written, separators=(",", ":")))
    in_own_layout = files_in(target.parent)
    code, out, _ = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, out) == (0, f"{target} already says this; nothing written\n")
    assert files_in(target.parent) == in_own_layout


def test_writing_a_plan_that_changes_nothing_touches_nothing(tmp_path):
    from bundler.build.mirrorconfig import plan_daemon_json
    from bundler.configfile import write_config
    target = tmp_path / "daemon.json"
    mirrors = Mirrors({"docker.io": (Endpoint("http://127.0.0.1:5001"),)})
    plan = plan_daemon_json(mirrors, target)
    assert write_config(plan) is None and target.exists()          # a new file: nothing to back up
    target.write_text(target.read_text() + "\n")                  # same meaning, other bytes
    again = plan_daemon_json(mirrors, target)
    assert not again.changed
    before = files_in(tmp_path)
    assert write_config(again) is None
    assert files_in(tmp_path) == before


def test_config_docker_refuses_invalid_json_naming_the_line_and_touches_nothing(tmp_path, capsys):
    target = tmp_path / "daemon.json"
    target.write_text('{\n  "log-level": "warn",\n  "registry-mirrors": ["https://a.example",]\n}\n')
    flag = hub_mirrors(tmp_path, "http://127.0.0.1:5001")
    before = files_in(tmp_path)
    for extra in ([], ["--write"]):
        code, out, err = run(capsys, "mirrors", "config", "docker", *extra, "--mirrors", str(flag), "--path", str(target))
        assert (code, out) == (2, "")
        assert err == (f"bundler: error: {target}:3: not valid JSON: Expecting value (column 44); fix it by hand, "
                       "it was left as it is\n")
        assert files_in(tmp_path) == before

    target.write_text('["registry-mirrors"]\n')
    code, _, err = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert code == 2
    assert err == f"bundler: error: {target}:1: expected a JSON object ({{...}}), found list; it was left as it is\n"


def test_config_docker_creates_a_missing_file_without_a_backup(tmp_path, capsys):
    target = tmp_path / "etc" / "docker" / "daemon.json"
    flag = hub_mirrors(tmp_path, "http://127.0.0.1:5001")
    code, out, _ = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert code == 0
    assert out.startswith(f"wrote {target}\n")
    assert os.listdir(target.parent) == ["daemon.json"]
    assert json.loads(target.read_text()) == {"registry-mirrors": ["http://127.0.0.1:5001"]}
    assert target.stat().st_mode & 0o777 == 0o644


def test_config_docker_with_only_official_says_so_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "daemon.json"
    flag = hub_mirrors(tmp_path, OFFICIAL)
    code, out, _ = run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))
    assert code == 0
    assert out == ("docker.io has no mirror besides official, and Docker pulls from Docker Hub by default: "
                   "daemon.json needs no registry-mirrors\n")
    assert not target.exists()


@pytest.mark.slow
def test_dockerd_starts_with_the_written_daemon_json_and_uses_its_mirrors(tmp_path, capsys):
    target = tmp_path / "daemon.json"
    target.write_text('{"max-concurrent-downloads": 2}\n')
    flag = hub_mirrors(tmp_path, "http://127.0.0.1:5001", "https://127.0.0.1:5002")
    assert run(capsys, "mirrors", "config", "docker", "--write", "--mirrors", str(flag), "--path", str(target))[0] == 0
    daemon = services.Dockerd(tmp_path / "d", config_file=target)
    try:
        daemon.start()
        shown = daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
        assert json.loads(shown) == ["http://127.0.0.1:5001/", "https://127.0.0.1:5002/"]
    finally:
        daemon.stop()


# ---- config pip --------------------------------------------------------------------------------

PIP_CONF = """# the team's settings
[global]
index_url = https://old-mirror.example/simple
extra-index-url =
    https://old-extra.example/simple

    https://old-extra2.example/simple
no-cache-dir = false

[install]
progress-bar = off
"""


def test_config_pip_write_sets_the_index_keeps_the_rest_and_is_idempotent(tmp_path, capsys):
    target = tmp_path / "pip.conf"
    target.write_text(PIP_CONF)
    flag = mirrors_file(tmp_path, {}, ["http://127.0.0.1:6001/simple", "https://127.0.0.1:6002/simple",
                                       "http://127.0.0.1:6003/pypi/simple", OFFICIAL])
    code, out, err = run(capsys, "mirrors", "config", "pip", "--write", "--mirrors", str(flag), "--path", str(target))
    assert code == 0
    assert err == ("bundler: official is not written: pip asks every index for every package, so it would be "
                   "asked on each install, not only when the mirrors fail\n")
    (backup,) = [p for p in tmp_path.iterdir() if p.name.startswith("pip.conf.bak-")]
    assert backup.read_text() == PIP_CONF
    assert out == f"wrote {target} (the old one is {backup})\npip reads it on its next run; check: pip config list\n"
    assert target.read_text() == """# the team's settings
[global]
index-url = http://127.0.0.1:6001/simple
extra-index-url =
    https://127.0.0.1:6002/simple
    http://127.0.0.1:6003/pypi/simple
trusted-host =
    127.0.0.1:6001
    127.0.0.1:6003
timeout = 60
no-cache-dir = false

[install]
progress-bar = off
"""
    # pip itself reads it so (over whatever this machine's global pip config says)
    shown = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                           env={**os.environ, "PIP_CONFIG_FILE": str(target)}, check=True).stdout
    assert set(shown.splitlines()) >= {
        "global.extra-index-url='\\nhttps://127.0.0.1:6002/simple\\nhttp://127.0.0.1:6003/pypi/simple'",
        "global.index-url='http://127.0.0.1:6001/simple'",
        "global.no-cache-dir='false'",
        "global.timeout='60'",
        "global.trusted-host='\\n127.0.0.1:6001\\n127.0.0.1:6003'",
        "install.progress-bar='off'",
    }

    after_first = files_in(tmp_path)
    code, out, _ = run(capsys, "mirrors", "config", "pip", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, out) == (0, f"{target} already says this; nothing written\n")
    assert files_in(tmp_path) == after_first


def test_config_pip_for_https_mirrors_trusts_no_host_and_adds_a_global_section(tmp_path, capsys):
    target = tmp_path / "pip.conf"
    target.write_text("[install]\nprogress-bar = off\n")
    flag = mirrors_file(tmp_path, {}, ["https://127.0.0.1:6002/simple"])
    code, out, err = run(capsys, "mirrors", "config", "pip", "--mirrors", str(flag), "--path", str(target))
    assert (code, err) == (0, "")
    assert out == ("[global]\nindex-url = https://127.0.0.1:6002/simple\ntimeout = 60\n\n"
                   "[install]\nprogress-bar = off\n")
    assert target.read_text() == "[install]\nprogress-bar = off\n"


def test_config_pip_with_only_official_says_so_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "pip.conf"
    flag = mirrors_file(tmp_path, {}, [OFFICIAL])
    code, out, _ = run(capsys, "mirrors", "config", "pip", "--write", "--mirrors", str(flag), "--path", str(target))
    assert code == 0
    assert out == ("PyPI has no mirror besides official, and pip uses its default index without any "
                   "configuration: pip.conf needs nothing\n")
    assert not target.exists()


def test_config_pip_refuses_to_edit_a_layout_it_would_misread(tmp_path, capsys):
    target = tmp_path / "pip.conf"
    # configparser reads the indented line as a key; put after our keys it would continue timeout's value
    target.write_text("[global]\n  index-url = https://old-mirror.example/simple\nno-cache-dir = false\n")
    flag = mirrors_file(tmp_path, {}, ["http://127.0.0.1:6001/simple"])
    before = files_in(tmp_path)
    code, out, err = run(capsys, "mirrors", "config", "pip", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, out) == (1, "")
    assert err == (f"bundler: error: {target}: could not be edited safely (its [global] section is laid out in a way "
                   "this tool misreads); set index-url, trusted-host, timeout there by hand\n")
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("text, line, problem", [
    ("index-url = https://a.example/simple\n", 1,
     "'index-url = https://a.example/simple' comes before any [section] header"),
    ("[global]\ntimeout = 10\n[global]\n", 3, "section [global] appears twice"),
    ("[global]\ntimeout = 10\nnot a setting\n", 3, "cannot parse 'not a setting'"),
])
def test_config_pip_refuses_a_file_pip_cannot_read_naming_the_line(tmp_path, capsys, text, line, problem):
    target = tmp_path / "pip.conf"
    target.write_text(text)
    flag = mirrors_file(tmp_path, {}, ["http://127.0.0.1:6001/simple"])
    before = files_in(tmp_path)
    code, out, err = run(capsys, "mirrors", "config", "pip", "--write", "--mirrors", str(flag), "--path", str(target))
    assert (code, out) == (2, "")
    assert err == f"bundler: error: {target}:{line}: not a valid pip config: {problem}; it was left as it is\n"
    assert files_in(tmp_path) == before
