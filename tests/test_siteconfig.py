"""bundler mirrors config docker|containerd|pip|hf --site URL: a node's configuration for the site.

Each tool is proven by the tool itself: a private dockerd started with the written daemon.json
pulls a docker.io name no one published from the site's registry, containerd pulls nvcr.io and
docker.io names through the written hosts.toml, pip downloads from the test bed's index through the
written pip.conf, and huggingface_hub downloads a repository from the test bed's hub with the
HF_ENDPOINT the written environment file sets. The registries containerd needs are read from a
bundle index like the one ``bundler push`` leaves in the site's registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import cli
from bundler.context import Context
from bundler.format.media import OCI_INDEX
from bundler.format.site import Child, bundle_index
from bundler.oci.site import SiteRegistry
from testbed import services
from testbed.policy import FAST_RETRY as FAST

SITE_IMAGE = "bundler-site-test/app"        # a docker.io repository no one published: only the site has it
TORCH = "docker.io/pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"
NGC = "nvcr.io/nvidia/pytorch:24.01-py3"
PADDLE_REGISTRY = "ccr-2vdh3abv-pub.cnc.bj.baidubce.com"
PADDLE = f"{PADDLE_REGISTRY}/paddlepaddle/paddle:2.6.1-gpu-cuda12.0-cudnn8.9-trt8.6"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args), policy=FAST)
    out, err = capsys.readouterr()
    return code, out, err


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def backups(target: Path) -> list[Path]:
    return [p for p in target.parent.iterdir() if re.fullmatch(re.escape(target.name) + r"\.bak-\d{8}-\d{6}", p.name)]


@pytest.fixture(scope="module")
def site(registry_factory, sample_layout):
    """The site's registry, holding one image under a docker.io repository name (and nothing else)."""
    registry = registry_factory()
    sample_layout.push("app", f"{registry.host}/{SITE_IMAGE}:1.0", docker_format=True)
    return registry


def site_manifest(site, repository: str, tag: str) -> tuple[str, dict]:
    digest, body, _ = SiteRegistry(site.host, FAST, plain_http=True).manifest(repository, tag)
    return digest, json.loads(body)


# ---- docker ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_dockerd_pulls_a_docker_io_name_from_the_site_through_the_written_daemon_json(site, tmp_path, capsys):
    target = tmp_path / "daemon.json"
    target.write_text('{"max-concurrent-downloads": 2, "insecure-registries": ["10.1.2.3:5000"]}\n')
    code, out, err = run(capsys, "mirrors", "config", "docker", "--site", site.url, "--write", "--path", str(target))
    assert code == 0, err
    assert err == (f"bundler: Docker applies registry-mirrors to docker.io only: an image of another registry "
                   f"(nvcr.io/...) is pulled by its name on the site, {site.host}/REPO:TAG, or through containerd's "
                   "hosts.toml (mirrors config containerd --site)\n")
    (backup,) = backups(target)
    assert out.startswith(f"wrote {target} (the old one is {backup})\nrestart docker to use the mirrors:\n")
    assert json.loads(target.read_text()) == {"max-concurrent-downloads": 2, "registry-mirrors": [site.url],
                                              "insecure-registries": ["10.1.2.3:5000", site.host]}

    digest, manifest = site_manifest(site, SITE_IMAGE, "1.0")
    daemon = services.Dockerd(tmp_path / "d", config_file=target)
    try:
        daemon.start()
        shown = daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
        assert json.loads(shown) == [site.url + "/"]
        daemon.docker("pull", f"{SITE_IMAGE}:1.0")     # docker.io/bundler-site-test/app: only the site has it
        found = daemon.docker("image", "inspect", f"{SITE_IMAGE}:1.0", "--format",
                              "{{.Id}} {{json .RepoDigests}}").stdout.decode().split(" ", 1)
        assert found[0] == manifest["config"]["digest"]
        assert json.loads(found[1]) == [f"{SITE_IMAGE}@{digest}"]
    finally:
        daemon.stop()


# ---- containerd ------------------------------------------------------------------------------

HOSTS_BEFORE = """# nvcr.io, as the team had it
server = "https://nvcr.io"
dial_timeout = "2s"

[host."https://ngc-mirror.example"]
  capabilities = ["pull"]
"""


