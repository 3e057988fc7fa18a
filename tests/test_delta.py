"""Update bundles: a delta carries only what the site lacks, and restores to what the full bundle gives.

The site is real: the session's docker engine (images of this module only), a venv, a distribution
registry, containerd. v1 is one image (busybox, a layer of real files, a marker) and alpha; v2
rebuilds the image with 2 % of its files changed (a patch), adds an image sharing its base, and
adds two requirements (native, winhelper).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from bundler import cli
from bundler.format.archive import iter_members, load_head
from bundler.format.delta import patch_path
from conftest import DELTA_SEED as SEED
from conftest import bundler_cmd, offline, write_profile


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_delta_carries_only_what_its_base_lacks(delta_bundles, delta_updates, capsys):
    full, delta, v1 = load_head(delta_bundles["v2"]), load_head(delta_bundles["d2"]), load_head(delta_bundles["v1"])
    assert delta.format == 2 and delta.delta is not None
    assert [b.name for b in delta.delta.bases] == ["v1.tar.zst"] and delta.delta.bases[0].kind == "bundle"
    # the same entries as the full bundle: every image, wheel and pin
    assert [i.to_json(2) for i in delta.images] == [i.to_json(2) for i in full.images]
    assert [w.to_json(2) for w in delta.wheels] == [w.to_json(2) for w in full.wheels] and delta.lock == full.lock
    carried = {m.path for m in delta.members}
    wheels = {w.filename.split("-")[0] for w in delta.wheels if f"wheels/{w.filename}" in carried}
    assert wheels == {"native", "winhelper"}      # alpha and beta are the site's
    assert {w.sha256 for w in delta.wheels if w.name in ("alpha", "beta")} == set(delta.delta.wheels)
    app2 = next(i for i in delta.images if i.tags[0].endswith("app:2"))
    busybox, data_v2, marker = app2.layer_digests
    assert busybox in delta.delta.layers and f"images/blobs/sha256/{busybox.hex}" not in carried
    [patch] = delta.delta.patches
    assert patch.layer == data_v2 and patch.base == v1.images[0].layer_digests[1]
    assert patch_path(data_v2) in carried and f"images/blobs/sha256/{data_v2.hex}" not in carried
    assert delta.member(patch_path(data_v2)).size < patch.size / 10
    assert f"images/blobs/sha256/{marker.hex}" in carried
    images = [sum(m.size for m in h.members if m.path.startswith("images/")) for h in (delta, full)]
    assert images[0] < images[1] / 10
    code, out, _ = run(capsys, "inspect", str(delta_bundles["d2"]))
    assert code == 0 and "delta     against v1.tar.zst (bundle" in out and "needs from the site: " in out
    assert "rebuilt from the site's" in out
    assert run(capsys, "verify", str(delta_bundles["d2"]))[0] == 0
    code, out, _ = run(capsys, "diff", str(delta_bundles["v1"]), str(delta_bundles["d2"]))
    assert code == 0 and "(2 images, 4 wheels; a delta against v1.tar.zst)" in out, out


def test_docker_and_venv_take_the_delta_offline_as_the_full_bundle(delta_bundles, delta_updates, dockerd, python310, tmp_path,
                                                                    can_unshare):
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    full, delta = load_head(delta_bundles["v2"]), load_head(delta_bundles["d2"])
    for image in full.images + load_head(delta_bundles["v1"]).images:
        dockerd.docker("rmi", "-f", image.id, check=False)
    dest = tmp_path / "site"
    first = offline(bundler_cmd("restore", str(delta_bundles["v1"]), "--dest", str(dest), "--python", str(python310)),
                    capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    result = offline(bundler_cmd("restore", str(delta_bundles["d2"]), "--dest", str(dest), "--python", str(python310)),
                     capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    for image in delta.images:
        tag = image.tags[0]
        found = json.loads(dockerd.docker("image", "inspect", tag).stdout)[0]
        assert found["Id"] == image.id and found["RootFS"]["Layers"] == list(image.layer_digests)
        which = "v2" if tag.endswith("app:2") else "extra"
        assert dockerd.docker("run", "--rm", "--network", "none", tag).stdout == f"{SEED} {which}\n".encode()
    venv = dest / "venv" / "bin" / "python"
    imported = subprocess.run([str(venv), "-c", "import alpha, native, winhelper; print(native.VERSION)"],
                              capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout == "1.0\n", imported.stderr
    # the full bundle gives the same venv
    whole = offline(bundler_cmd("restore", str(delta_bundles["v2"]), "--wheels-only", "--dest", str(tmp_path / "whole"),
                                "--python", str(python310)), capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr
    freeze = [subprocess.run([str(d / "venv" / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                             text=True, env={**env, "PIP_CONFIG_FILE": os.devnull}).stdout for d in (dest, tmp_path / "whole")]
    assert freeze[0] == freeze[1] and "native==1.0" in freeze[0]
    # an inventory of this site says what the delta needed
    inventory = tmp_path / "site.json"
    listed = subprocess.run(bundler_cmd("inventory", "--docker", "--dest", str(tmp_path), "-o", str(inventory)),
                            capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(inventory.read_text())
    layers = {layer["diff_id"] for image in data["images"] for layer in image["layers"]}
    assert set(delta.delta.layers) <= layers and delta.delta.patches[0].layer in layers
    assert {w.sha256 for w in delta.wheels} <= {w["sha256"] for w in data["wheels"]}
    assert all(set(image) == {"name", "id", "manifest", "layers"} for image in data["images"])


def test_a_delta_built_from_an_inventory_matches_one_built_from_the_bundle(delta_bundles, delta_updates, dockerd, tmp_path,
                                                                            capsys, monkeypatch):
    """The site after v1: its docker engine and its DEST, as `bundler inventory` reads them."""
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    v1 = load_head(delta_bundles["v1"])
    for image in v1.images + load_head(delta_bundles["v2"]).images:
        dockerd.docker("rmi", "-f", image.id, check=False)
    dest = tmp_path / "site"
    assert run(capsys, "restore", str(delta_bundles["v1"]), "--dest", str(dest), "--images-only")[0] == 0
    (dest / "wheels").mkdir(parents=True)
    for member in iter_members(delta_bundles["v1"], v1):
        if member.name.startswith("wheels/"):
            (dest / member.name).write_bytes(member.read())
    inventory = tmp_path / "site.json"
    assert run(capsys, "inventory", "--docker", "--dest", str(dest), "-o", str(inventory))[0] == 0
    out = tmp_path / "d2.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(delta_updates["v2"]), "--since", str(inventory), "-o", str(out))
    assert code == 0, err
    head, expected = load_head(out), load_head(delta_bundles["d2"])
    assert head.delta.bases[0].kind == "inventory"
    assert {m.path for m in head.members} == {m.path for m in expected.members}
    assert head.delta.patches == expected.delta.patches


def test_a_delta_into_a_site_without_its_base_fails_cleanly(delta_bundles, registry_factory, dockerd, tmp_path, capsys,
                                                            monkeypatch):
    site = registry_factory()
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--images-only", "--registry", site.host)
    assert code == 1 and err.count("\n") == 1, err
    assert "layer sha256:" in err and "needed by " in err and f"is not on {site.host}" in err
    assert "restore that first, or give it with --base" in err
    assert requests.get(f"{site.url}/v2/_catalog", timeout=10).json()["repositories"] == []
    # docker: an engine that never saw v1
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    for image in load_head(delta_bundles["v2"]).images + load_head(delta_bundles["v1"]).images:
        dockerd.docker("rmi", "-f", image.id, check=False)
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--images-only")
    assert code == 1 and "is not in the docker engine" in err and "needed by " in err, err
    for image in load_head(delta_bundles["d2"]).images:
        assert dockerd.docker("image", "inspect", image.id, check=False).returncode != 0


def test_a_registry_takes_the_delta_from_its_own_blobs_or_from_a_base_bundle(delta_bundles, registry_factory, dockerd,
                                                                             capsys):
    site = registry_factory()
    assert run(capsys, "restore", str(delta_bundles["v1"]), "--images-only", "--registry", site.host)[0] == 0
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--images-only", "--registry", site.host)
    assert code == 0, err
    other = registry_factory()     # a registry that never saw v1: the layers come from the bundle given
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--images-only", "--registry", other.host, "--base",
                       str(delta_bundles["v1"]))
    assert code == 0, err
    for host in (site.host, other.host):
        for image in load_head(delta_bundles["d2"]).images:
            name = f"{host}/{image.name.split('/', 1)[1]}"
            dockerd.docker("pull", name)
            which = "v2" if name.endswith("app:2") else "extra"
            assert dockerd.docker("run", "--rm", "--network", "none", name).stdout == f"{SEED} {which}\n".encode()
            dockerd.docker("rmi", name)
    inventory = json.loads(run(capsys, "inventory", "--registry", site.host)[1])
    assert {i["name"] for i in inventory["images"]} >= {f"{site.host}/delta/app:1", f"{site.host}/delta/app:2"}
    assert all(layer["blob"] for i in inventory["images"] for layer in i["layers"])
    named = json.loads(run(capsys, "inventory", "--registry", site.host, "--repository", "delta/app")[1])
    assert {i["name"] for i in named["images"]} == {f"{site.host}/delta/app:1", f"{site.host}/delta/app:2"}


def test_a_registry_that_keeps_its_catalog_to_admins_is_told_to_name_repositories(registry, faulty, capsys):
    closed = faulty(registry.url, "404", payload_only=False)   # as Harbor answers a catalog request of a non-admin
    host = closed.url.removeprefix("http://")
    code, _, err = run(capsys, "inventory", "--registry", host)
    assert code == 1 and "listing repositories: HTTP 404" in err and "--repository REPO" in err, err
    code, _, err = run(capsys, "inventory", "--repository", "delta/app")
    assert code == 2 and "give --registry HOST too" in err, err


def test_containerd_takes_the_delta_from_its_content(delta_bundles, containerd, capsys):
    where = ["--containerd", "--address", containerd.address, "--namespace", "bundler-delta"]
    assert run(capsys, "restore", str(delta_bundles["v1"]), "--images-only", *where)[0] == 0
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--images-only", *where)
    assert code == 0, err
    for image in load_head(delta_bundles["d2"]).images:
        name = image.annotations["io.containerd.image.name"]
        checked = containerd.ctr("images", "check", f"name=={name}", namespace="bundler-delta").stdout
        assert "complete" in checked, checked
    code, out, err = run(capsys, "inventory", *where)
    assert code == 0, err
    inventory = json.loads(out)
    layers = {layer["diff_id"] for i in inventory["images"] for layer in i["layers"]}
    assert set(load_head(delta_bundles["d2"]).images[0].layer_digests) <= layers


def test_a_wheel_altered_on_disk_is_named_and_nothing_is_installed(delta_bundles, python310, tmp_path, capsys):
    dest = tmp_path / "site"
    assert run(capsys, "restore", str(delta_bundles["v1"]), "--wheels-only", "--dest", str(dest), "--python",
               str(python310))[0] == 0
    alpha = next((dest / "wheels").glob("alpha-*.whl"))
    alpha.write_bytes(alpha.read_bytes() + b"\0")
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--wheels-only", "--dest", str(dest), "--python",
                       str(python310))
    assert code == 3 and err.count("\n") == 1, err    # damage the delta cannot repair: it does not carry alpha
    assert "wheel sha256:" in err and "requirement alpha==1.0" in err and "altered on disk" in err
    assert not list((dest / "wheels").glob("native-*"))
    probe = subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import native"], capture_output=True)
    assert probe.returncode != 0
    # the bundle it was made against gives the good copy back
    code, _, err = run(capsys, "restore", str(delta_bundles["d2"]), "--wheels-only", "--dest", str(dest), "--python",
                       str(python310), "--base", str(delta_bundles["v1"]))
    assert code == 0, err


def test_a_delta_against_a_delta(delta_bundles, delta_updates, index, python310, tmp_path, capsys):
    """The site after v1 and the delta to v2: a delta against the delta carries only what v3 adds."""
    folder = delta_updates["folder"]
    v3 = write_profile(folder, delta_updates["refs"]["1"].split("/")[0], [delta_updates["refs"]["2"], delta_updates["refs"]["extra"]],
                       index.url, ["alpha==1.0", "native==1.0", "winhelper==1.0", "sdistonly==1.0"], name="delta-v3")
    d3 = tmp_path / "d3.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(v3), "--since", str(delta_bundles["d2"]), "-o", str(d3), "-q")[0] == 0
    head = load_head(d3)
    assert {m.path.split("/")[0] for m in head.members} <= {"images", "wheels", "requirements.lock", "sbom.cdx.json"}
    assert [m.path for m in head.members if m.path.startswith("wheels/")] == \
        [f"wheels/{w.filename}" for w in head.wheels if w.name == "sdistonly"]
    assert not [m for m in head.members if "/blobs/" in m.path and m.size > 100_000]
    dest = tmp_path / "site"
    for bundle in (delta_bundles["v1"], delta_bundles["d2"], d3):
        code, _, err = run(capsys, "restore", str(bundle), "--wheels-only", "--dest", str(dest), "--python",
                           str(python310))
        assert code == 0, err
    probe = subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import sdistonly, native"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_inventory_help_says_it_holds_digests_and_names_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["inventory", "--help"])
    assert "digests and names only" in capsys.readouterr().out


def test_a_bad_base_is_refused_before_anything_is_fetched(delta_updates, tmp_path, capsys):
    bad = tmp_path / "site.json"
    bad.write_text(json.dumps({"inventory": 1, "tool": "x", "sources": [], "images": [{"name": 3}], "wheels": [],
                               "models": []}))
    code, _, err = run(capsys, "build", "--no-restorer", str(delta_updates["v2"]), "--since", str(bad), "-o", str(tmp_path / "x.tar.zst"))
    assert code == 2 and "inventory: images[0].name: expected a string" in err, err
    bad.write_text("not json")
    code, _, err = run(capsys, "build", "--no-restorer", str(delta_updates["v2"]), "--since", str(bad), "-o", str(tmp_path / "x.tar.zst"))
    assert code == 2 and "neither a bundle nor an inventory" in err, err
    assert not (tmp_path / "x.tar.zst").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_models_take_what_the_sites_caches_hold(hubs, tmp_path, capsys):
    """v1: team/tiny at v1.0; v2 adds its main revision and a ModelScope model with the same weights:
    the delta carries neither the weights nor anything else v1 placed."""
    def profile(name: str, models: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ntarget:\n  platform: linux/amd64\nmodels:\n{models}mirrors:\n"
                        f"  huggingface: [{hubs.hf.url}]\n  modelscope: [{hubs.ms.url}]\n")
        return path
    v1 = profile("m1", "  - hf: team/tiny\n    revision: v1.0\n")
    v2 = profile("m2", "  - hf: team/tiny\n    revision: v1.0\n  - hf: team/tiny\n  - modelscope: team/tiny-ms\n")
    b1, d2 = tmp_path / "m1.tar.zst", tmp_path / "d2.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(v1), "-o", str(b1), "-q")[0] == 0
    code, _, err = run(capsys, "build", "--no-restorer", str(v2), "--since", str(b1), "-o", str(d2), "-q")
    assert code == 0, err
    head = load_head(d2)
    weights = hashlib.sha256(hubs.weights).hexdigest()
    assert weights in head.delta.models and f"models/blobs/sha256/{weights}" not in {m.path for m in head.members}
    code, out, _ = run(capsys, "build", "--no-restorer", str(v2), "--since", str(b1), "-o", str(d2), "--dry-run", "--json")
    planned = json.loads(out)["kinds"][0]["pieces"]
    assert {p["held"] for p in planned if p["name"].endswith("model.safetensors")} == {True}
    assert {p["held"] for p in planned} == {True, False}   # main's files that v1.0 lacks are carried
    dest = tmp_path / "site"
    code, _, err = run(capsys, "restore", str(d2), "--models-only", "--dest", str(dest))
    assert code == 1 and "model file sha256:" in err and "hf:team/tiny@" in err, err
    assert run(capsys, "restore", str(b1), "--models-only", "--dest", str(dest))[0] == 0
    # the site's weights with a byte flipped: damage the delta cannot repair, since it does not carry them
    blob = dest / "huggingface" / "hub" / "models--team--tiny" / "blobs" / weights
    blob.write_bytes(hubs.weights[:-1] + bytes([hubs.weights[-1] ^ 1]))
    code, _, err = run(capsys, "restore", str(d2), "--models-only", "--dest", str(dest))
    assert code == 3 and f"{blob} is there, but its sha256 is " in err and "altered on disk" in err, err
    for bundle in (b1, d2):    # the bundle that carries them repairs the site; then the delta restores
        code, _, err = run(capsys, "restore", str(bundle), "--models-only", "--dest", str(dest))
        assert code == 0, err
    placed = dest / "modelscope" / "models" / "team--tiny-ms" / "snapshots" / "master" / "model.safetensors"
    assert placed.read_bytes() == hubs.weights
    listed = json.loads(run(capsys, "inventory", "--dest", str(dest))[1])
    assert weights in listed["models"] and listed["images"] == []


def test_a_delta_takes_equal_sized_model_files_from_the_site(hubs, tmp_path, capsys):
    """The site's ModelScope dataset holds three CSV files of 8 bytes each; v2 adds a Hugging Face dataset
    with the same three: the delta carries none of them, and each is found by its own sha256."""
    parts = {f"part-{n}.csv": f"a,b\n{n},{n * n}\n".encode() for n in range(3)}
    assert len({len(data) for data in parts.values()}) == 1 and len(set(parts.values())) == 3
    hubs.hf.repo("team/csv-copy", "dataset").commit(parts, "main")

    def profile(name: str, models: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ntarget:\n  platform: linux/amd64\nmodels:\n{models}mirrors:\n"
                        f"  huggingface: [{hubs.hf.url}]\n  modelscope: [{hubs.ms.url}]\n")
        return path
    site = "  - modelscope: team/ms-data\n    repo_type: dataset\n"
    v1 = profile("e1", site)
    v2 = profile("e2", site + "  - hf: team/csv-copy\n    repo_type: dataset\n")
    b1, d2 = tmp_path / "e1.tar.zst", tmp_path / "d2.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(v1), "-o", str(b1), "-q")[0] == 0
    assert run(capsys, "build", "--no-restorer", str(v2), "--since", str(b1), "-o", str(d2), "-q")[0] == 0
    assert not [m for m in load_head(d2).members if m.path.startswith("models/")]
    dest = tmp_path / "site"
    for bundle in (b1, d2):
        code, _, err = run(capsys, "restore", str(bundle), "--models-only", "--dest", str(dest))
        assert code == 0, err
    snapshot = dest / "huggingface" / "hub" / "datasets--team--csv-copy" / "snapshots"
    (commit,) = snapshot.iterdir()
    assert {p.name: p.read_bytes() for p in commit.iterdir()} == parts


def test_exact_images_are_carried_whole_when_rebuilt_and_keep_their_digests(delta_updates, registry_factory,
                                                                            dockerd, tmp_path, capsys):
    b1, d2 = tmp_path / "v1.tar.zst", tmp_path / "d2.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(delta_updates["v1"]), "--exact-images", "-o", str(b1), "-q")[0] == 0
    code, _, err = run(capsys, "build", "--no-restorer", str(delta_updates["v2"]), "--exact-images", "--since", str(b1), "-o", str(d2))
    assert code == 0, err
    head = load_head(d2)
    assert not head.delta.patches and head.delta.layers      # a registry's gzip cannot be rebuilt byte for byte
    site = registry_factory()
    for bundle in (b1, d2):
        code, _, err = run(capsys, "restore", str(bundle), "--images-only", "--registry", site.host)
        assert code == 0, err
    for image in head.images:
        repository, tag = image.name.split("/", 1)[1].split(":")
        served = requests.head(f"{site.url}/v2/{repository}/manifests/{tag}", timeout=10, headers={
            "Accept": image.manifest_media_type})
        assert served.headers["Docker-Content-Digest"] == image.digest


def test_docker_gives_a_layer_back_from_its_store_or_through_docker_save(delta_bundles, dockerd, tmp_path,
                                                                          monkeypatch):
    """Both ways out of the engine give the layer's exact bytes: its own store (tar-split and the
    layer's files) when it is on this machine, and docker save of an image holding it."""
    import docker

    from bundler.restore.images.site import DockerSite
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    v1 = load_head(delta_bundles["v1"])
    dockerd.docker("rmi", "-f", v1.images[0].id, check=False)
    assert cli.main(["restore", str(delta_bundles["v1"]), "--images-only", "-q"]) == 0
    layer, size = v1.images[0].layer_digests[1], v1.images[0].layer_sizes[1]
    site = DockerSite(docker.from_env())
    assert site.driver in ("overlay2", "vfs")
    for way in ("store", "save"):
        folder = tmp_path / way
        folder.mkdir()
        if way == "save":
            site.driver = "elsewhere"
        found = site.export({layer: size}, folder)
        assert hashlib.sha256(found[layer].read_bytes()).hexdigest() == layer.hex
        assert [p.name for p in folder.iterdir()] == [found[layer].name]


