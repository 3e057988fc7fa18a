"""What an image destination already holds, for an inventory and for the restore of a delta.

- The docker engine holds layers unpacked, by chain: it reuses a layer when an image it has starts
  with the same diff_ids (``docker load`` then skips it; the engine's containerd image store does
  not, and needs every layer in the load). Its API gives a layer's bytes back only through ``docker
  save`` of an image that holds it, which exports that whole image; when the engine's own store is
  on this machine (overlay2 or vfs), the layer's tar is put together from it instead, as the engine
  itself does for ``docker save`` (its tar-split record and the layer's files): one layer read, not
  the whole image. Either way the bytes must hash to the diff_id (``DockerSite.export``).
- A registry holds blobs per repository: present ones are mounted across repositories, never sent.
- containerd holds content by digest: an import refers to content it has without sending it.

Every byte read back from a destination is checked against the diff_id it must have, as the
bundle's own members are, before anything is committed.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bundler import proc
from bundler.digest import Digest
from bundler.errors import DockerError, IntegrityError, NetworkError
from bundler.files import CHUNK, disk_error
from bundler.format.decode import Decoder
from bundler.format.inventory import SiteImage, SiteLayer
from bundler.format.media import IMAGE_CONFIGS, INDEX_TYPES
from bundler.oci.site import SiteRegistry

CTR_TIMEOUT = 120


def _config_diff_ids(raw: bytes, where: str) -> tuple[Digest, ...]:
    try:
        return tuple(Digest(d) for d in (json.loads(raw).get("rootfs") or {}).get("diff_ids") or [])
    except (ValueError, AttributeError, TypeError):
        raise IntegrityError(f"{where}: not an image config") from None


def _image(name: str, manifest_digest: str, manifest: dict, config: bytes, where: str) -> SiteImage | None:
    layers = manifest.get("layers") or []
    diff_ids = _config_diff_ids(config, where)
    if len(diff_ids) != len(layers):
        return None
    return SiteImage(name, Digest(manifest["config"]["digest"]), Digest(manifest_digest),
                     layers=tuple(SiteLayer(d, Digest(layer["digest"])) for d, layer in zip(diff_ids, layers)))


# ---- docker --------------------------------------------------------------------------------------

def docker_images(client: object) -> list[SiteImage]:
    import docker
    found = []
    try:
        for summary in client.api.images():
            data = client.api.inspect_image(summary["Id"])
            names = data.get("RepoTags") or data.get("RepoDigests") or [data["Id"]]
            layers = (data.get("RootFS") or {}).get("Layers") or []
            found.append(SiteImage(names[0], Digest(data["Id"]), None,
                                   layers=tuple(SiteLayer(Digest(d), None) for d in layers)))
    except docker.errors.APIError as exc:
        raise DockerError(f"listing the docker engine's images: {exc}") from None
    return found


class DockerSite:
    """The layers of a docker engine, as images that hold them (see the module's docstring)."""

    def __init__(self, client: object) -> None:
        self.client = client
        import docker
        self.images = docker_images(client)
        try:
            info = client.info()
        except docker.errors.APIError as exc:
            raise DockerError(f"the docker engine failed: {exc}") from None
        status = dict(tuple(pair) for pair in info.get("DriverStatus") or [] if len(pair) == 2)
        # The containerd image store loads every layer it is given and reuses none by chain.
        self.by_chain = "snapshotter" not in status.get("driver-type", "")
        self.driver, self.root = info.get("Driver", ""), Path(info.get("DockerRootDir") or "/nonexistent")

    def reuses(self, diff_ids: tuple[str, ...]) -> bool:
        """docker load skips the last of ``diff_ids`` (the layers below it included): the chain exists."""
        n = len(diff_ids)
        return self.by_chain and any(image.diff_ids[:n] == tuple(diff_ids) for image in self.images)

    def holder(self, diff_id: str) -> SiteImage | None:
        """The smallest image holding the layer: the cheapest to export."""
        holding = [i for i in self.images if diff_id in i.diff_ids]
        return min(holding, key=lambda i: len(i.layers)) if holding else None

    def export(self, sizes: dict[str, int], folder: Path) -> dict[str, Path]:
        """Each layer (diff_id -> its size), read out of the engine with ``docker save`` of an image that
        holds it, into ``folder/<hex>``, checked against its diff_id (whatever form the engine saves it in)."""
        wanted = set(sizes)
        found = {d: path for d in sorted(wanted) if (path := self._from_store(d, folder)) is not None}
        while wanted - set(found):
            image = self.holder(sorted(wanted - set(found))[0])
            if image is None:
                break
            found.update(self._save(image, {d: sizes[d] for d in wanted - set(found)}, folder))
            if not wanted & set(image.diff_ids) - set(found):
                continue
            missing = sorted(wanted & set(image.diff_ids) - set(found))[0]
            raise IntegrityError(f"docker save of {image.name} gave no file that unpacks to layer {missing}")
        return found

    def _from_store(self, diff_id: str, folder: Path) -> Path | None:
        """The layer from the engine's own store, when it is here and holds it; None otherwise."""
        image = self.holder(diff_id)
        if not self.by_chain or self.driver not in STORED or image is None:
            return None
        chain = image.diff_ids[:image.diff_ids.index(diff_id) + 1]
        target = folder / f"stored-{Digest(diff_id).hex}"
        try:
            with open(target, "wb") as out:
                found = stored_layer(self.root, self.driver, chain, emit=out.write)
        except (OSError, ValueError, KeyError, EOFError):
            found = None
        if found != diff_id:
            target.unlink(missing_ok=True)
            return None
        return target

    def _save(self, image: SiteImage, wanted: dict[str, int], folder: Path) -> dict[str, Path]:
        import docker
        found: dict[str, Path] = {}
        sizes = set(wanted.values())
        try:
            stream = _IterReader(self.client.api.get_image(image.id or image.name, chunk_size=CHUNK))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    if not info.isreg() or info.size < 1024:   # a layer is a tar: at least its end blocks
                        continue
                    source = tar.extractfile(info)
                    if info.size not in sizes and source.peek(4)[:2] not in (b"\x1f\x8b", b"\x28\xb5"):
                        continue   # not a layer wanted: the engine saves layers unpacked, or compressed
                    digest, path = _spool_layer(source, folder)
                    if digest in wanted and digest not in found:
                        found[digest] = path
                    else:
                        path.unlink()
        except docker.errors.APIError as exc:
            raise DockerError(f"docker save of {image.name}: {exc}") from None
        except tarfile.TarError as exc:
            raise DockerError(f"docker save of {image.name} gave an unreadable archive ({exc})") from None
        return found


STORED = {"overlay2": ("overlay2", "{}/diff"), "vfs": ("vfs", "dir/{}")}   # driver -> where a layer's files are


def stored_layer(root: Path, driver: str, diff_ids: Sequence[str], *, emit: Callable[[bytes], None]) -> str:
    """The tar of the last of ``diff_ids`` (the chain that ends with it) from a docker engine's store
    under ``root``: the tar-split record's raw headers, and each file's bytes from the layer's folder.
    Returns what the tar hashes to (the caller compares it with the diff_id)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    meta = root / "image" / driver / "layerdb" / "sha256" / Digest(chain).hex
    folder, pattern = STORED[driver]
    files = root / folder / pattern.format((meta / "cache-id").read_text().strip())
    hasher = hashlib.sha256()

    def out(data: bytes) -> None:
        hasher.update(data)
        emit(data)

    with gzip.open(meta / "tar-split.json.gz", "rt") as entries:
        for line in entries:
            entry = json.loads(line)
            if entry["type"] == SEGMENT:
                out(base64.b64decode(entry.get("payload") or ""))
            elif entry["type"] == FILE and entry.get("size"):
                name = entry.get("name") or base64.b64decode(entry["name_raw"]).decode("utf-8", "surrogateescape")
                if ".." in name.split("/"):
                    raise ValueError(f"{name}: not a name inside the layer")
                left = entry["size"]
                with open(files / name.lstrip("/"), "rb") as source:
                    while left and (chunk := source.read(min(left, CHUNK))):
                        out(chunk)
                        left -= len(chunk)
                if left:
                    raise ValueError(f"{name}: shorter than the layer's record")
    return "sha256:" + hasher.hexdigest()


FILE, SEGMENT = 1, 2     # tar-split's entry types


def _spool_layer(source: object, folder: Path) -> tuple[str, Path]:
    """A saved file into ``folder``, decoded when compressed; returns what its raw bytes hash to."""
    hasher = hashlib.sha256()
    path = folder / f"saved-{len(list(folder.iterdir()))}"
    try:
        with open(path, "wb") as out:
            def take(data: bytes) -> None:
                hasher.update(data)
                out.write(data)
            decoder = Decoder(take)
            while chunk := source.read(CHUNK):
                decoder.feed(chunk)
            decoder.finish()
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise disk_error(exc, f"writing {path}") from None
    except Exception:
        path.unlink(missing_ok=True)
        raise
    target = folder / hasher.hexdigest()
    path.replace(target)
    return "sha256:" + hasher.hexdigest(), target


class _IterReader:
    """An iterator of bytes read as a file (tarfile's stream mode reads through it)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


# ---- a registry ----------------------------------------------------------------------------------

def registry_images(site: SiteRegistry, repositories: Sequence[str] = ()) -> list[SiteImage]:
    """Every tagged image of the registry: its catalog (or only ``repositories``), each repository's
    tags, each manifest (every platform of an index) and its config."""
    found = []
    if not repositories:
        try:
            repositories = site.catalog()
        except NetworkError as exc:
            if not re.search(r"HTTP (401|403|404)\b", str(exc)):
                raise
            raise NetworkError(f"{exc}: the registry does not list its repositories to this user (Harbor shows its "
                               "catalog to admins only); name them with --repository REPO, once for each") from None
    for repository in repositories:
        for tag in site.tags(repository):
            digest, raw, media_type = site.manifest(repository, tag)
            data = json.loads(raw)
            listed = [(m["digest"], None) for m in data.get("manifests") or []] if media_type in INDEX_TYPES \
                else [(digest, data)]
            for manifest_digest, manifest in listed:
                if manifest is None:
                    manifest = json.loads(site.manifest(repository, manifest_digest)[1])
                config_digest = (manifest.get("config") or {}).get("digest")
                if not config_digest or (manifest.get("config") or {}).get("mediaType") not in IMAGE_CONFIGS:
                    continue   # an artifact (a pushed bundle's, a model's), not an image
                config = site.blob_bytes(repository, config_digest)
                image = _image(f"{site.host}/{repository}:{tag}", manifest_digest, manifest, config,
                               f"{site.host}/{repository}:{tag}")
                if image is not None:
                    found.append(image)
    return found


# ---- containerd ----------------------------------------------------------------------------------

def ctr_run(base: list[str], args: list[str], what: str) -> str:
    result = proc.run([*base, *args], what, CTR_TIMEOUT)
    if result.returncode:
        raise DockerError(f"{what}: {result.stderr.strip()[:300]}")
    return result.stdout


def containerd_content(base: list[str]) -> set[str]:
    """Every digest containerd's content store holds."""
    lines = ctr_run(base, ["content", "ls", "-q"], "listing containerd's content").split()
    return {line for line in lines if line.startswith("sha256:")}


def containerd_images(base: list[str]) -> list[SiteImage]:
    found = []
    content = containerd_content(base)
    for line in ctr_run(base, ["images", "ls"], "listing containerd's images").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 3 or parts[2] not in content:
            continue
        name, digest = parts[0], parts[2]
        data = json.loads(_ctr_get(base, digest))
        listed = [m["digest"] for m in data.get("manifests") or []] if "manifests" in data else [digest]
        for manifest_digest in listed:
            if manifest_digest not in content:
                continue   # a platform that was not imported
            manifest = json.loads(_ctr_get(base, manifest_digest)) if manifest_digest != digest else data
            config = manifest.get("config", {}).get("digest")
            if config in content:
                image = _image(name, manifest_digest, manifest, _ctr_get(base, config), f"containerd {name}")
                if image is not None:
                    found.append(image)
    return found


def _ctr_get(base: list[str], digest: str) -> bytes:
    """A manifest or config (JSON) from containerd's content store."""
    return ctr_run(base, ["content", "get", digest], f"reading {digest[:19]}.. from containerd").encode()


def ctr_export(base: list[str], digest: str, path: Path) -> None:
    """One blob of containerd's content store into ``path`` (the caller checks it)."""
    what = f"reading {digest[:19]}.. from containerd"
    try:
        with open(path, "wb") as out:
            done = proc.run([*base, "content", "get", digest], what, CTR_TIMEOUT * 10, stdout=out)
    except OSError as exc:
        raise disk_error(exc, f"writing {path}") from None
    if done.returncode:
        raise DockerError(f"{what}: {done.stderr.strip()[:300]}")


# ---- the images kind's inventory -------------------------------------------------------------------

