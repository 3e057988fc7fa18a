"""bundler mirrors list | check: the layers as build sees them, and probes of live, dead and slow
endpoints.

Every mirrors file here overrides docker.io and PyPI with 127.0.0.1 endpoints (or the command is
scoped by a profile), so no test depends on the built-in public mirrors being reachable.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import requests

from bundler import cli
from bundler.mirrors import OFFICIAL
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
        ["docker.io", "1", "https://cr.mirrors.tuna.tsinghua.edu.cn", "built-in"],
        ["docker.io", "2", "https://docker.mirrors.ustc.edu.cn", "built-in"],
        ["docker.io", "3", "https://hub-mirror.c.163.com", "built-in"],
        ["docker.io", "4", "official", "built-in"],
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
    assert [row[0] for row in rows(out)[1:]] == ["docker.io"] * 4 + ["127.0.0.1:5009", "pypi"]


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