def test_a_deltas_sbom_tells_what_the_site_holds_after_it_and_how_each_piece_gets_there(delta_bundles, capsys):
    """Trust work's rule for deltas: the SBOM describes the site after the restore, and marks what the
    delta itself carries (in the bundle, as a patch) and what it takes from the site."""
    assert cli.main(["sbom", str(delta_bundles["d2"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert cli.main(["sbom", str(delta_bundles["v2"])]) == 0
    full = json.loads(capsys.readouterr().out)

    def flat(node):
        for component in node.get("components", []):
            yield component
            yield from flat(component)

    def delivery(component):
        return next((p["value"] for p in component.get("properties", []) if p["name"] == "bundler:delivery"), None)

    names = sorted(c.get("purl") or c["name"] for c in flat(data))
    assert names == sorted(c.get("purl") or c["name"] for c in flat(full))   # the same site, whole
    assert all(delivery(c) is None for c in flat(full))                      # a full bundle carries it all
    delta = load_head(delta_bundles["d2"])
    wheels = {c["name"]: delivery(c) for c in flat(data) if (c.get("purl") or "").startswith("pkg:pypi/")
              and c["type"] == "library" and c["name"] in {w.name for w in delta.wheels}}
    assert wheels["alpha"] == wheels["beta"] == "on the site"
    assert wheels["native"] == wheels["winhelper"] == "in the bundle"
    layers = [delivery(c) for c in flat(data) if c["name"].startswith("layer ")]
    assert {"on the site", "as a patch", "in the bundle"} <= set(layers)


def test_a_dry_run_of_a_delta_says_what_the_site_holds_and_leaves_it_out_of_the_size(delta_bundles, delta_updates,
                                                                                      tmp_path, capsys):
    args = ["build", "--no-restorer", str(delta_updates["v2"]), "--since", str(delta_bundles["v1"]),
            "-o", str(tmp_path / "d.tar.zst"), "--dry-run"]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    planned = json.loads(out)
    kinds = {k["kind"]: k for k in planned["kinds"]}
    delta = load_head(delta_bundles["d2"])
    held = {p["name"].split(" ")[0] for p in kinds["wheels"]["pieces"] if p["held"]}
    assert held == {"alpha", "beta"}                       # what v1 carried; native and winhelper are new
    layers = kinds["images"]["pieces"]   # named by their registry blobs: five, of which v1 carried two
    assert len(layers) == 5 and [p["held"] for p in layers].count(True) == 2    # busybox and the extra's data
    assert {p["name"].rsplit(" of ", 1)[1] for p in layers if p["held"]} == {delta_updates["refs"]["extra"],
                                                                              delta_updates["refs"]["2"]}
    assert planned["delta"] is True and planned["held_bytes"] == sum(
        p["size"] for k in kinds.values() for p in k["pieces"] if p["held"])
    carried = sum(m.size for m in delta.members if m.path.startswith(("wheels/", "images/blobs/")))
    assert planned["bundle_bytes"] < sum(p["size"] for k in kinds.values() for p in k["pieces"])
    assert carried <= planned["bundle_bytes"] * 3    # layers count as their gzip download; the rebuilt one whole
    code, out, _ = run(capsys, *args)
    assert code == 0 and "; 2 the site holds (" in out and "(a delta: " in out, out


def test_inventory_with_no_flags_lists_what_it_reaches_and_says_once_what_it_cannot(built_bundle, tmp_path):
    """The README's first update step on a site without docker: the engine is noted, not an error,
    and the wheels of the restore in ./ are listed; asked for by --docker, the engine is an error."""
    site = tmp_path / "site"
    restored = subprocess.run(bundler_cmd("restore", str(built_bundle), "--wheels-only", "--dest", str(site / "testbed"),
                                          "--index-dir", str(tmp_path / "index")), capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    deaf = socket.socket(socket.AF_UNIX)       # a docker socket nobody listens on: connections are refused
    deaf.bind(str(tmp_path / "nobody.sock"))
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'nobody.sock'}"}
    listed = subprocess.run(bundler_cmd("inventory", "-o", "site.json"), cwd=site, env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    data = json.loads((site / "site.json").read_text())
    assert {w["sha256"] for w in data["wheels"]} == {w.sha256 for w in load_head(built_bundle).wheels}
    assert data["images"] == [] and not any("docker" in source for source in data["sources"])
    told = [line for line in listed.stderr.splitlines() if "docker" in line]
    assert len(told) == 1 and f"unix://{tmp_path / 'nobody.sock'}" in told[0], listed.stderr
    asked = subprocess.run(bundler_cmd("inventory", "--docker", "-o", "again.json"), cwd=site, env=env,
                           capture_output=True, text=True)
    assert asked.returncode == 1 and "no docker engine at" in asked.stderr, asked.stderr
    assert asked.stderr.count("\n") == 1 and not (site / "again.json").exists()
    deaf.close()


def test_inventory_reads_the_model_folders_restore_was_given(hubs, tmp_path, capsys):
    """Models restored with --hf-home, --modelscope-cache or --models-dir are listed by inventory given
    the same flags, and a delta against that inventory carries none of their files again."""
    profile = tmp_path / "m.yaml"
    profile.write_text(f"name: m\ntarget:\n  platform: linux/amd64\nmodels:\n  - hf: team/twin\n  - hf: team/tiny-data\n"
                       "    repo_type: dataset\n  - modelscope: team/tiny-ms\n  - modelscope: team/ms-data\n"
                       f"    repo_type: dataset\nmirrors:\n  huggingface: [{hubs.hf.url}]\n"
                       f"  modelscope: [{hubs.ms.url}]\n")
    bundle = tmp_path / "m.tar.zst"
    assert run(capsys, "build", "--no-restorer", str(profile), "-o", str(bundle), "-q")[0] == 0
    models = load_head(bundle).models
    every = {f.sha256 for m in models for f in m.files}
    hf_files = {f.sha256 for m in models if m.hub == "huggingface" for f in m.files}
    hf_home, ms_cache, plain = tmp_path / "hf-home", tmp_path / "ms-cache", tmp_path / "plain"
    for where in (["--hf-home", str(hf_home), "--modelscope-cache", str(ms_cache)], ["--models-dir", str(plain)]):
        code, _, err = run(capsys, "restore", str(bundle), "--models-only", "--dest", str(tmp_path / "dest"), *where)
        assert code == 0, err
    only_hf = json.loads(run(capsys, "inventory", "--hf-home", str(hf_home))[1])
    assert set(only_hf["models"]) == hf_files and only_hf["sources"] == [f"models {hf_home}"]
    code, _, err = run(capsys, "inventory", "--models-dir", str(tmp_path / "nowhere"))
    assert code == 2 and f"--models-dir {tmp_path / 'nowhere'}: no such folder" in err, err
    for number, where in enumerate((["--hf-home", str(hf_home), "--modelscope-cache", str(ms_cache)],
                                    ["--models-dir", str(plain)])):
        inventory, delta = tmp_path / f"site-{number}.json", tmp_path / f"d-{number}.tar.zst"
        code, _, err = run(capsys, "inventory", *where, "-o", str(inventory))
        assert code == 0, err
        assert set(json.loads(inventory.read_text())["models"]) == every
        code, _, err = run(capsys, "build", "--no-restorer", str(profile), "--since", str(inventory), "-o", str(delta),
                           "-q")
        assert code == 0, err
        head = load_head(delta)
        assert set(head.delta.models) == every and not [m for m in head.members if m.path.startswith("models/")]
