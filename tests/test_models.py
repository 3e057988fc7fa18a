"""Models: Hugging Face and ModelScope repositories locked file by file, fetched through mirrors
(a dead and a lying one skipped, an interrupted file resumed), carried once each in a format-2
bundle, and restored offline where the hubs' own clients find them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from bundler import cli
from bundler.build.lockfile import read_lock
from bundler.format.archive import read_head
from conftest import bundler_cmd, offline
from testbed import services
from testbed.hubs import HuggingFaceHub, safetensors
from testbed.policy import FAST_RETRY

MODELS = """\
models:
  - hf: team/tiny
  - hf: team/tiny
    revision: v1.0
    include: ["*.json", "*.safetensors"]
  - hf: team/twin
  - hf: team/tiny-data
    repo_type: dataset
  - modelscope: team/tiny-ms
  - modelscope: team/ms-data
    repo_type: dataset
"""


def models_profile(folder: Path, hf: list[str], ms: list[str], models: str = MODELS, extra: str = "") -> Path:
    path = folder / "models.yaml"
    path.write_text(f"name: models\ntarget:\n  platform: linux/amd64\n  python: \"3.10\"\n{extra}{models}"
                    f"mirrors:\n  huggingface: [{', '.join(hf)}]\n  modelscope: [{', '.join(ms)}]\n")
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_files(hubs, hub: str, repo: str, revision: str, repo_type: str = "model", wants=lambda _p: True) -> dict:
    """What the test bed's hub holds for the repository at the revision: path -> sha256."""
    server = hubs.hf if hub == "hf" else hubs.ms
    found = server.repos[(repo_type, repo)]
    return {p: sha256(d) for p, d in found.commits[found.resolve(revision)].items() if wants(p)}


@pytest.fixture(scope="module")
def locked(hubs, tmp_path_factory):
    """The profile and its lock, made through a dead and a lying mirror in front of each hub."""
    folder = tmp_path_factory.mktemp("models")
    dead = services.refusing_url()
    liar = services.FaultyProxy(hubs.hf.url, "flip", follow_redirects=True)
    profile = models_profile(folder, [dead, liar.url, hubs.hf.url], [dead, hubs.ms.url])
    lock = folder / "models.lock"
    result = subprocess.run(bundler_cmd("lock", str(profile), "-o", str(lock)), capture_output=True, text=True)
    liar.stop()
    assert result.returncode == 0, result.stderr
    return profile, lock, result.stderr


@pytest.fixture(scope="module")
def models_bundle(locked, tmp_path_factory):
    profile, lock, _ = locked
    out = tmp_path_factory.mktemp("bundle") / "models.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "--lock", str(lock), "-o", str(out), "-q"], policy=FAST_RETRY) == 0
    return out


def test_the_lock_pins_each_commit_and_every_file_past_a_dead_and_a_lying_mirror(hubs, locked):
    _, lock, stderr = locked
    pinned = read_lock(lock)
    assert [str(m.spec) for m in pinned.models] == [
        "hf:team/tiny@main", "hf:team/tiny@v1.0", "hf:team/twin@main", "hf:datasets/team/tiny-data@main",
        "ms:team/tiny-ms@master", "ms:datasets/team/ms-data@master"]
    assert [m.commit for m in pinned.models[:4]] == [hubs.commits[k] for k in ("tiny@main", "tiny@v1.0", "twin@main",
                                                                                "data@main")]
    assert [m.commit for m in pinned.models[4:]] == [None, None]   # ModelScope's API names no commit
    for model in pinned.models:
        hub = "hf" if model.spec.hub == "huggingface" else "ms"
        want = expected_files(hubs, hub, model.spec.repo, model.spec.revision, model.spec.repo_type, model.spec.wants)
        assert {f.path: f.sha256 for f in model.files} == want
    v1 = pinned.models[1]
    assert sorted(f.path for f in v1.files) == ["config.json", "model.safetensors"]
    # a small file's etag is its git blob id, an LFS file's its sha256: the names of their blobs in the HF cache
    etags = {f.path: f.etag for f in pinned.models[0].files}
    assert etags["model.safetensors"] == sha256(hubs.weights) and len(etags["config.json"]) == 40
    # the liar's bytes were refused (small files at lock time: their git blob id did not match)
    assert "git blob id" in stderr and f"served by {hubs.hf.url}" in stderr


