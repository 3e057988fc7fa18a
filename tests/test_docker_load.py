"""Restore into docker, a stream per layer chain (restore/images/dockerload.py), against the real engine:
every layer arrives as a nameless staging image while the bundle streams (a bottom layer by ``docker
import``, the others by ``docker load``), the images are named last, and no staging image outlives the
restore, whether it succeeded or a member failed its digest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bundler import cli
from bundler.format.archive import read_head
from bundler.restore.images.dockerload import STAGING_LABEL
from conftest import write_profile
from testbed import bundles
from testbed import images as tb_images


@pytest.fixture
def head(dockerd, built_bundle, monkeypatch):
    """The bundle's head; none of its images in the engine, and restores talk to the test bed's engine."""
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    head, _ = read_head(built_bundle)
    for image in head["images"]:
        dockerd.docker("rmi", "-f", image["id"], check=False)
    return head


def every_image(dockerd) -> set[str]:
    return set(dockerd.docker("images", "-aq", "--no-trunc").stdout.decode().split())


def staging_images(dockerd) -> list[str]:
    return dockerd.docker("images", "-aq", "--no-trunc", "--filter", f"label={STAGING_LABEL}").stdout.decode().split()


def image_events(dockerd, since: float) -> list[dict]:
    out = dockerd.docker("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 1:.3f}",
                         "--filter", "type=image", "--format", "{{json .}}").stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def stored_layers(dockerd) -> set[str]:
    """The layer folders of the engine's storage driver: a layer the engine registered and kept is one."""
    folder = dockerd.root / "data" / dockerd.storage_driver
    folder = folder / "dir" if dockerd.storage_driver == "vfs" else folder
    return {p.name for p in folder.iterdir() if p.name != "l"}


def forged(built_bundle, head: dict, folder, pick) -> tuple[Path, dict]:
    """The bundle with bundle.json's sha256 of one layer member wrong: ``pick`` of the layers (the image's
    first layer is first), in the order the bundle holds them."""
    layers = {d.split(":")[1]: n for i in head["images"] for n, d in enumerate(i["layer_digests"])}
    held = [m for m in head["members"] if m["path"].rsplit("/", 1)[-1] in layers]   # the bundle's order
    member = pick(held, lambda m: layers[m["path"].rsplit("/", 1)[-1]] == 0)
    member["sha256"] = "0" * 64
    return bundles.rewrite_head(built_bundle, folder / "forged.tar.zst", head), member


def chains(head: dict) -> set[tuple[str, ...]]:
    return {tuple(i["layer_digests"][:n + 1]) for i in head["images"] for n in range(len(i["layer_digests"]))}


