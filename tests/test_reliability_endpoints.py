"""Hostile endpoints: a build through each kind of misbehaviour uses the next endpoint, or fails
naming every attempt; it never accepts wrong bytes."""

from __future__ import annotations

import hashlib
import json

import pytest

from bundler import cli
from conftest import write_profile
from testbed.policy import FAST_RETRY

# fault -> what the error line says about the faulty endpoint when it is the only one
FAULTS = {
    "flip": "",                      # integrity: digest named
    "truncate": "IncompleteRead",
    "lying-length": "IncompleteRead",
    "trickle": "stalled",
    "redirect-loop": "redirect",
    "html200": "",
    "500": "HTTP 500",
    "404": "HTTP 404",
}


def build(capsys, profile, out, *extra):
    code = cli.main(["build", "--no-restorer", str(profile), "-o", str(out), *extra], policy=FAST_RETRY)
    _, err = capsys.readouterr()
    return code, err


def profile_through(tmp_path, registry, pushed, index, registry_endpoints, pypi_endpoints):
    path = write_profile(tmp_path, registry.host, [pushed["app"]], index.url, ["alpha==1.0"])
    text = path.read_text().replace(f"{registry.host}: [official]", f"{registry.host}: [{', '.join(registry_endpoints)}]")
    text = text.replace(f"pypi: [{index.url}]", f"pypi: [{', '.join(pypi_endpoints)}]")
    path.write_text(text)
    return path


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_falls_back_to_the_good_endpoint(fault, faulty, registry, pushed, index, tmp_path, capsys):
    bad_registry = faulty(registry.url, fault, delay=0, min_size=0)
    bad_index = faulty(index.url.removesuffix("/simple"), fault, delay=0)
    path = profile_through(tmp_path, registry, pushed, index, [bad_registry.url, "official"],
                           [bad_index.url + "/simple", index.url])
    out = tmp_path / "ok.tar.zst"
    code, err = build(capsys, path, out)
    assert code == 0, err
    assert cli.main(["verify", str(out)]) == 0
    capsys.readouterr()
    # what was bundled is byte for byte what the honest endpoints hold
    head = json.loads(cli_inspect(out, capsys))
    wheel = next(w for w in head["wheels"] if w["name"] == "alpha")
    assert wheel["sha256"] == hashlib.sha256((index.root / wheel["filename"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_alone_fails_naming_the_endpoint(fault, faulty, registry, pushed, index, tmp_path, capsys):
    bad_registry = faulty(registry.url, fault, delay=0, min_size=0)
    path = profile_through(tmp_path, registry, pushed, index, [bad_registry.url], [index.url])
    out = tmp_path / "never.tar.zst"
    code, err = build(capsys, path, out)
    assert code in (1, 2, 3), err
    assert err.startswith("bundler: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert bad_registry.url in err and FAULTS[fault] in err
    assert not out.exists() and not list(tmp_path.glob("never.tar.zst*"))


def cli_inspect(out, capsys) -> str:
    assert cli.main(["inspect", str(out), "--json"]) == 0
    return capsys.readouterr().out