def test_the_bundle_is_format_2_and_holds_each_file_once(models_bundle, hubs, capsys):
    head, _ = read_head(models_bundle)
    assert head["format"] == 2 and head["totals"]["models"] == sum(
        {f["sha256"]: f["size"] for m in head["models"] for f in m["files"]}.values())
    weights = [m for m in head["members"] if m["sha256"] == sha256(hubs.weights)]
    assert [m["path"] for m in weights] == [f"models/blobs/sha256/{sha256(hubs.weights)}"]   # four repositories share it
    assert sum(1 for m in head["models"] for f in m["files"] if f["sha256"] == sha256(hubs.weights)) == 4
    with open(models_bundle, "rb") as file, tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(
            file, read_across_frames=True), mode="r|") as tar:
        names = [info.name for info in tar]
    assert names == ["bundle.json", *[m["path"] for m in head["members"]]]
    assert cli.main(["inspect", str(models_bundle)]) == 0
    out = capsys.readouterr().out
    assert "format 2" in out and "models    6, " in out
    assert f"hf:team/tiny@main  commit {hubs.commits['tiny@main'][:12]}  6 files  449.6 KiB" in out
    assert "ms:datasets/team/ms-data@master  3 files  24 B" in out
    assert cli.main(["verify", str(models_bundle)]) == 0


def test_a_bundle_without_models_is_still_format_1(built_bundle):
    head, _ = read_head(built_bundle)
    assert head["format"] == 1 and "models" not in head and "models" not in head["totals"]


