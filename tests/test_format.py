"""The bundle format as a contract: bundle.json is read by one reader that checks every key and
type and names the key at fault; what the writer writes, the reader reads back unchanged."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import cli
from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.format.archive import read_head
from bundler.format.head import FORMAT, Head
from testbed import bundles

GOLDEN = Path(__file__).parent / "golden" / "format1-bundler-0.1.0.tar.zst"
# Keys a format-1 head may leave out (bundler 0.1.0 wrote bundles before it listed layer sizes).
MAY_BE_ABSENT = {"images[0].layer_sizes"}
# Keys whose value may be null.
NULLABLE = {"profile.check", "target.python", "split", "images[0].index_digest"}


def golden_head() -> dict:
    head, _ = read_head(GOLDEN)
    return head


def key_paths(value: object, prefix: str = "") -> list[str]:
    """Every key of a JSON value (the first entry of each list standing for all), parents first."""
    paths = []
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.append(path)
            if key not in ("annotations",):
                paths += key_paths(inner, path)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        paths += key_paths(value[0], f"{prefix}[0]")
    return paths


def locate(head: dict, path: str) -> tuple[object, str | int]:
    """The container holding ``path``'s last step, and that step."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        steps.append(name)
        if index:
            steps.append(int(index.rstrip("]")))
    node: object = head
    for step in steps[:-1]:
        node = node[step]  # type: ignore[index]
    return node, steps[-1]


def wrong_value(value: object) -> object:
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return "12"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"not": "a list"}
    if isinstance(value, dict):
        return ["not", "an object"]
    return 3.5   # null: a number where a string or null belongs