def test_containerd_pulls_nvcr_io_and_docker_io_names_from_the_site(site, containerd, tmp_path, capsys):
    hosts = tmp_path / "certs.d"
    (hosts / "nvcr.io").mkdir(parents=True)
    (hosts / "nvcr.io" / "hosts.toml").write_text(HOSTS_BEFORE)
    code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", site.url, "--upstream", "nvcr.io",
                         "--upstream", "index.docker.io", "--path", str(hosts))
    assert (code, err) == (0, "")
    assert out == f"""# {hosts}/docker.io/hosts.toml
server = "https://registry-1.docker.io"

[host."{site.url}"]
  capabilities = ["pull", "resolve"]

# {hosts}/nvcr.io/hosts.toml
# nvcr.io, as the team had it
server = "https://nvcr.io"
dial_timeout = "2s"

[host."{site.url}"]
  capabilities = ["pull", "resolve"]

[host."https://ngc-mirror.example"]
  capabilities = ["pull"]
"""
    code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", site.url, "--upstream", "nvcr.io",
                         "--upstream", "docker.io", "--path", str(hosts), "--write")
    assert (code, err) == (0, "")
    (backup,) = backups(hosts / "nvcr.io" / "hosts.toml")
    assert backup.read_text() == HOSTS_BEFORE
    assert out.splitlines()[:2] == [f"wrote {hosts}/docker.io/hosts.toml",
                                    f"wrote {hosts}/nvcr.io/hosts.toml (the old one is {backup})"]
    assert f"ctr image pull --hosts-dir {hosts} NAME" in out

    digest, _ = site_manifest(site, SITE_IMAGE, "1.0")
    names = (f"nvcr.io/{SITE_IMAGE}:1.0", f"docker.io/{SITE_IMAGE}:1.0")
    try:
        for name in names:
            containerd.ctr("image", "pull", "--hosts-dir", str(hosts), name, namespace="site-config")
        listed = containerd.ctr("image", "ls", namespace="site-config").stdout.splitlines()[1:]
        assert sorted((line.split()[0], line.split()[2]) for line in listed) == [
            (f"docker.io/{SITE_IMAGE}:1.0", digest), (f"nvcr.io/{SITE_IMAGE}:1.0", digest)]
    finally:
        containerd.ctr("image", "rm", *names, namespace="site-config", check=False)


# ---- the registries a site's bundles carry images of -----------------------------------------

def push_bundle_index(registry, sample_layout, repository: str = "bundles/torch") -> str:
    """What ``bundler push`` leaves at REPO:latest: an index naming each image it carries, whose
    manifests the repository holds; beside it, an index of the same images that is no bundle's."""
    site = SiteRegistry(registry.host, FAST, plain_http=True)
    children = []
    for tag, name in (("app", TORCH), ("app2", NGC), ("app-oci", PADDLE)):
        sample_layout.push(tag.removesuffix("-oci"), f"{registry.host}/{repository}:{tag}",
                           docker_format=not tag.endswith("-oci"))
        digest, body, media_type = site.manifest(repository, tag)
        children.append(Child("image", digest, len(body), media_type, platform={"os": "linux",
                                                                                  "architecture": "amd64"}, name=name))
    index = bundle_index(children, head_sha256="ab" * 32, profile="pytorch-cuda12.1", created="2026-12-01T00:00:00Z")
    site.put_manifest(repository, "latest", index, OCI_INDEX)
    other = json.loads(index)
    del other["annotations"]
    other["manifests"][0]["annotations"]["io.bundler.image"] = "quay.io/someone/else:1"
    site.put_manifest(repository, "not-a-bundle", json.dumps(other).encode(), OCI_INDEX)
    return repository


def test_the_registries_come_from_the_bundles_in_the_sites_registry(registry_factory, sample_layout, tmp_path,
                                                                   capsys):
    registry = registry_factory()
    push_bundle_index(registry, sample_layout)
    hosts = tmp_path / "certs.d"
    code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", registry.url, "--path", str(hosts))
    assert code == 0, err
    assert re.findall(r"^# (.*)$", out, re.MULTILINE) == [f"{hosts}/{PADDLE_REGISTRY}/hosts.toml",
                                                          f"{hosts}/docker.io/hosts.toml", f"{hosts}/nvcr.io/hosts.toml"]
    assert re.findall(r"^server = (.*)$", out, re.MULTILINE) == [
        f'"https://{PADDLE_REGISTRY}"', '"https://registry-1.docker.io"', '"https://nvcr.io"']
    assert err == (f"bundler: {registry.host} serves 1 bundle (bundles/torch:latest) with images of "
                   f"{PADDLE_REGISTRY}, docker.io, nvcr.io\n")
    assert not hosts.exists()

    # named ones are added to those found; named alone, the site is not asked
    code, out, _ = run(capsys, "mirrors", "config", "containerd", "--site", registry.url, "--path", str(hosts),
                       "--upstream", "quay.io", "--repository", "bundles/torch")
    assert code == 0
    assert len(re.findall(r"^# ", out, re.MULTILINE)) == 4 and f"# {hosts}/quay.io/hosts.toml" in out
    dead = services.refusing_url()
    code, out, _ = run(capsys, "mirrors", "config", "containerd", "--site", dead, "--upstream", "quay.io")
    assert code == 0 and out.startswith("# /etc/containerd/certs.d/quay.io/hosts.toml\n")


