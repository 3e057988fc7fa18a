"""Images: pulled with no docker engine through misbehaving mirrors, written as one layout that
docker, skopeo and containerd accept."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler.build.cache import Cache
from bundler.build.images.layers import LayerFrames
from bundler.build.images.layout import layout as layout_members
from bundler.build.images.layout import write_layout
from bundler.build.images.pull import Registries, fetch_images, lock_images
from bundler.build.mirrors import Mirrors
from bundler.build.options import FetchStats
from bundler.build.pack import DEFAULT_LEVEL
from bundler.build.profile import ImageSpec
from bundler.errors import DockerError, ImageReferenceError, InputError, IntegrityError, NetworkError
from bundler.net.endpoints import OFFICIAL, Endpoint, Fallback
from bundler.oci.reference import ImageRef, Platform
from testbed import services
from testbed.policy import FAST_RETRY

AMD64 = Platform.parse("linux/amd64")


def spec(ref: str, source: str = "registry") -> ImageSpec:
    return ImageSpec(ref, ImageRef.parse(ref), source)


def registries_for(host: str, *urls: str, docker_config: Path | None = None) -> Registries:
    mirrors = Mirrors({host: tuple(Endpoint(u, "test") for u in urls)})
    return Registries(mirrors, Fallback(FAST_RETRY, sleep=lambda s: None), docker_config)


def pull(refs: list[str], registries: Registries, cache: Cache, platform: Platform = AMD64,
         stats: FetchStats | None = None, docker=None):
    locked = lock_images([spec(r) if isinstance(r, str) else r for r in refs], [platform], registries, docker)
    return locked, fetch_images(locked, registries, LayerFrames(cache, DEFAULT_LEVEL), jobs=3, stats=stats,
                                docker=docker)


def check_members(members) -> None:
    for member in members:
        with member.open() as source:
            data = source.read()
        assert len(data) == member.size, member.path
        assert hashlib.sha256(data).hexdigest() == member.sha256, member.path


def tar_dir(source: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return dest


def test_pull_through_refusing_flipping_404_and_good_endpoints(registry, pushed, faulty, tmp_path, dockerd):
    endpoints = [services.refusing_url(), faulty(registry.url, "flip").url, faulty(registry.url, "404").url,
                 registry.url]
    registries = registries_for(registry.host, *endpoints)
    cache = Cache(tmp_path / "cache")
    locked, images = pull([pushed["app"], pushed["multi"]], registries, cache)
    assert locked[0].digest.startswith("sha256:") and locked[1].index_digest
    members = layout_members(images, LayerFrames(cache, DEFAULT_LEVEL))[0]
    check_members(members)

    layout = tmp_path / "layout"
    write_layout(members, layout)
    images_dir = layout / "images"
    # skopeo reads the OCI side
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{images_dir}:1.0"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Architecture"] == "amd64"
    # docker reads manifest.json, and the image runs with no network
    manifest = json.loads((images_dir / "manifest.json").read_text())
    tags = sorted(tag for entry in manifest for tag in entry["RepoTags"])
    assert tags == sorted([pushed["app"], pushed["multi"]])
    load = dockerd.docker("load", "-i", str(tar_dir(images_dir, tmp_path / "images.tar")))
    assert b"Loaded image" in load.stdout
    out = dockerd.docker("run", "--rm", "--network", "none", pushed["multi"]).stdout
    assert out == b"amd64\n"
    out = dockerd.docker("run", "--rm", "--network", "none", pushed["app"]).stdout
    assert out == b"hello from bundler test image one\n"


def test_layers_are_kept_as_zstd_frames_of_the_uncompressed_tar(registry, pushed, tmp_path):
    import zstandard

    from bundler.build.images.layers import frame_key
    cache = Cache(tmp_path / "cache")
    _, (image,) = pull([pushed["app-oci"]], registries_for(registry.host, registry.url), cache)
    config = json.loads(cache.read_bytes(image.config))
    assert [layer.diff_id for layer in image.layers] == config["rootfs"]["diff_ids"]
    for layer in image.layers:
        frame = cache.frame_path(frame_key(DEFAULT_LEVEL), layer.diff_id)
        raw = zstandard.ZstdDecompressor().stream_reader(frame.read_bytes()).read()
        assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == layer.diff_id and len(raw) == layer.size
        with tarfile.open(fileobj=__import__("io").BytesIO(raw)) as tar:  # the layer's own tar, gunzipped
            assert tar.getmembers()
        assert not cache.has(layer.diff_id)   # no second, whole copy


def test_two_images_sharing_a_base_store_it_once(registry, pushed, tmp_path):
    cache = Cache(tmp_path / "cache")
    stats = FetchStats()
    _, images = pull([pushed["app"], pushed["app2"]], registries_for(registry.host, registry.url), cache,
                     stats=stats)
    assert stats.wanted == 6 and stats.cached == 0 and stats.downloaded == 4
    members = layout_members(images, LayerFrames(cache, DEFAULT_LEVEL))[0]
    layer_ids = {layer.diff_id for image in images for layer in image.layers}
    assert len(layer_ids) == 4
    blob_members = [m for m in members if "/blobs/" in m.path]
    assert len(blob_members) == 4 + 2 + 2  # layers, configs, manifests
    # the same images again come from the cache without a byte downloaded
    again = FetchStats()
    pull([pushed["app"], pushed["app2"]], registries_for(registry.host, registry.url), cache, stats=again)
    assert again.cached == 6 and again.downloaded == 0 and again.bytes_downloaded == 0


def test_interrupted_pull_resumes_with_range(registry, pushed, faulty, tmp_path):
    cache = Cache(tmp_path / "cache")
    locked = lock_images([spec(pushed["app"])], [AMD64], registries_for(registry.host, registry.url))
    cut = faulty(registry.url, "truncate", min_size=10_000)  # layers are cut, manifest and config pass
    with pytest.raises(NetworkError, match=r"fetching layer sha256:[0-9a-f]{12}\.\. of .*IncompleteRead"):
        fetch_images(locked, registries_for(registry.host, cut.url), LayerFrames(cache, DEFAULT_LEVEL), 4)
    partials = list((cache.root / "partial").iterdir())
    assert partials, "the interrupted download left nothing to resume"
    left = sum(p.stat().st_size for p in partials)

    good = faulty(registry.url, "ok")
    stats = FetchStats()
    (image,) = fetch_images(locked, registries_for(registry.host, good.url), LayerFrames(cache, DEFAULT_LEVEL), 4,
                            stats=stats)
    assert stats.bytes_resumed == left
    assert good.ranges and all(r.startswith("bytes=") and r != "bytes=0-" for _, r in good.ranges)
    check_members(layout_members([image], LayerFrames(cache, DEFAULT_LEVEL))[0])
    assert not list((cache.root / "partial").iterdir())


def test_lying_manifest_falls_back_and_the_pin_is_the_true_digest(registry, pushed, faulty, tmp_path):
    cache = Cache(tmp_path / "cache")
    lying = faulty(registry.url, "flip")
    honest, _ = pull([pushed["app"]], registries_for(registry.host, registry.url), Cache(tmp_path / "c2"))
    (locked, ), _ = pull([pushed["app"]], registries_for(registry.host, lying.url, registry.url), cache)
    assert locked.digest == honest[0].digest
    # only the lying endpoint: an integrity failure naming the endpoint and both digests
    with pytest.raises(IntegrityError, match=rf"{lying.url}: manifest is sha256:[0-9a-f]{{12}}\.\., not the "
                                             rf"{locked.digest[:19]}\.\. asked for"):
        pull([f"{registry.host}/team/app@{locked.digest}"], registries_for(registry.host, lying.url),
             Cache(tmp_path / "c3"))


def test_multi_platform_index_resolves_to_the_target(registry, pushed, tmp_path):
    cache = Cache(tmp_path / "cache")
    (locked,), (image,) = pull([pushed["multi"]], registries_for(registry.host, registry.url), cache,
                               platform=Platform.parse("linux/arm64"))
    assert locked.platform == "linux/arm64"
    assert json.loads(cache.read_bytes(image.config))["architecture"] == "arm64"
    with pytest.raises(ImageReferenceError, match=r"no image for linux/s390x \(the index has: linux/amd64, "
                                                  r"linux/arm64/v8\)"):
        pull([pushed["multi"]], registries_for(registry.host, registry.url), cache,
             platform=Platform.parse("linux/s390x"))
    with pytest.raises(ImageReferenceError, match="the image is for linux/amd64, the profile targets linux/arm64"):
        pull([pushed["app"]], registries_for(registry.host, registry.url), cache,
             platform=Platform.parse("linux/arm64"))


def test_missing_tag_is_bad_input_naming_each_endpoint(registry, pushed, tmp_path):
    with pytest.raises(InputError, match=f"resolving {registry.host}/team/app:nope: not found on any endpoint: "
                                         f"{registry.url}: HTTP 404"):
        pull([f"{registry.host}/team/app:nope"], registries_for(registry.host, registry.url), Cache(tmp_path))


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    path = tmp_path / "docker-config.json"
    path.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    return path


def test_bearer_token_flow(registry_factory, sample_layout, tmp_path):
    tokens = services.TokenServer(tmp_path / "token", users={"alice": "s3cret"})
    try:
        secured = registry_factory(auth=tokens.registry_auth())
        sample_layout.push("app", f"{secured.host}/team/app:1.0", creds="alice:s3cret")
        config = docker_config(tmp_path, secured.host, "alice", "s3cret")
        registries = registries_for(secured.host, OFFICIAL, docker_config=config)
        _, (image,) = pull([f"{secured.host}/team/app:1.0"], registries, Cache(tmp_path / "cache"))
        assert len(image.layers) == 3
        assert any("scope=repository%3Ateam%2Fapp%3Apull" in r for r in tokens.requests)
        with pytest.raises(NetworkError, match=r"token server 127\.0\.0\.1:[0-9]+ refused anonymous access"):
            pull([f"{secured.host}/team/app:1.0"], registries_for(secured.host, OFFICIAL, docker_config=tmp_path / "none"),
                 Cache(tmp_path / "cache2"))
    finally:
        tokens.stop()


def test_basic_auth_from_docker_config(registry_factory, sample_layout, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(services.htpasswd_line("bob", "hunter2") + "\n")
    secured = registry_factory(auth={"htpasswd": {"realm": "test", "path": str(htpasswd)}})
    sample_layout.push("app", f"{secured.host}/team/app:1.0", creds="bob:hunter2")
    config = docker_config(tmp_path, f"http://{secured.host}", "bob", "hunter2")
    _, (image,) = pull([f"{secured.host}/team/app:1.0"],
                       registries_for(secured.host, OFFICIAL, docker_config=config), Cache(tmp_path / "cache"))
    assert image.layers
    with pytest.raises(NetworkError, match="asks for a login"):
        pull([f"{secured.host}/team/app:1.0"], registries_for(secured.host, OFFICIAL, docker_config=tmp_path / "x"),
             Cache(tmp_path / "cache2"))


def credential_helper(folder: Path, name: str, store: dict[str, tuple[str, str]]) -> Path:
    """A real ``docker-credential-NAME`` program speaking docker's helper protocol, holding ``store``
    (server -> user, secret); it records each server it was asked about in ``NAME.asked``."""
    folder.mkdir(exist_ok=True)
    program = folder / f"docker-credential-{name}"
    table = {server: {"ServerURL": server, "Username": user, "Secret": secret} for server, (user, secret) in store.items()}
    program.write_text(f"""#!/usr/bin/env python3
