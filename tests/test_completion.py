"""The command line's smaller promises: shell completion (bash, zsh), options only where they mean
something, package metadata that builds without deprecation warnings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bundler import cli
from conftest import REPO


def complete(tmp_path, line: str) -> list[str]:
    """What bash or zsh would be offered after ``line``, asked of bundler the way argcomplete's shell code asks."""
    answer = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": str(answer)}
    subprocess.run([sys.executable, "-m", "bundler"], env=env, check=True, cwd=tmp_path, timeout=60)
    return answer.read_text().split("\n")


@pytest.mark.parametrize("line,offered", [
    ("bundler bu", ["build"]),
    ("bundler ca", ["cache"]),
    ("bundler build pyt", ["pytorch-cuda12.1"]),
    ("bundler lock tensor", ["tensorflow-gpu"]),
    ("bundler restore b.tar.zst --wheels", ["--wheels-only"]),
    ("bundler cache pr", ["prune"]),
])
def test_completion_offers_commands_options_and_builtin_profiles(line, offered, tmp_path):
    assert [c.strip() for c in complete(tmp_path, line)] == offered


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o"), ("zsh", "#compdef bundler")])
def test_completion_prints_the_script_for_each_shell(shell, marker, capsys):
    assert cli.main(["completion", shell]) == 0
    assert marker in capsys.readouterr().out


def test_lock_takes_no_jobs_since_it_downloads_nothing(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lock", "--help"])
    assert "--jobs" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["lock", "x.yaml", "--jobs", "2"])
    assert exit_.value.code == 2 and "unrecognized arguments: --jobs 2" in capsys.readouterr().err


def test_the_package_license_is_an_spdx_string_as_setuptools_asks():
    """A TOML table there makes every install print setuptools' deprecation banner (PEP 639)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in config["build-system"]["requires"]