def test_a_site_that_keeps_its_catalog_to_admins_is_read_by_repository(registry_factory, sample_layout, tmp_path,
                                                                      capsys):
    tokens = services.TokenServer(tmp_path / "token", catalog=False)    # as Harbor, for a user who is no admin
    try:
        registry = registry_factory(auth=tokens.registry_auth())
        repository = push_bundle_index(registry, sample_layout, "project/torch-bundle")
        code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", registry.url)
        assert (code, out) == (1, "")
        assert err == (f"bundler: error: listing repositories on {registry.host}: credentials were refused; a "
                       "registry that lists its repositories to admins only (Harbor) needs --repository REPO, the "
                       "repository `bundler push` wrote to, or name the registries with --upstream HOST\n")
        code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", registry.url, "--repository",
                             repository, "--path", str(tmp_path / "certs.d"))
        assert code == 0, err
        assert len(re.findall(r"^\[host\.", out, re.MULTILINE)) == 3 and "nvcr.io/hosts.toml" in out
    finally:
        tokens.stop()


def test_a_site_with_no_bundle_needs_the_registries_named(site, capsys):
    code, out, err = run(capsys, "mirrors", "config", "containerd", "--site", site.url)
    assert (code, out) == (2, "")
    assert err == (f"bundler: error: {site.host} holds no bundle `bundler push` wrote (looked in 1 repository); "
                   "name the registries its images come from with --upstream HOST, once for each (docker.io, "
                   "nvcr.io, ...), or the repository of a pushed bundle with --repository REPO\n")


# ---- pip -------------------------------------------------------------------------------------

PIP_CONF = """[global]
timeout = 30
trusted-host = files.example

[install]
progress-bar = off
"""


def test_pip_installs_from_the_sites_index_through_the_written_pip_conf(index, tmp_path, capsys):
    target = tmp_path / "pip.conf"
    target.write_text(PIP_CONF)
    port = index.url.removesuffix("/simple")       # the index port: its PEP 503 index is under /simple/
    code, out, err = run(capsys, "mirrors", "config", "pip", "--site", port, "--write", "--path", str(target))
    assert (code, err) == (0, "")
    (backup,) = backups(target)
    assert out == f"wrote {target} (the old one is {backup})\npip reads it on its next run; check: pip config list\n"
    host = port.removeprefix("http://")
    assert target.read_text() == ("[global]\nindex-url = " + port + "/simple/\n"
                                  f"trusted-host =\n    files.example\n    {host}\ntimeout = 30\n\n"
                                  "[install]\nprogress-bar = off\n")

    wheels = tmp_path / "wheels"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": str(target)}
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-cache-dir", "-q", "-d", str(wheels),
                             "alpha==1.0"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "alpha-1.0-py3-none-any.whl" in os.listdir(wheels)
    assert "/simple/alpha/" in index.requests

    # an index URL that already ends in /simple is taken as given
    code, out, _ = run(capsys, "mirrors", "config", "pip", "--site", f"{port}/simple", "--path", str(target))
    assert code == 0 and f"index-url = {port}/simple/\n" in out


# ---- huggingface_hub -------------------------------------------------------------------------

ENVIRONMENT = 'PATH="/usr/local/bin:/usr/bin:/bin"\n# set by the team\nexport HF_ENDPOINT=https://old.example\nLANG=C.UTF-8\n'