def test_each_layer_chain_loads_as_a_staging_image_and_only_the_images_remain(dockerd, built_bundle, head, capsys):
    before = every_image(dockerd)
    since = time.time()
    assert cli.main(["restore", str(built_bundle), "--images-only"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    events = image_events(dockerd, since)
    made = [e for e in events if e["Action"] in ("load", "import")]
    staging = [e for e in made if e["Actor"]["Attributes"].get(STAGING_LABEL)]
    deleted = {e["id"] for e in events if e["Action"] == "delete"}
    ids = {i["id"] for i in head["images"]}
    assert len(staging) == len(chains(head)), f"one stream per chain of layers: {events}"
    bottoms = {c for c in chains(head) if len(c) == 1}
    assert sorted(e["Action"] for e in staging) == sorted(["import"] * len(bottoms) + ["load"] * (len(staging) -
                                                                                             len(bottoms)))
    assert {e["id"] for e in staging} <= deleted
    assert ids <= {e["id"] for e in made if e["Action"] == "load"}
    assert every_image(dockerd) == before | ids
    assert staging_images(dockerd) == []
    for image in head["images"]:
        assert f"loaded {image['tags'][0]}" in out
        inspected = json.loads(dockerd.docker("image", "inspect", image["tags"][0]).stdout)[0]
        assert inspected["Id"] == image["id"]
        assert inspected["RootFS"]["Layers"] == image["layer_digests"]
    app = next(i for i in head["images"] if "/team/app:" in i["tags"][0])
    run = dockerd.docker("run", "--rm", "--network", "none", app["tags"][0])
    assert run.stdout == b"hello from bundler test image one\n"


def test_a_late_layer_that_fails_its_digest_names_nothing_and_leaves_no_staging_image(dockerd, built_bundle, head,
                                                                                        tmp_path, capsys):
    # the last layer in the bundle's order: the layers before it were registered (as staging images) by then
    bundle, member = forged(built_bundle, head, tmp_path, lambda members, _: members[-1])
    before, layers = every_image(dockerd), stored_layers(dockerd)
    since = time.time()
    assert cli.main(["restore", str(bundle), "--images-only"]) == 3
    err = capsys.readouterr().err
    assert f"member {member['path']}" in err and err.count("\n") == 1, err
    assert every_image(dockerd) == before
    assert staging_images(dockerd) == []
    assert stored_layers(dockerd) == layers
    events = image_events(dockerd, since)
    made = {e["id"] for e in events if e["Action"] in ("load", "import")}
    deleted = {e["id"] for e in events if e["Action"] == "delete"}
    assert made, "a layer before the damaged one was registered while the bundle streamed"
    assert made <= deleted
    assert not made & {i["id"] for i in head["images"]}


def test_a_bottom_layer_that_fails_its_digest_is_never_committed_by_its_import(dockerd, built_bundle, head, tmp_path,
                                                                               capsys):
    # the engine registers a bottom layer while it streams in: its last piece waits for the digest's verdict
    bundle, member = forged(built_bundle, head, tmp_path, lambda members, bottom: next(filter(bottom, members)))
    before, layers = every_image(dockerd), stored_layers(dockerd)
    since = time.time()
    assert cli.main(["restore", str(bundle), "--images-only"]) == 3
    err = capsys.readouterr().err
    assert f"member {member['path']}" in err and err.count("\n") == 1, err
    events = image_events(dockerd, since)
    assert [e for e in events if e["Action"] in ("import", "load", "tag")] == []
    assert every_image(dockerd) == before
    assert stored_layers(dockerd) == layers


def test_a_layer_under_two_parents_and_twice_in_one_image_reaches_every_chain(dockerd, registry, tmp_path,
                                                                              monkeypatch, capsys):
    # one blob in the bundle, three chains that end in it: its bytes go to each chain's stream at once
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    same = tb_images.layer_tar({"etc/same.txt": "the same layer\n"})
    layout = tb_images.Layout(tmp_path / "layout")
    layout.add("twice", [tb_images.ImageSpec([tb_images.layer_tar({"a.txt": "a\n"}), same,
                                              tb_images.layer_tar({"b.txt": "b\n"}), same])])
    layout.add("other", [tb_images.ImageSpec([tb_images.layer_tar({"c.txt": "c\n"}), same])])
    refs = [f"{registry.host}/team/twice:1.0", f"{registry.host}/team/other:1.0"]
    layout.push("twice", refs[0], docker_format=True)
    layout.push("other", refs[1], docker_format=True)
    profile = write_profile(tmp_path, registry.host, refs, "http://127.0.0.1:9/simple", [], name="chains")
    bundle = tmp_path / "chains.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(bundle), "-q"]) == 0
    head, _ = read_head(bundle)
    assert len({d for i in head["images"] for d in i["layer_digests"]}) == 4
    before = every_image(dockerd)
    since = time.time()
    assert cli.main(["restore", str(bundle), "--images-only"]) == 0, capsys.readouterr().err
    staging = [e for e in image_events(dockerd, since)
               if e["Action"] in ("load", "import") and e["Actor"]["Attributes"].get(STAGING_LABEL)]
    assert len(staging) == len(chains(head)) == 6
    for image in head["images"]:
        inspected = json.loads(dockerd.docker("image", "inspect", image["tags"][0]).stdout)[0]
        assert inspected["Id"] == image["id"]
        assert inspected["RootFS"]["Layers"] == image["layer_digests"]
    assert every_image(dockerd) == before | {i["id"] for i in head["images"]}
    assert staging_images(dockerd) == []