import json, sys
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read().strip()
with open({str(folder / (name + ".asked"))!r}, "a") as asked:
    asked.write(server + "\\n")
table = {table!r}
if server not in table:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps(table[server]))
""")
    program.chmod(0o755)
    return folder / f"{name}.asked"


def test_credentials_from_docker_credential_helpers(registry_factory, sample_layout, tmp_path, monkeypatch):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(services.htpasswd_line("dana", "from-the-keychain") + "\n")
    secured = registry_factory(auth={"htpasswd": {"realm": "test", "path": str(htpasswd)}})
    sample_layout.push("app", f"{secured.host}/team/app:1.0", creds="dana:from-the-keychain")
    helpers = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{helpers}:{os.environ['PATH']}")
    ref = f"{secured.host}/team/app:1.0"

    def pull_with(config: dict) -> object:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        cache = Cache(tmp_path / f"cache-{len(list(tmp_path.glob('cache-*')))}")
        return pull([ref], registries_for(secured.host, OFFICIAL, docker_config=path), cache)[1][0]

    # credHelpers names the helper for this registry, ahead of a wrong password in auths
    asked = credential_helper(helpers, "team-vault", {secured.host: ("dana", "from-the-keychain")})
    wrong = base64.b64encode(b"dana:stale").decode()
    assert pull_with({"credHelpers": {secured.host: "team-vault"}, "auths": {secured.host: {"auth": wrong}}}).layers
    assert asked.read_text().split() == [secured.host]
    # credsStore holds every login; auths only lists the servers, as docker login leaves it
    credential_helper(helpers, "desktop", {f"http://{secured.host}": ("dana", "from-the-keychain")})
    assert pull_with({"credsStore": "desktop", "auths": {f"http://{secured.host}": {}}}).layers
    # a store without this server: auths still answers
    credential_helper(helpers, "empty", {})
    good = base64.b64encode(b"dana:from-the-keychain").decode()
    assert pull_with({"credsStore": "empty", "auths": {secured.host: {"auth": good}}}).layers
    # a helper that is not installed is named, with the file and key
    with pytest.raises(InputError, match=r"config.json: credHelpers\.127\.0\.0\.1:\d+ names "
                                         r"docker-credential-missing, which is not on PATH"):
        pull_with({"credHelpers": {secured.host: "missing"}})
    with pytest.raises(InputError, match=r"config.json: credHelpers is not a JSON object"):
        pull_with({"credHelpers": ["team-vault"]})


def test_image_from_the_local_docker_engine(dockerd, registry, pushed, tmp_path, monkeypatch):
    import docker
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    dockerd.docker("pull", pushed["app"])
    dockerd.docker("rm", "-f", "bundler-commit", check=False)
    dockerd.docker("run", "--name", "bundler-commit", "--network", "none", pushed["app"],
                   "sh", "-c", "echo built locally > /etc/bundler-test.txt")
    dockerd.docker("commit", "--change", 'CMD ["cat", "/etc/bundler-test.txt"]', "bundler-commit", "myteam/train:dev")
    dockerd.docker("rm", "bundler-commit")
    cache = Cache(tmp_path / "cache")
    client = docker.DockerClient(base_url=dockerd.host)
    locked, (image,) = pull([spec("myteam/train:dev", "docker")], registries_for(registry.host, registry.url), cache,
                            docker=lambda: client)
    assert locked[0].source == "docker" and locked[0].digest == client.images.get("myteam/train:dev").id
    assert len(image.layers) == 4
    members = layout_members([image], LayerFrames(cache, DEFAULT_LEVEL))[0]
    check_members(members)
    write_layout(members, tmp_path / "out")
    dockerd.docker("rmi", "myteam/train:dev")
    dockerd.docker("load", "-i", str(tar_dir(tmp_path / "out" / "images", tmp_path / "t.tar")))
    assert dockerd.docker("run", "--rm", "--network", "none", "myteam/train:dev").stdout == b"built locally\n"
    with pytest.raises(ImageReferenceError, match="no such image in the local docker engine"):
        pull([spec("myteam/absent:1", "docker")], registries_for(registry.host, registry.url), cache,
             docker=lambda: client)


def test_no_docker_engine_is_a_clear_error(monkeypatch, tmp_path, registry):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(DockerError, match="no docker engine at unix://"):
        pull([spec("myteam/train:dev", "docker")], registries_for(registry.host, registry.url), Cache(tmp_path))


def test_a_mirror_with_honest_manifests_and_damaged_layers_falls_back(registry, pushed, faulty, tmp_path):
    # manifests and configs (under 4 KiB here) pass untouched; every layer has one byte flipped, so
    # its gzip stream fails to decode (or its digest to match) midway: the next endpoint serves it
    damaging = faulty(registry.url, "flip", min_size=4096)
    notes: list[str] = []
    mirrors = Mirrors({registry.host: (Endpoint(damaging.url, "test"), Endpoint(registry.url, "test"))})
    registries = Registries(mirrors, Fallback(FAST_RETRY, sleep=lambda s: None, note=notes.append))
    cache = Cache(tmp_path / "cache")
    _, (image,) = pull([pushed["app"]], registries, cache)
    assert any("/blobs/" in path for path in damaging.requests), "no layer went through the damaging endpoint"
    assert notes and all(damaging.url in note for note in notes), notes
    check_members(layout_members([image], LayerFrames(cache, DEFAULT_LEVEL))[0])
    assert not list((cache.root / "partial").iterdir())
    # alone, it is an integrity error naming the layer and the endpoint, never a decoder's exception: a
    # layer decoded as it arrives fails its gzip, one that waited for the compressor (decoded only
    # once its digest matched) fails its digest
    with pytest.raises(IntegrityError, match=rf"fetching layer sha256:[0-9a-f]{{12}}\.\. of .*{damaging.url}: "
                                             r"(the layer is not valid gzip|layer sha256:\w+\.\. arrived as)"):
        pull([pushed["app"]], registries_for(registry.host, damaging.url), Cache(tmp_path / "c2"))
