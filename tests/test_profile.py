"""Profiles and mirror files: what is valid loads; what is broken fails on one located line, exit 2."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from bundler import cli
from bundler.build.mirrors import Mirrors, builtin_mirrors, effective_mirrors, load_mirrors_file
from bundler.build.profile import builtin_names, load_profile
from bundler.errors import InputError, MirrorsError, ProfileError
from bundler.net.endpoints import OFFICIAL, Endpoint
from bundler.oci.reference import ImageRef, Platform
from conftest import bundler_cmd

GOOD = """\
name: demo
description: a test profile
target:
  platform: linux/arm64/v8
  python: "3.10"
images:
  - ubuntu:22.04
  - ref: myteam/train:dev
    source: docker
python:
  requirements: [torch==2.1.2, "numpy<2; python_version < '3.12'"]
  extra_index_urls: [https://download.example/whl/cu121]
  find_links: [wheels]
check: python -c "import torch"
mirrors:
  registries:
    docker.io: [https://docker.m.daocloud.io, official]
  pypi: [https://pypi.tuna.tsinghua.edu.cn/simple, official]
"""


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_profile_loads(tmp_path):
    profile = load_profile(str(write(tmp_path, GOOD)))
    assert profile.name == "demo"
    assert profile.target.platform == Platform("linux", "arm64", "v8")
    assert profile.target.python == "3.10"
    assert [i.image for i in profile.images] == [ImageRef("docker.io", "library/ubuntu", "22.04"),
                                                  ImageRef("docker.io", "myteam/train", "dev")]
    assert [i.source for i in profile.images] == ["registry", "docker"]
    assert profile.python.requirements == ("torch==2.1.2", "numpy<2; python_version < '3.12'")
    assert profile.python.find_links == (str((tmp_path / "wheels").resolve()),)
    assert profile.mirrors.for_registry("docker.io")[0].url == "https://docker.m.daocloud.io"


def test_images_only_and_wheels_only_profiles_are_valid(tmp_path):
    images_only = load_profile(str(write(tmp_path, "name: a\ntarget: {platform: linux/amd64}\nimages: [busybox]\n")))
    assert images_only.python is None
    wheels_only = load_profile(str(write(tmp_path, "name: b\ntarget: {platform: linux/amd64, python: '3.11'}\n"
                                                   "python: {requirements: [six]}\n", "b.yaml")))
    assert wheels_only.images == ()


BROKEN_PROFILES = [
    # (text, line, words the message must hold)
    ("name: x\ntarget: {platform: linux/amd64}\nimagez: []\n", 3, ["imagez", "unknown key"]),
    ("name: Bad_Name\ntarget: {platform: linux/amd64}\n", 1, ["name", "a-z"]),
    ("name: [x]\ntarget: {platform: linux/amd64}\n", 1, ["name", "expected a string"]),
    ("target: {platform: linux/amd64}\n", 1, ["name", "required"]),
    ("name: x\ntarget:\n  platform: linux/amd65\n", 3, ["target.platform", "amd65"]),
    ("name: x\ntarget:\n  platform: linux\n", 3, ["target.platform", "os/architecture"]),
    ("name: x\ntarget:\n  platform: solaris/amd64\n", 3, ["unknown os"]),
    ("name: x\ntarget:\n  platform: linux/arm64/8\n", 3, ["variant"]),
    ("name: x\ntarget:\n  platform: linux/amd64\n  python: 3.10\n", 4, ["target.python", "quote", '"3.1"']),
    ("name: x\ntarget:\n  platform: linux/amd64\n  python: \"2.7\"\n", 4, ["target.python", "2.7"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages:\n  - UPPER/case:1\n", 4, ["images[0]", "lowercase"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages:\n  - ubuntu:bad:tag\n", 4, ["images[0]"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages:\n  - ubuntu@sha256:abc\n", 4, ["images[0]", "digest"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages:\n  - ref: ubuntu\n    source: podman\n", 5,
     ["images[0].source", "podman"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages:\n  - ubuntu\n  - docker.io/library/ubuntu:latest\n", 5,
     ["listed twice"]),
    ("name: x\ntarget: {platform: linux/amd64}\nimages: ubuntu\n", 3, ["images", "expected a list"]),
    ("name: x\ntarget: {platform: linux/amd64, python: '3.10'}\npython:\n  requirements:\n    - torch=2.1\n", 5,
     ["python.requirements[0]", "torch=2.1", "not a valid requirement"]),
    ("name: x\ntarget: {platform: linux/amd64, python: '3.10'}\npython:\n  requirements: [a]\n  lock: x.lock\n", 4,
     ["exactly one"]),
    ("name: x\ntarget: {platform: linux/amd64, python: '3.10'}\npython:\n  requirements_file: missing.in\n", 4,
     ["python.requirements_file", "no such file"]),
    ("name: x\ntarget: {platform: linux/amd64}\npython:\n  requirements: [six]\n", 2, ["target.python", "required"]),
    ("name: x\ntarget: {platform: linux/amd64}\ncheck: ''\n", 3, ["check", "empty"]),
    ("name: x\ntarget: {platform: linux/amd64}\nmirrors:\n  pypi: [ftp://mirror]\n", 4, ["mirrors.pypi[0]", "ftp"]),
    ("name: x\ntarget: {platform: linux/amd64}\nmirrors:\n  registries:\n    docker.io: []\n", 5,
     ["mirrors.registries.docker.io", "empty"]),
    ("name: x\nname: y\ntarget: {platform: linux/amd64}\n", 2, ["duplicate key"]),
    ("name: x\ntarget: {platform: linux/amd64\n", 3, ["not valid YAML"]),
    ("- just\n- a list\n", None, ["expected a mapping"]),
    ("", None, ["empty"]),
]


@pytest.mark.parametrize("text,line,words", BROKEN_PROFILES, ids=[f"p{i}" for i in range(len(BROKEN_PROFILES))])
def test_broken_profile_is_located(tmp_path, capsys, text, line, words):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    message = str(caught.value)
    prefix = f"{path}:{line}:" if line else f"{path}:"
    assert message.startswith(prefix), message
    for word in words:
        assert word in message, message
    assert "\n" not in message
    # and through the CLI: one line on stderr, exit 2
    assert cli.main(["profiles", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bundler: error: ")


BROKEN_MIRRORS = [
    ("registries: [docker.io]\n", 1, ["registries", "expected a mapping"]),
    ("registries:\n  docker.io: https://x\n", 2, ["registries.docker.io", "expected a list"]),
    ("registries:\n  docker.io: [https://x, https://x]\n", 2, ["listed twice"]),
    ("registries:\n  docker.io: [mirror.example]\n", 2, ["not an http(s) URL"]),
    ("registries:\n  docker.io/library: [official]\n", 2, ["registry host"]),
    ("pypi: ['https://x/simple?x=1']\n", 1, ["query"]),
    ("pypi: official\n", 1, ["pypi", "expected a list"]),
    ("mirrorz: {}\n", 1, ["mirrorz", "unknown key"]),
    ("pypi: [official\n", 2, ["not valid YAML"]),
]


@pytest.mark.parametrize("text,line,words", BROKEN_MIRRORS, ids=[f"m{i}" for i in range(len(BROKEN_MIRRORS))])
def test_broken_mirrors_file_is_located(tmp_path, text, line, words):
    path = tmp_path / "mirrors.yaml"
    path.write_text(text)
    with pytest.raises(MirrorsError) as caught:
        load_mirrors_file(path, "test")
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:"), message
    for word in words:
        assert word in message, message


def test_mirror_layers_highest_first(tmp_path, monkeypatch):
    user = write(tmp_path, "registries:\n  quay.io: [https://quay.user]\npypi: [https://pypi.user/simple]\n",
                 "user.yaml")
    flag = write(tmp_path, "pypi: [https://pypi.flag/simple, official]\n", "flag.yaml")
    profile = Mirrors({"docker.io": (Endpoint("https://hub.profile", "profile"),)}, None)
    mirrors = effective_mirrors(flag, profile, user)
    assert [e.url for e in mirrors.for_pypi()] == ["https://pypi.flag/simple", OFFICIAL]
    assert [e.url for e in mirrors.for_registry("docker.io")] == ["https://hub.profile"]
    assert [e.url for e in mirrors.for_registry("quay.io")] == ["https://quay.user"]
    assert [e.url for e in mirrors.for_registry("ghcr.io")] == [OFFICIAL]
    assert mirrors.for_pypi()[0].origin.startswith("--mirrors")
    # without any file: the built-in catalog, official last
    builtin = effective_mirrors(None, None, tmp_path / "absent.yaml")
    assert builtin == builtin_mirrors()
    assert builtin.for_registry("docker.io")[-1].url == OFFICIAL
    assert builtin.for_pypi()[-1].url == OFFICIAL


def test_unknown_profile_name_lists_the_builtin_ones(capsys):
    assert cli.main(["profiles", "show", "no-such-stack"]) == 2
    err = capsys.readouterr().err
    for name in builtin_names():
        assert name in err


def test_profiles_lists_builtins_through_the_console_script():
    result = subprocess.run(bundler_cmd("profiles"), capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == builtin_names()
    assert {"pytorch-cuda12.1", "paddle-2.6-gpu", "tensorflow-gpu"} <= set(names)


def test_version_and_debug():
    out = subprocess.run(bundler_cmd("--version"), capture_output=True, text=True, check=True).stdout
    assert out.startswith("bundler ")
    result = subprocess.run(bundler_cmd("profiles", "show", "nope", "--debug"), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" in result.stderr
    result = subprocess.run(bundler_cmd("profiles", "show", "nope"), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("text,expected", [
    ("ubuntu", "docker.io/library/ubuntu:latest"),
    ("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime", "docker.io/pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("localhost/x", "localhost/x:latest"),
    ("127.0.0.1:5000/team/app:1.0", "127.0.0.1:5000/team/app:1.0"),
    ("registry.baidubce.com/paddlepaddle/paddle:2.6.1", "registry.baidubce.com/paddlepaddle/paddle:2.6.1"),
    ("ubuntu@sha256:" + "a" * 64, "docker.io/library/ubuntu@sha256:" + "a" * 64),
    ("ubuntu:22.04@sha256:" + "b" * 64, "docker.io/library/ubuntu:22.04@sha256:" + "b" * 64),
])
def test_reference_normalisation(text, expected):
    assert str(ImageRef.parse(text)) == expected


def test_familiar_names_are_what_docker_shows():
    assert ImageRef.parse("ubuntu:22.04").familiar == "ubuntu:22.04"
    assert ImageRef.parse("docker.io/pytorch/pytorch:2.1").familiar == "pytorch/pytorch:2.1"
    assert ImageRef.parse("127.0.0.1:5000/a/b:1").familiar == "127.0.0.1:5000/a/b:1"


@pytest.mark.parametrize("text", ["", " ubuntu", "Ubuntu", "ubuntu:", "a//b", "-a/b", "host:99999x/a"])
def test_bad_references(text):
    with pytest.raises(InputError):
        ImageRef.parse(text)


def test_platform_matching():
    arm = Platform.parse("linux/arm64")
    assert arm.matches("linux", "arm64", "v8") and arm.matches("linux", "arm64", None)
    assert not Platform.parse("linux/arm/v6").matches("linux", "arm", None)
    assert not Platform.parse("linux/amd64").matches("linux", "arm64", None)
