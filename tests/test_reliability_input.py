"""Bad input, generated: every profile, mirrors file and command line either works or ends with
exit 2 and one line naming the file, key or argument; never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler import cli
from bundler.build.mirrors import load_mirrors_file
from bundler.build.profile import load_profile
from bundler.errors import InputError

# How many cases: the "default" profile of conftest.py (150), or HYPOTHESIS_PROFILE=thorough (3000).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["linux/amd64", "3.10", 3.10, "ubuntu:22.04", "official",
                                                           "https://mirror.example/simple", "torch==2.1.2",
                                                           "docker", "registry", "", "../x", "a b"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
PROFILE_KEYS = ["name", "description", "target", "images", "python", "check", "mirrors", "platform",
                "requirements", "ref", "source", "registries", "pypi", "lock", "extra_index_urls", "find_links"]


def nested(keys: list[str]) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), inner,
                                                max_size=5)),
        max_leaves=15)


def assert_located(error: InputError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(f"{path}:") or message.startswith(str(path)), message


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(PROFILE_KEYS), nested(PROFILE_KEYS), max_size=7))
def test_generated_profiles_load_or_fail_located(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_profile(str(path))
        except InputError as error:
            assert_located(error, path)
            assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(error)), str(error)


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_a_profile_loads_or_fails_located(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.yaml"
        path.write_text(text)
        try:
            load_profile(str(path))
        except InputError as error:
            assert_located(error, path)


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(["registries", "pypi", "docker.io", "x"]),
                                nested(["docker.io", "quay.io", "127.0.0.1:5000", "pypi", "registries"]),
                                max_size=3))
def test_generated_mirror_files_load_or_fail_located(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mirrors.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_mirrors_file(path, "test")
        except InputError as error:
            assert_located(error, path)


VERBS = [["profiles"], ["profiles", "show"], ["lock"], ["build"], ["inspect"], ["verify"], ["restore"],
         ["mirrors", "list"], ["mirrors", "config", "docker"], ["mirrors", "config", "pip"], ["mirrors"], []]
TOKENS = ["--level", "--split", "--jobs", "--json", "--force", "--lock", "--mirrors", "--cache", "-o", "--dest",
          "--images-only", "--wheels-only", "--registry", "--containerd", "--python", "--venv", "--zzz", "-q",
          "--debug", "4X", "fat32", "0", "-1", "99", "700M", "nope.yaml", "/nonexistent/bundle.tar.zst", "",
          "x" * 300, "--", "-", "\u00e9t\u00e9", "../..", "--help-me"]


@settings(deadline=None)
@given(verb=st.sampled_from(VERBS), tokens=st.lists(st.sampled_from(TOKENS), max_size=6))
def test_generated_command_lines_never_end_in_a_traceback(verb, tokens):
    import contextlib
    import io
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main([*verb, *tokens])
        except SystemExit as exit_:   # argparse's --help and usage errors
            code = exit_.code
    text = err.getvalue()
    assert "internal error" not in text, text
    assert "Traceback" not in text or "--debug" in tokens, text
    assert code in (0, 1, 2, 3), (code, text)
    no_command = text.startswith("usage: bundler ")   # `bundler` alone prints its help, exit 2
    if code not in (0, None) and "--debug" not in tokens and not no_command:
        assert text.count("\n") == 1 and text.startswith("bundler: error: "), text
