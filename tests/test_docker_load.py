"""Restore into docker, a ``docker load`` per layer chain (restore/images/dockerload.py), against the real
engine: every layer arrives as a nameless staging image while the bundle streams, the images are named
last, and no staging image outlives the restore, whether it succeeded or a member failed its digest."""

from __future__ import annotations

import json
import time

import pytest

from bundler import cli
from bundler.format.archive import read_head
from bundler.restore.images.dockerload import STAGING_LABEL
from testbed import bundles


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


def chains(head: dict) -> set[tuple[str, ...]]:
    return {tuple(i["layer_digests"][:n + 1]) for i in head["images"] for n in range(len(i["layer_digests"]))}


def test_each_layer_chain_loads_as_a_staging_image_and_only_the_images_remain(dockerd, built_bundle, head, capsys):
    before = every_image(dockerd)
    since = time.time()
    assert cli.main(["restore", str(built_bundle), "--images-only"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    events = image_events(dockerd, since)
    loaded = [e["id"] for e in events if e["Action"] == "load"]
    deleted = {e["id"] for e in events if e["Action"] == "delete"}
    ids = {i["id"] for i in head["images"]}
    staging = [i for i in loaded if i not in ids]
    assert len(staging) == len(chains(head)), f"one load per chain of layers: {events}"
    assert set(staging) <= deleted
    assert ids <= set(loaded)
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
    # the last layer in the bundle's order: the layers before it were loaded (as staging images) by then
    layers = {d for i in head["images"] for d in i["layer_digests"]}
    last = [m for m in head["members"] if m["path"].rsplit("/", 1)[-1] in {d.split(":")[1] for d in layers}][-1]
    last["sha256"] = "0" * 64
    forged = bundles.rewrite_head(built_bundle, tmp_path / "forged.tar.zst", head)
    before = every_image(dockerd)
    since = time.time()
    assert cli.main(["restore", str(forged), "--images-only"]) == 3
    err = capsys.readouterr().err
    assert f"member {last['path']}" in err and err.count("\n") == 1, err
    assert every_image(dockerd) == before
    assert staging_images(dockerd) == []
    events = image_events(dockerd, since)
    loaded = {e["id"] for e in events if e["Action"] == "load"}
    deleted = {e["id"] for e in events if e["Action"] == "delete"}
    assert loaded, "a layer before the damaged one was loaded while the bundle streamed"
    assert loaded <= deleted
    assert not loaded & {i["id"] for i in head["images"]}