def test_huggingface_hub_downloads_from_the_site_with_the_written_environment(hubs, tmp_path, capsys):
    code, out, err = run(capsys, "mirrors", "config", "hf", "--site", hubs.hf.url + "/")
    assert (code, out, err) == (0, f"export HF_ENDPOINT={hubs.hf.url}\n", "")

    target = tmp_path / "environment"
    target.write_text(ENVIRONMENT)
    code, out, err = run(capsys, "mirrors", "config", "hf", "--site", hubs.hf.url, "--write", "--path", str(target))
    assert (code, err) == (0, "")
    (backup,) = backups(target)
    assert out == (f"wrote {target} (the old one is {backup})\nPAM reads {target} at each login: log in again, or "
                   f"in this shell: export HF_ENDPOINT={hubs.hf.url}\n")
    assert target.read_text() == ENVIRONMENT.replace("export HF_ENDPOINT=https://old.example",
                                                     f"HF_ENDPOINT={hubs.hf.url}")

    variables = dict(line.split("=", 1) for line in target.read_text().splitlines() if not line.startswith("#"))
    env = {**os.environ, "HF_ENDPOINT": variables["HF_ENDPOINT"], "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    script = ("import hashlib, json, pathlib\nfrom huggingface_hub import snapshot_download\n"
              "folder = pathlib.Path(snapshot_download('team/tiny'))\n"
              "print(json.dumps({str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() "
              "for p in folder.rglob('*') if p.is_file()}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    repo = hubs.hf.repos[("model", "team/tiny")]
    assert json.loads(result.stdout.splitlines()[-1]) == {
        path: hashlib.sha256(data).hexdigest() for path, data in repo.commits[hubs.commits["tiny@main"]].items()}


# ---- writing: other keys kept, a backup, the same write twice changes nothing -----------------

@pytest.mark.parametrize("tool, name, before", [
    ("docker", "daemon.json", '{\n  "log-level": "warn"\n}\n'),
    ("pip", "pip.conf", PIP_CONF),
    ("hf", "environment", ENVIRONMENT),
    ("containerd", "certs.d/docker.io/hosts.toml", HOSTS_BEFORE),
])
def test_a_second_identical_write_changes_nothing(tmp_path, capsys, tool, name, before):
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(before)
    path = tmp_path / "certs.d" if tool == "containerd" else target
    args = ["mirrors", "config", tool, "--site", "http://10.0.0.5:5000", "--write", "--path", str(path)]
    args += ["--upstream", "docker.io"] if tool == "containerd" else []
    assert run(capsys, *args)[0] == 0
    (backup,) = backups(target)
    assert backup.read_text() == before
    written = files_in(tmp_path)
    code, out, _ = run(capsys, *args)
    assert (code, out) == (0, f"{target} already says this; nothing written\n")
    assert files_in(tmp_path) == written


def test_the_users_own_layout_of_the_same_settings_is_left_alone(tmp_path, capsys):
    hosts = tmp_path / "certs.d"
    target = hosts / "docker.io" / "hosts.toml"
    target.parent.mkdir(parents=True)
    target.write_text("server = 'https://registry-1.docker.io'\n[host.'http://10.0.0.5:5000']\n"
                      "capabilities = [ 'pull', 'resolve' ]  # the site\n")
    before = files_in(tmp_path)
    code, out, _ = run(capsys, "mirrors", "config", "containerd", "--site", "http://10.0.0.5:5000", "--write",
                       "--upstream", "docker.io", "--path", str(hosts))
    assert (code, out) == (0, f"{target} already says this; nothing written\n")
    assert files_in(tmp_path) == before

    # the site moves to the front of the hosts containerd tries, the others keep their order, and what the
    # admin added to the site's own table stays with it
    target.write_text('server = "https://registry-1.docker.io"\n\n[host."https://a.example"]\n  capabilities = '
                      '["pull"]\n\n[host."http://10.0.0.5:5000"]\n  capabilities = [\n    "pull",\n  ]\n'
                      '  ca = "site.crt"\n  [host."http://10.0.0.5:5000".header]\n    x-site = "1"\n')
    code, out, _ = run(capsys, "mirrors", "config", "containerd", "--site", "http://10.0.0.5:5000",
                       "--upstream", "docker.io", "--path", str(hosts))
    assert out == (f'# {target}\nserver = "https://registry-1.docker.io"\n\n[host."http://10.0.0.5:5000"]\n'
                   '  capabilities = ["pull", "resolve"]\n  ca = "site.crt"\n'
                   '  [host."http://10.0.0.5:5000".header]\n    x-site = "1"\n\n'
                   '[host."https://a.example"]\n  capabilities = ["pull"]\n')


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------

@pytest.mark.parametrize("tool, name, text, error", [
    ("hf", "environment", "LANG=C\nthis is not a setting\n",
     "{path}:2: not a NAME=VALUE line: 'this is not a setting'; fix it by hand, it was left as it is"),
    ("containerd", "certs.d/nvcr.io/hosts.toml", 'server = "https://nvcr.io"\n[host."x"\n',
     "{path}:2: not valid TOML: Expected ']' at the end of a table declaration (column 10); fix it by hand, it was "
     "left as it is"),
    ("docker", "daemon.json", '{"insecure-registries": "10.0.0.9:5000"}\n',
     "{path}: insecure-registries is not a list of HOST[:PORT]; fix it by hand, it was left as it is"),
    ("pip", "pip.conf", "index-url = http://a.example/simple\n",
     "{path}:1: not a valid pip config: 'index-url = http://a.example/simple' comes before any [section] header; "
     "it was left as it is"),
])
def test_a_file_that_cannot_be_read_is_refused_naming_it_and_left_alone(tmp_path, capsys, tool, name, text, error):
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    path = tmp_path / "certs.d" if tool == "containerd" else target
    before = files_in(tmp_path)
    code, out, err = run(capsys, "mirrors", "config", tool, "--site", "http://10.0.0.5:5000", "--write", "--path",
                         str(path), *(["--upstream", "nvcr.io"] if tool == "containerd" else []))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == "bundler: error: " + error.format(path=target)
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("args, error", [
    (["containerd"], "mirrors config containerd: only with --site URL (a node's configuration for the site); the "
                     "mirror catalog configures docker and pip"),
    (["hf", "--write"], "mirrors config hf: only with --site URL (a node's configuration for the site); the mirror "
                        "catalog configures docker and pip"),
    (["pip", "--upstream", "nvcr.io"], "--upstream: only with --site URL"),
    (["docker", "--site", "10.0.0.5:5000"], "--site 10.0.0.5:5000: not an http:// or https:// URL (the site's "
                                            "registry, or its index port, as `bundler serve` prints them)"),
    (["docker", "--site", "http://10.0.0.5:5000/v2/"], "--site http://10.0.0.5:5000/v2/: a registry is named by its "
                                                       "scheme and HOST[:PORT]; Docker's registry-mirrors and "
                                                       "containerd's hosts take no path"),
    (["containerd", "--site", "http://10.0.0.5:5000", "--upstream", "nvcr"],
     "--upstream nvcr: not a registry host (like docker.io, nvcr.io or registry.local:5000)"),
    (["pip", "--site", "http://10.0.0.5:8080", "--repository", "bundles/torch"],
     "--upstream and --repository choose the registries of containerd's hosts.toml; pip takes neither"),
    (["docker", "--site", "http://10.0.0.5:5000", "--skip-verify"],
     "--skip-verify: http://10.0.0.5:5000 speaks plain HTTP, which has no certificate to check"),
    (["pip", "--site", "http://10.0.0.5:8080", "--mirrors", __file__],
     "--mirrors and --profile choose the mirror catalog; with --site the node is configured for the site alone: "
     "leave them out"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, args, error):
    code, out, err = run(capsys, "mirrors", "config", *args)
    assert (code, out, err) == (2, "", f"bundler: error: {error}\n")


def test_an_https_site_whose_certificate_cannot_be_checked(tmp_path):
    from bundler.restore.siteconfig import plan_site_config
    site = "https://registry.site.example:5000"
    (docker,) = plan_site_config("docker", site, Context(), path=tmp_path / "daemon.json")
    assert json.loads(docker.text) == {"registry-mirrors": [site]}
    (docker,) = plan_site_config("docker", site, Context(), path=tmp_path / "daemon.json", skip_verify=True)
    assert json.loads(docker.text)["insecure-registries"] == ["registry.site.example:5000"]
    (hosts,) = plan_site_config("containerd", site, Context(), path=tmp_path, upstreams=["nvcr.io"],
                                skip_verify=True)
    assert hosts.text == ('server = "https://nvcr.io"\n\n[host."https://registry.site.example:5000"]\n'
                          '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')
    (pip,) = plan_site_config("pip", "https://index.site.example", Context(), path=tmp_path / "pip.conf")
    assert pip.text == "[global]\nindex-url = https://index.site.example/simple/\n"


def test_without_a_toml_reader_the_edit_is_the_same(tmp_path, monkeypatch):
    """CPython 3.9 and 3.10 have no tomllib (the air-gapped side runs there): the line edit alone."""
    from bundler import configfile
    from bundler.restore.siteconfig import plan_site_config
    hosts = tmp_path / "certs.d"
    (hosts / "nvcr.io").mkdir(parents=True)
    (hosts / "nvcr.io" / "hosts.toml").write_text(HOSTS_BEFORE)
    site = "http://10.0.0.5:5000"
    with_reader = plan_site_config("containerd", site, Context(), path=hosts, upstreams=["nvcr.io"])
    monkeypatch.setattr(configfile, "tomllib", None)
    (plan,) = plan_site_config("containerd", site, Context(), path=hosts, upstreams=["nvcr.io"])
    assert (plan.text, plan.changed) == (with_reader[0].text, True)
    configfile.write_config(plan)
    (again,) = plan_site_config("containerd", site, Context(), path=hosts, upstreams=["nvcr.io"])
    assert not again.changed