def _snapshots(python: str, env: dict, script: str) -> dict:
    result = offline([python, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


READ_HF = """
import hashlib, json, pathlib
from huggingface_hub import snapshot_download
found = {}
for repo, revision, kind in %s:
    folder = pathlib.Path(snapshot_download(repo, revision=revision, repo_type=kind))
    found[f"{repo}@{revision}"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                                   for p in folder.rglob("*") if p.is_file()}
print(json.dumps(found))
"""
HF_REPOS = [("team/tiny", "main", "model"), ("team/tiny", "v1.0", "model"), ("team/twin", "main", "model"),
            ("team/tiny-data", "main", "dataset")]


def test_restore_lays_out_the_hugging_face_cache_its_client_reads_offline(models_bundle, hubs, tmp_path,
                                                                          can_unshare):
    dest = tmp_path / "dest"
    result = offline(bundler_cmd("restore", str(models_bundle), "--models-only", "--dest", str(dest)),
                     capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    hf_home = dest / "huggingface"
    assert f"export HF_HOME={hf_home} HF_HUB_OFFLINE=1" in result.stdout
    assert f"export MODELSCOPE_CACHE={dest / 'modelscope'}" in result.stdout
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    found = _snapshots(sys.executable, env, READ_HF % HF_REPOS)
    spec = {"team/tiny@v1.0": lambda p: p.endswith((".json", ".safetensors"))}
    for repo, revision, kind in HF_REPOS:
        want = expected_files(hubs, "hf", repo, revision, kind, spec.get(f"{repo}@{revision}", lambda _p: True))
        assert found[f"{repo}@{revision}"] == want
    assert not (dest / ".bundler-models").exists()

    # the same cache huggingface_hub makes itself when it downloads from the Hub
    from huggingface_hub import snapshot_download
    own = tmp_path / "own"
    snapshot_download("team/tiny", revision="main", endpoint=hubs.hf.url, cache_dir=own)
    assert _layout(own / "models--team--tiny") == _layout(hf_home / "hub" / "models--team--tiny", only="main")

    again = offline(bundler_cmd("restore", str(models_bundle), "--models-only", "--dest", str(dest)),
                    capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


def _layout(folder: Path, only: str | None = None) -> dict:
    """Blobs, snapshot links and refs of a repository's cache folder (of one ref's snapshot, if ``only``)."""
    commit = (folder / "refs" / only).read_text() if only else None
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if relative.startswith("snapshots/") and commit and not relative.startswith(f"snapshots/{commit}"):
            continue
        if relative.startswith("refs/") and only and relative != f"refs/{only}":
            continue
        if relative.startswith(("blobs/", "refs/")) and path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink():
            found[relative] = os.readlink(path)
    if only:
        used = {v.rsplit("/", 1)[-1] for k, v in found.items() if k.startswith("snapshots/")}
        found = {k: v for k, v in found.items() if not k.startswith("blobs/") or k[len("blobs/"):] in used}
    return found


def test_a_damaged_model_member_places_nothing(models_bundle, hubs, tmp_path):
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(models_bundle.read_bytes())
    data[len(data) // 2] ^= 0x20
    damaged.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    result = subprocess.run(bundler_cmd("restore", str(damaged), "--models-only", "--dest", str(dest)),
                            capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert not (dest / "huggingface").exists() and not (dest / "modelscope").exists()
    assert not (dest / ".bundler-models").exists()


def test_a_rerun_repairs_model_files_damaged_on_disk(models_bundle, hubs, tmp_path, capsys):
    """A Hugging Face blob and a ModelScope file with one byte flipped (their sizes unchanged): the rerun
    hashes what it keeps, places the bundle's copies and says so; the run after has nothing to do."""
    dest = tmp_path / "dest"
    args = ["restore", str(models_bundle), "--models-only", "--dest", str(dest)]
    assert cli.main(args) == 0
    lfs = expected_files(hubs, "hf", "team/tiny", "main")["extra/weights.bin"]
    blob = dest / "huggingface" / "hub" / "models--team--tiny" / "blobs" / lfs
    csv = dest / "modelscope" / "datasets" / "team--ms-data" / "snapshots" / "master" / "part-1.csv"
    for path in (blob, csv):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to do" not in out, out
    assert f"models: repaired {blob} (its sha256 did not match)" in out, out
    assert f"models: repaired {csv} (its sha256 did not match)" in out, out
    assert sha256(blob.read_bytes()) == lfs and csv.read_bytes() == b"a,b\n1,1\n"
    snapshot = dest / "huggingface" / "hub" / "models--team--tiny" / "snapshots" / hubs.commits["tiny@main"]
    assert {str(p.relative_to(snapshot)): sha256(p.read_bytes()) for p in snapshot.rglob("*") if p.is_file()} == \
        expected_files(hubs, "hf", "team/tiny", "main")
    assert cli.main(args) == 0
    assert "nothing to do: everything in the bundle is already restored" in capsys.readouterr().out


def test_models_dir_refuses_two_revisions_in_one_folder(models_bundle, tmp_path, capsys):
    code = cli.main(["restore", str(models_bundle), "--models-only", "--models-dir", str(tmp_path / "plain")])
    assert code == 2
    assert "hf:team/tiny@v1.0 and hf:team/tiny@main would share" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()


PROOF_MODELS = """\
models:
  - hf: team/tiny
    revision: v1.0
  - hf: team/tiny-data
    repo_type: dataset
  - modelscope: team/tiny-ms
  - modelscope: team/ms-data
    repo_type: dataset
"""

READ_BOTH = READ_HF + """
from modelscope import snapshot_download as ms_snapshot_download
for repo, kind in (("team/tiny-ms", "model"), ("team/ms-data", "dataset")):
    folder = pathlib.Path(ms_snapshot_download(repo_id=repo, repo_type=kind, revision="master", local_files_only=True))
    found[f"ms:{repo}@master"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                                  for p in folder.rglob("*") if p.is_file()}
print(json.dumps(found))
"""


def test_the_bundles_own_hub_clients_read_the_models_in_a_restored_venv_offline(hubs, hub_clients_index, python310,
                                                                                 tmp_path, can_unshare):
    """The proof: huggingface_hub and modelscope, installed from the bundle's wheels into the restored
    venv, find every model under unshare --net, and every file's sha256 matches."""
    requirements = "python:\n  requirements: [huggingface_hub==2.4.0, modelscope==1.40.2]\n"
    profile = models_profile(tmp_path, [hubs.hf.url], [hubs.ms.url], PROOF_MODELS, requirements)
    profile.write_text(profile.read_text() + f"  pypi: [{hub_clients_index.url}]\n")
    bundle = tmp_path / "proof.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(bundle), "-q"], policy=FAST_RETRY) == 0
    dest = tmp_path / "dest"
    result = offline(bundler_cmd("restore", str(bundle), "--dest", str(dest), "--python", str(python310)),
                     capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELSCOPE_"))}
    env.update(HF_HOME=str(dest / "huggingface"), HF_HUB_OFFLINE="1", MODELSCOPE_CACHE=str(dest / "modelscope"))
    repos = [("team/tiny", "v1.0", "model"), ("team/tiny-data", "main", "dataset")]
    found = _snapshots(str(dest / "venv" / "bin" / "python"), env, READ_BOTH.replace("print(json.dumps(found))\n", "",
                                                                                      1) % repos)
    for repo, revision, kind in repos:
        assert found[f"{repo}@{revision}"] == expected_files(hubs, "hf", repo, revision, kind)
    assert found["ms:team/tiny-ms@master"] == expected_files(hubs, "ms", "team/tiny-ms", "master")
    assert found["ms:team/ms-data@master"] == expected_files(hubs, "ms", "team/ms-data", "master", "dataset")

    plain = tmp_path / "plain"
    result = offline(bundler_cmd("restore", str(bundle), "--models-only", "--models-dir", str(plain)),
                     capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tiny = {str(p.relative_to(plain / "team" / "tiny")): sha256(p.read_bytes())
            for p in (plain / "team" / "tiny").rglob("*") if p.is_file()}
    assert tiny == expected_files(hubs, "hf", "team/tiny", "v1.0")
    assert (plain / "datasets" / "team" / "ms-data" / "part-2.csv").read_bytes() == b"a,b\n2,4\n"


def test_an_interrupted_model_file_resumes_with_range_on_the_next_mirror(hubs, faulty, tmp_path):
    models = "models:\n  - hf: team/tiny\n    include: [extra/weights.bin]\n"
    profile = models_profile(tmp_path, [hubs.hf.url], [hubs.ms.url], models)
    lock = tmp_path / "tiny.lock"
    assert cli.main(["lock", str(profile), "-o", str(lock), "-q"], policy=FAST_RETRY) == 0
    cutting = faulty(hubs.hf.url, "truncate", follow_redirects=True)
    watching = faulty(hubs.hf.url, "ok", follow_redirects=True)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"huggingface: [{cutting.url}, {watching.url}]\n")
    out = tmp_path / "tiny.tar.zst"
    code = cli.main(["build", "--no-restorer", str(profile), "--lock", str(lock), "--mirrors", str(mirrors), "-o", str(out), "-q",
                     "--cache", str(tmp_path / "cache")], policy=FAST_RETRY)
    assert code == 0
    assert cutting.requests and any("weights.bin" in path for path, _ in watching.ranges), watching.ranges
    resumed_from = int(watching.ranges[0][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from < 300_000
    assert watching.bytes_sent == 300_000 - resumed_from      # the rest, not the whole file again
    head, _ = read_head(out)
    assert head["models"][0]["files"][0]["sha256"] == expected_files(hubs, "hf", "team/tiny", "main")[
        "extra/weights.bin"]


def test_mirrors_list_and_check_cover_the_hubs(hubs, tmp_path, capsys):
    dead = services.refusing_url()
    profile = models_profile(tmp_path, [dead, hubs.hf.url], [hubs.ms.url])
    assert cli.main(["mirrors", "list", "--profile", str(profile)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:3] for row in rows] == [["huggingface", "1", dead], ["huggingface", "2", hubs.hf.url],
                                         ["modelscope", "1", hubs.ms.url]]
    code = cli.main(["mirrors", "check", "--profile", str(profile), "--timeout", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "connection refused" in out and "ok, lists 6 files of hf:team/tiny@main" in out
    assert "ok, lists 3 files of ms:team/tiny-ms@master" in out
    assert "huggingface: 1 of 2 working" in out


def test_a_lock_with_other_models_is_refused_and_a_broken_one_is_located(locked, tmp_path, capsys):
    profile, lock, _ = locked
    other = tmp_path / "other.yaml"
    other.write_text(profile.read_text().replace("revision: v1.0", "revision: v2.0"))
    out = tmp_path / "x.tar.zst"
    assert cli.main(["build", "--no-restorer", str(other), "--lock", str(lock), "-o", str(out)]) == 2
    assert "the lock's models differ from the profile's (hf:team/tiny@v1.0, hf:team/tiny@v2.0)" in \
        capsys.readouterr().err
    broken = tmp_path / "broken.lock"
    text = lock.read_text()
    broken.write_text(text.replace("    sha256: ", "    sha256: x", 1))
    assert cli.main(["build", "--no-restorer", str(profile), "--lock", str(broken), "-o", str(out)]) == 2
    line = text[:text.index("    sha256: ")].count("\n") + 1
    err = capsys.readouterr().err
    assert f"{broken}:{line}: models[0].files[0]: sha256 'x" in err and "is not 64 lowercase hex digits" in err, err
    # a file pinned twice (an edited lock) is refused as the head's reader would refuse it, before any fetch
    start = text.index("  - path: ", text.index("  files:"))
    first = text[start:text.index("  - path: ", start + 1)]
    broken.write_text(text.replace(first, first + first, 1))
    assert cli.main(["build", "--no-restorer", str(profile), "--lock", str(broken), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "models[0].files[1]: file '.gitattributes' is listed twice" in err and not out.exists(), err


@pytest.mark.parametrize(("entry", "problem"), [
    ("  - hf: team/tiny\n    modelscope: team/tiny\n", "models[0]: takes exactly one of hf: ORG/NAME"),
    ("  - hf: tiny\n", "models[0].hf: 'tiny': expected ORG/NAME"),
    ("  - hf: team/tiny\n    revision: 1.0\n", "models[0].revision: 1.0 was read as a number"),
    ("  - hf: team/tiny\n    repo_type: space\n", "models[0].repo_type: 'space' is not one of model, dataset"),
    ("  - hf: team/tiny\n    include: []\n", "models[0].include: empty list"),
    ("  - hf: team/tiny\n  - hf: team/tiny\n    revision: main\n", "models[1]: hf:team/tiny@main is listed twice"),
    ("  - hf: team/tiny\n    revision: ../x\n", "models[0].revision: '../x'"),
])
def test_a_broken_models_section_names_the_file_and_line(tmp_path, capsys, entry, problem):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: p\ntarget: {{platform: linux/amd64}}\nmodels:\n{entry}")
    assert cli.main(["lock", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bundler: error: {profile}:") and problem in err, err


def test_build_fastest_orders_the_hubs_endpoints_too(hubs, tmp_path, capsys):
    dead = services.refusing_url()
    models = "models:\n  - hf: team/twin\n  - modelscope: team/ms-data\n    repo_type: dataset\n"
    profile = models_profile(tmp_path, [dead, hubs.hf.url], [dead, hubs.ms.url], models)
    out = tmp_path / "fast.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "--fastest", "-o", str(out)], policy=FAST_RETRY) == 0
    err = capsys.readouterr().err
    assert re.search(rf"fastest first: huggingface: {re.escape(hubs.hf.url)} \(\d+ ms\), {dead} \(no answer\)", err)
    assert re.search(rf"fastest first: modelscope: {re.escape(hubs.ms.url)} \(\d+ ms\), {dead} \(no answer\)", err)
    assert "connection refused" not in err       # the dead endpoints were never asked for a file


def test_the_sbom_lists_each_model_at_its_commit_with_its_files(models_bundle, capsys):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    assert cli.main(["sbom", str(models_bundle), "-q"]) == 0
    text = capsys.readouterr().out
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    head = read_head(models_bundle)[0]
    listed = [c for c in json.loads(text)["components"] if c["type"] in ("machine-learning-model", "data")]
    assert sorted((c["name"], c["version"]) for c in listed) == sorted((m["repo"], m["commit"] or m["revision"])
                                                                       for m in head["models"])
    model = head["models"][0]
    (first,) = [c for c in listed if (c["name"], c["version"]) == (model["repo"], model["commit"])]
    assert first["purl"] == f"pkg:huggingface/{model['repo']}@{model['commit']}"
    assert sorted((f["name"], f["hashes"][0]["content"]) for f in first["components"]) == sorted(
        (f["path"], f["sha256"]) for f in model["files"])


UNSAFE = "unsafe path (empty, '.' or '..' component)"
HOSTILE = [   # hub, the file forged, how its listing lies, what the refusal says after the repository
    pytest.param("hf", "model.safetensors", {"rfilename": "../../.bashrc"}, f"file '../../.bashrc': {UNSAFE}",
                 id="hf-lfs-path"),
    pytest.param("hf", "config.json", {"rfilename": "../../.bashrc"}, f"file '../../.bashrc': {UNSAFE}",
                 id="hf-small-path"),
    pytest.param("hf", "model.safetensors", {"lfs": {"sha256": "NOT-HEX"}},
                 "file 'model.safetensors': sha256 'NOT-HEX' is not 64 lowercase hex digits", id="hf-sha256"),
    pytest.param("hf", "config.json", {"size": 1.5}, "file 'config.json': size 1.5 is not a whole number of bytes",
                 id="hf-size"),
    pytest.param("hf", "config.json", {"blobId": "NOT-AN-OID"},
                 "file 'config.json': etag 'NOT-AN-OID' is neither a git blob id nor the file's sha256", id="hf-etag"),
    pytest.param("hf", "config.json", {}, "file 'config.json' is listed twice", id="hf-twice"),
    pytest.param("hf", "config.json", {"rfilename": "sub"}, "file 'sub' is both a file and a folder",
                 id="hf-file-and-folder"),
    pytest.param("ms", "model.safetensors", {"Path": "../../.bashrc"}, f"file '../../.bashrc': {UNSAFE}",
                 id="ms-path"),
    pytest.param("ms", "model.safetensors", {"Sha256": "NOT-HEX"},
                 "file 'model.safetensors': sha256 'NOT-HEX' is not 64 lowercase hex digits", id="ms-sha256"),
    pytest.param("ms", "config.json", {"Size": -1}, "file 'config.json': size -1 is not a whole number of bytes",
                 id="ms-size-negative"),
    pytest.param("ms", "config.json", {"Size": "12"}, "file 'config.json': size '12' is not a whole number of bytes",
                 id="ms-size-text"),
    pytest.param("ms", "config.json", {}, "file 'config.json' is listed twice", id="ms-twice"),
]


@pytest.mark.parametrize(("hub", "path", "changes", "problem"), HOSTILE)
def test_a_hostile_listing_is_refused_where_it_enters(hubs, tmp_path, capsys, hub, path, changes, problem):
    """A hub (or a mirror) that lists an unsafe path, a malformed digest or size, or a file twice: lock
    and build stop before they pin it (exit 3, the repository and the file named), and write nothing."""
    server = hubs.hf if hub == "hf" else hubs.ms
    name = f"hostile/{tmp_path.name.replace('_', '-')[-60:]}"
    repo = server.repo(name)
    repo.commit({"config.json": b'{"hidden_size": 8}', "model.safetensors": safetensors({"w": [1.0, 2.0]}),
                 "sub/notes.txt": b"notes\n"}, "main", "master")
    repo.forge(path, **changes)
    spec = f"{hub}:{name}@{'main' if hub == 'hf' else 'master'}"
    profile = models_profile(tmp_path, [hubs.hf.url], [hubs.ms.url],
                             f"models:\n  - {'hf' if hub == 'hf' else 'modelscope'}: {name}\n")
    lock, out = tmp_path / "hostile.lock", tmp_path / "hostile.tar.zst"
    for args in (["lock", str(profile), "-o", str(lock)], ["build", "--no-restorer", str(profile), "-o", str(out)]):
        assert cli.main([*args, "-q"], policy=FAST_RETRY) == 3, args
        err = capsys.readouterr().err
        assert f"{spec}: {problem}" in err and err.count("\n") == 1, err
    assert not lock.exists() and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["models.yaml"]


def test_a_mirror_that_lies_in_its_listing_is_passed_over_for_the_next_endpoint(hubs, tmp_path, capsys):
    liar = HuggingFaceHub()
    try:
        files = {"config.json": b"{}", "model.safetensors": safetensors({"w": [3.0]})}
        for server in (liar, hubs.hf):
            server.repo("hostile/mirrored").commit(files, "main")
        liar.repo("hostile/mirrored").forge("model.safetensors", rfilename="../model.safetensors")
        profile = models_profile(tmp_path, [liar.url, hubs.hf.url], [hubs.ms.url],
                                 "models:\n  - hf: hostile/mirrored\n")
        lock = tmp_path / "mirrored.lock"
        assert cli.main(["lock", str(profile), "-o", str(lock)], policy=FAST_RETRY) == 0
    finally:
        liar.stop()
    err = capsys.readouterr().err
    assert f"{liar.url}: hf:hostile/mirrored@main: file '../model.safetensors': {UNSAFE}" in err, err
    assert f"served by {hubs.hf.url}" in err
    assert sorted(f.path for f in read_lock(lock).models[0].files) == ["config.json", "model.safetensors"]


def test_diff_keeps_each_revision_apart_and_sees_files_change_under_one_revision(locked, models_bundle, hubs, tmp_path,
                                                                                 capsys):
    """Two revisions of one repository are two models; a ModelScope revision, which names no commit,
    whose files changed is a changed model."""
    _, lock, _ = locked
    assert cli.main(["diff", str(lock), str(models_bundle)]) == 0
    out = capsys.readouterr().out
    assert "models    0 changed, 0 added, 0 removed, 6 unchanged" in out, out
    repo = hubs.ms.repo("diffs/moving")
    repo.commit({"config.json": b'{"v": 1}'}, "master")
    profile = models_profile(tmp_path, [hubs.hf.url], [hubs.ms.url], "models:\n  - modelscope: diffs/moving\n")
    bundles = [tmp_path / "one.tar.zst", tmp_path / "two.tar.zst"]
    for number, bundle in enumerate(bundles):
        if number:
            repo.commit({"config.json": b'{"v": 2}'}, "master")
        assert cli.main(["build", "--no-restorer", str(profile), "-o", str(bundle), "-q"], policy=FAST_RETRY) == 0
    assert cli.main(["diff", *map(str, bundles)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "models    1 changed, 0 added, 0 removed, 0 unchanged" in out, out
    assert [line for line in out if line.startswith("  changed  ms:diffs/moving@master  master  sha256:")], out
    assert "files     1 added (8 B), 1 removed (8 B), 0 unchanged (0 B)" in out, out