def inspect_code(tmp_path: Path, head: object, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    bundle = bundles.head_only(tmp_path / "head.tar.zst", head)
    code = cli.main(["inspect", str(bundle)])
    return code, capsys.readouterr().err


PATHS = key_paths(golden_head())


def test_the_sweep_covers_every_key_of_the_golden_head():
    assert len(PATHS) >= 40
    for expected in ("format", "members[0].sha256", "images[0].layer_digests", "wheels[0].built", "totals.members",
                     "profile.check", "target.platform"):
        assert expected in PATHS


@pytest.mark.parametrize("path", [p for p in PATHS if p not in MAY_BE_ABSENT])
def test_a_head_without_a_key_is_refused_naming_it(path, tmp_path, capsys):
    head = golden_head()
    container, step = locate(head, path)
    del container[step]  # type: ignore[attr-defined]
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 3, (path, err)
    assert f"bundle.json: {path}: missing" in err, err
    assert err.startswith("bundler: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("path", PATHS)
def test_a_key_of_the_wrong_type_is_refused_naming_it(path, tmp_path, capsys):
    head = golden_head()
    container, step = locate(head, path)
    container[step] = wrong_value(container[step])  # type: ignore[index]
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 3, (path, err)
    assert f"bundle.json: {path}" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("path", sorted(NULLABLE | MAY_BE_ABSENT))
def test_optional_keys_may_be_null_or_absent_as_documented(path, tmp_path, capsys):
    head = golden_head()
    container, step = locate(head, path)
    if path in MAY_BE_ABSENT:
        del container[step]  # type: ignore[attr-defined]
    else:
        container[step] = None  # type: ignore[index]
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 0, err


def test_entries_that_disagree_are_refused_naming_the_key(tmp_path, capsys):
    cases = {
        "totals.members": lambda h: h["totals"].update(members=h["totals"]["members"] + 1),
        "images[0].layers": lambda h: h["images"][0].update(layers=5),
        "wheels[0]": lambda h: h["wheels"][0].update(sha256="0" * 64),
        "members[1].path": lambda h: h["members"][1].update(path=h["members"][0]["path"]),
        "members[0].path": lambda h: h["members"][0].update(path="images/../../etc/passwd"),
        "images[0]": lambda h: h["images"][0].update(manifest="sha256:" + "1" * 64),
    }
    for key, damage in cases.items():
        head = golden_head()
        damage(head)
        code, err = inspect_code(tmp_path, head, capsys)
        assert code == 3 and f"bundle.json: {key}:" in err, (key, err)


def test_a_newer_format_asks_for_a_newer_bundler_and_nonsense_is_refused(tmp_path, capsys):
    head = golden_head()
    head["format"] = 99
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 2 and f"bundle format 99 is newer than this bundler reads ({FORMAT})" in err
    for value in (0, -1, "1", None, 1.0):
        head["format"] = value
        code, err = inspect_code(tmp_path, head, capsys)
        assert code == 3 and "bundle.json: format" in err, (value, err)
    for top in ([], "bundle", 7):
        code, err = inspect_code(tmp_path, top, capsys)
        assert code == 3, (top, err)


def test_restore_refuses_a_malformed_head_before_anything_is_made(tmp_path, capsys):
    head = golden_head()
    del head["wheels"][0]["sha256"]
    bundle = bundles.head_only(tmp_path / "bad.tar.zst", head)
    dest = tmp_path / "dest"
    assert cli.main(["restore", str(bundle), "--wheels-only", "--dest", str(dest)]) == 3
    assert "bundle.json: wheels[0].sha256: missing" in capsys.readouterr().err
    assert not dest.exists()


def test_the_writer_gives_back_what_the_reader_read():
    raw, _ = read_head(GOLDEN)
    head = Head.from_json(copy.deepcopy(raw), str(GOLDEN))
    assert json.loads(head.to_json()) == raw
    assert Head.from_json(json.loads(head.to_json()), "again") == head
    assert isinstance(head.images[0].id, Digest) and head.images[0].id.hex == raw["images"][0]["id"][7:]


def test_a_digest_is_checked_once_when_it_is_made():
    good = "sha256:" + "a" * 64
    assert Digest(good) == good and Digest(Digest(good)) is not None and Digest.from_hex("a" * 64) == good
    assert Digest.of(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 64, "a" * 64, "", 5):
        with pytest.raises(ValueError):
            Digest(bad)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=r"x: bundle.json: members\[0\].sha256"):
        raw = golden_head()
        raw["members"][0]["sha256"] = "sha256:" + raw["members"][0]["sha256"]
        Head.from_json(raw, "x")


def test_the_air_gapped_side_loads_nothing_of_the_connected_side(tmp_path):
    """inspect, verify and restore (the restorer's whole job) never import the registry pulls, uv or
    the resolver: the restorer can leave them out."""
    code = f"""
import sys
from bundler import cli
for argv in (["inspect", {str(GOLDEN)!r}], ["verify", {str(GOLDEN)!r}], ["sbom", {str(GOLDEN)!r}],
             ["restore", "--help"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
from bundler.restore.verb import restore
print(" ".join(sorted(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    loaded = set(out.stdout.splitlines()[-1].split())
    connected = {m for m in loaded if m == "bundler.build" or m.startswith("bundler.build.")}
    connected |= {"pyfastcdc", "cyclonedx", "uv", "isal"} & loaded
    assert "bundler.restore.verb" in loaded and "bundler.format.head" in loaded
    assert not connected & loaded, sorted(connected & loaded)


# ---- format 2: the models section ----------------------------------------------------------------

GOLDEN2 = Path(__file__).parent / "golden" / "format2-bundler-0.2.0.tar.zst"
FORMAT2_PATHS = key_paths(read_head(GOLDEN2)[0])
MODEL_NULLABLE = {"models[0].files[0].etag"}


def golden2_head() -> dict:
    head, _ = read_head(GOLDEN2)
    return head


def test_the_format_2_sweep_covers_what_format_2_added():
    for expected in ("target.platforms", "images[0].exact", "images[0].layer_blobs[0].media_type",
                     "images[0].manifest_media_type", "wheels[0].platforms", "indexes[0].upstream",
                     "indexes[0].manifests", "models[0].files[0].sha256", "totals.models"):
        assert expected in FORMAT2_PATHS


def assert_refused_without_it_or_with_a_wrong_type(raw: dict, path: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    for damage in ("missing", "type"):
        head = copy.deepcopy(raw)
        container, step = locate(head, path)
        if damage == "missing":
            del container[step]  # type: ignore[attr-defined]
        else:
            container[step] = wrong_value(container[step])  # type: ignore[index]
        code, err = inspect_code(tmp_path, head, capsys)
        assert code == 3 and f"bundle.json: {path}" in err, (path, damage, err)
        assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("path", FORMAT2_PATHS)
def test_a_format_2_head_without_a_key_or_with_a_wrong_type_is_refused_naming_it(path, tmp_path, capsys):
    assert_refused_without_it_or_with_a_wrong_type(golden2_head(), path, tmp_path, capsys)


def test_models_entries_that_disagree_or_escape_are_refused_naming_the_key(tmp_path, capsys):
    cases = {
        "models[0].files[0].path": lambda h: h["models"][0]["files"][0].update(path="../../etc/passwd"),
        "models[0].repo": lambda h: h["models"][0].update(repo="golden/../tiny"),
        "models[0].revision": lambda h: h["models"][0].update(revision="/main"),
        "models[0].files[0]": lambda h: h["models"][0]["files"][0].update(size=1),
        "models[0].files[1]": lambda h: h["models"][0]["files"][1].update(path=h["models"][0]["files"][0]["path"]),
        "models[0].commit": lambda h: h["models"][0].update(commit=None),
        "models[0].files[0].etag": lambda h: h["models"][0]["files"][0].update(etag="f" * 64),
        "models[3]": lambda h: h["models"].append(copy.deepcopy(h["models"][1])),
        "totals.models": lambda h: h["totals"].update(models=h["totals"]["models"] + 1),
    }
    for key, damage in cases.items():
        head = golden2_head()
        damage(head)
        code, err = inspect_code(tmp_path, head, capsys)
        assert code == 3 and f"bundle.json: {key}" in err, (key, err)


def test_a_format_1_head_reads_as_it_always_did_whatever_keys_it_carries(tmp_path, capsys):
    head = golden_head()
    head["models"] = "anything: format 1 has no models"
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 0, err
    assert Head.from_json(copy.deepcopy(head), "x").models == ()
    assert "models" not in json.loads(Head.from_json(golden_head(), "x").to_json())


def test_the_format_2_writer_gives_back_what_the_reader_read():
    raw = golden2_head()
    head = Head.from_json(copy.deepcopy(raw), str(GOLDEN2))
    assert head.format == 2 and len(head.models) == 3
    assert json.loads(head.to_json()) == raw


# ---- format 2: a delta's section ---------------------------------------------------------------------

DELTA_PATHS = ["delta.bases", "delta.bases[0].kind", "delta.bases[0].name", "delta.bases[0].sha256",
               "delta.bases[0].images", "delta.layers", "delta.wheels", "delta.models", "delta.patches",
               "delta.patches[0].layer", "delta.patches[0].size", "delta.patches[0].base",
               "delta.patches[0].base_size", "delta.patches[0].method"]


@pytest.fixture(scope="module")
def delta_raw(delta_bundles) -> dict:
    return read_head(delta_bundles["d2"])[0]


def test_the_delta_sweep_covers_every_key_of_a_delta_head(delta_raw):
    assert sorted(p for p in key_paths(delta_raw) if p.startswith("delta.")) == sorted(DELTA_PATHS)


@pytest.mark.parametrize("path", DELTA_PATHS)
def test_a_delta_head_without_a_key_or_with_a_wrong_type_is_refused_naming_it(path, delta_raw, tmp_path, capsys):
    assert_refused_without_it_or_with_a_wrong_type(delta_raw, path, tmp_path, capsys)


def test_delta_entries_that_disagree_are_refused_naming_the_key(delta_raw, tmp_path, capsys):
    site_wheel = next(i for i, w in enumerate(delta_raw["wheels"]) if w["sha256"] in delta_raw["delta"]["wheels"])
    site_layer = delta_raw["delta"]["layers"][0]
    image = next(i for i, e in enumerate(delta_raw["images"]) if site_layer in e["layer_digests"])
    cases = {
        "delta.patches[0].method": lambda h: h["delta"]["patches"][0].update(method="xdelta3"),
        "delta.patches[0].base": lambda h: h["delta"]["patches"][0].update(base=h["delta"]["patches"][0]["layer"]),
        "delta.layers[0]": lambda h: h["delta"]["layers"].insert(0, "sha256:" + "1" * 64),
        f"images[{image}]": lambda h: h["delta"]["layers"].remove(site_layer),
        f"wheels[{site_wheel}]": lambda h: h["delta"].update(wheels=[]),
        "delta.bases": lambda h: h["delta"].update(bases=[]),
        "delta.bases[0].kind": lambda h: h["delta"]["bases"][0].update(kind="rumour"),
        "delta": lambda h: h.update(delta=None),
    }
    for key, damage in cases.items():
        head = copy.deepcopy(delta_raw)
        damage(head)
        code, err = inspect_code(tmp_path, head, capsys)
        assert code == 3 and f"bundle.json: {key}" in err, (key, err)
    assert "upgrade bundler" in inspect_code(tmp_path, {**delta_raw, "delta": {
        **delta_raw["delta"], "patches": [{**delta_raw["delta"]["patches"][0], "method": "x"}]}}, capsys)[1]
    head = copy.deepcopy(delta_raw)
    del head["delta"]   # read as a full bundle, it lacks members
    code, err = inspect_code(tmp_path, head, capsys)
    assert code == 3 and "is not a member" in err, err


def test_a_delta_is_format_2_and_the_writer_gives_back_what_the_reader_read(delta_raw):
    head = Head.from_json(copy.deepcopy(delta_raw), "delta")
    assert head.format == head.needed_format() == 2 and head.delta is not None
    assert json.loads(head.to_json()) == delta_raw
    with pytest.raises(ValueError, match="needs 2"):
        dataclasses.replace(head, format=1).to_json()
