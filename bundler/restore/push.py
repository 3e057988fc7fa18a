"""``bundler push BUNDLE HOST[:PORT]/REPO[:TAG]``: a whole bundle into the site's registry.

The bundle is verified first, member by member (with ``--trust``, its signature before that); a
damaged one is refused with exit 3 and nothing is sent. Then every member goes up once, laid out as
format/site.py says: the images under their own names (their unpacked layers gzip-compressed on the
way, so that the registry keeps a third of their size, docker pulls them as it pulls any image, and
stock copying tools keep their digests), the models as ModelPack artifacts, the rest in one
artifact, and at REPO:TAG the index that refers to all of it. Manifests go up last: a registry shows
nothing of a bundle whose blobs did not all arrive.

What the registry holds is never sent again: a blob by its digest, a layer by its diff_id wherever
a bundle pushed earlier put it (any tag of REPO, or the tags the images go to). A delta pushes the
same way; what it does not carry must already be in that registry (the bundle it was made against,
pushed there first), or the push stops before sending anything, naming what is missing. A layer a
delta carries as a patch is rebuilt here against the site's copy of the layer it was made from,
checked against its diff_id, and pushed whole: every image in the registry is complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bundler.context import Context
from bundler.digest import Digest
from bundler.errors import InputError, IntegrityError, OperationalError
from bundler.files import CHUNK, file_chunks
from bundler.format.archive import MemberReader, iter_members
from bundler.format.decode import Decoder, gzip_module
from bundler.format.head import Head
from bundler.format.images import ImageEntry, IndexEntry
from bundler.format.media import IMAGE_CONFIGS, INDEX_TYPES, MANIFEST_TYPES, OCI_MANIFEST
from bundler.format.patch import apply_patch
from bundler.format.paths import HEAD, LAYOUT_DIR, MODELS_DIR, blob_path, layout_path
from bundler.format.site import (
    EMPTY,
    GZIP_LAYER,
    HEAD_MEDIA,
    SIGNATURE_MEDIA,
    Blob,
    Child,
    artifact_manifest,
    bundle_index,
    json_bytes,
    member_media_type,
    model_config,
    model_manifest,
)
from bundler.format.trust import CheckedHead, TrustFile, open_bundle, split_frame
from bundler.net.http import iter_body
from bundler.oci.reference import ImageRef, Platform
from bundler.oci.site import SiteRegistry
from bundler.progress import waiting

DEFAULT_TAG = "latest"
GZIP_LEVEL = 1                      # the fastest level (isal's, where installed; zlib's otherwise)
MAX_LAYOUT_FILE = 16 << 20          # manifests, configs, indexes: kilobytes
SCRATCH = ".bundler-push-"
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


@dataclass(frozen=True)
class Target:
    """Where a bundle goes: ``HOST[:PORT]/REPO[:TAG]``."""

    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Target:
        host, _, rest = text.partition("/")
        if not host or not rest or ("." not in host and ":" not in host and host != "localhost"):
            raise InputError(f"{text!r}: name the registry and the repository, HOST[:PORT]/REPO[:TAG]")
        repository, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", DEFAULT_TAG)
        if not _REPOSITORY.match(repository):
            raise InputError(f"{text!r}: {repository!r} is not a repository name (lowercase letters, digits, "
                             "'.', '_', '-', '/')")
        if not _TAG.match(tag):
            raise InputError(f"{text!r}: {tag!r} is not a tag")
        return cls(host, repository, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


@dataclass
class PushOptions:
    plain_http: bool = False               # a registry that speaks HTTP, not HTTPS
    trust: TrustFile | None = None         # only bundles signed by a key it lists
    docker_config: Path | None = None      # where the logins are (default: docker's own config)


@dataclass
class PushReport:
    reference: str                         # HOST/REPO:TAG
    digest: Digest                         # of the index at REPO:TAG: pin it as REPO@DIGEST
    notes: list[str] = field(default_factory=list)
    blobs_sent: int = 0
    bytes_sent: int = 0
    blobs_held: int = 0                    # already on the registry, not sent again


@dataclass(frozen=True)
class LayerAt:
    """A layer as the registry holds it: the repository, the blob and its media type."""

    repository: str
    digest: Digest
    size: int
    media_type: str


def push(path: Path, target: Target, options: PushOptions, ctx: Context | None = None) -> PushReport:
    ctx = ctx or Context()
    return push_verified(path, verify_bundle(path, options.trust, ctx), target, options=options, ctx=ctx)


def verify_bundle(path: Path, trust: TrustFile | None, ctx: Context) -> CheckedHead:
    """The bundle's head once every member was read and matched it (exit 3 on damage): what a push
    needs before it sends anything."""
    checked = open_bundle(path, trust)
    with ctx.progress.bar(f"verifying {path.name}", checked.head.member_bytes) as bar:
        for member in iter_members(path, checked.head, checked.head_sha256):
            member.finish()
            bar.update(member.size)
    return checked


def push_verified(path: Path, checked: CheckedHead, target: Target, *, options: PushOptions,
                  ctx: Context) -> PushReport:
    """``push`` of a bundle ``verify_bundle`` checked (every member is checked again as it goes up)."""
    head = checked.head
    site = SiteRegistry(target.host, ctx.policy, plain_http=options.plain_http, docker_config=options.docker_config)
    armored = split_frame(checked.front.signature, str(path))[0] if checked.front.signature else None
    return _Push(head, target, site, ctx).run(path, checked.head_sha256, checked.front.head, armored)


class _Push:
    def __init__(self, head: Head, target: Target, site: SiteRegistry, ctx: Context) -> None:
        self.head, self.target, self.site, self.ctx = head, target, site, ctx
        self.repo = target.repository
        self.report = PushReport(str(target), Digest.of(b""))
        self.layout: dict[str, bytes] = {}         # the image layout's small files, by member path
        self.layers: dict[str, LayerAt] = {}       # diff_id -> where the registry holds the layer
        self.unpacked = {d for i in head.images if not i.exact for d in i.layer_digests}
        # the image layout's small files: its own, and every manifest, index and config it holds
        self.small = {m.path for m in head.members if m.path.startswith(f"{LAYOUT_DIR}/")
                      and not m.path.startswith((f"{LAYOUT_DIR}/blobs/", f"{LAYOUT_DIR}/patches/"))}
        self.small |= {layout_path(blob_path(d)) for d in [
            *(d for i in head.images for d in (i.manifest, i.id)), *(i.digest for i in head.indexes),
            *(d for i in head.indexes for a in i.attachments for d in (a.digest, *(b.digest for b in a.blobs)))]}
        self.in_repo: dict[str, set[str]] = {}     # blob digest -> repositories known to hold it

    # -- the run --
    def run(self, path: Path, head_sha256: str, head_bytes: bytes, armored: bytes | None) -> PushReport:
        head = self.head
        with waiting(self.ctx.progress, f"reading what {self.site.host} holds"):
            self._read_site()
        self._check_delta()
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH, dir=path.parent))
        try:
            with self.ctx.progress.bar(f"pushing to {self.site.host}", head.member_bytes) as bar:
                for member in iter_members(path, head, head_sha256):
                    self._member(member, scratch)
                    bar.update(member.size)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._blob(self.repo, Digest.of(head_bytes), head_bytes)
        if armored is not None:
            self._blob(self.repo, Digest.of(armored), armored)
        children = self._images() + self._models()
        children.append(self._artifact(head_bytes, head_sha256, armored))
        created = datetime.datetime.fromtimestamp(head.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        index = bundle_index(children, head_sha256=head_sha256, profile=head.profile.name, created=created)
        self.report.digest = self.site.put_manifest(self.repo, self.target.tag, index, INDEX_TYPES[1])
        return self.report

    # -- what the site holds --
    def _read_site(self) -> None:
        """The layers (by diff_id) of every bundle pushed to REPO, and of what the images' tags hold now."""
        places = [(self.repo, tag) for tag in self.site.tags(self.repo)]
        for image in self.head.images:
            ref = ImageRef.parse(image.name)
            if ref.tag:
                places.append((ref.repository, ref.tag))
        seen: set[str] = set()
        for repository, reference in places:
            found = self.site.has_manifest(repository, reference, ", ".join((*MANIFEST_TYPES, *INDEX_TYPES)))
            if found is None or found in seen:
                continue
            seen.add(found)
            digest, body, media_type = self.site.manifest(repository, found)
            data = json.loads(body)
            manifests = [m["digest"] for m in data.get("manifests") or []] if media_type in INDEX_TYPES else [digest]
            for manifest in manifests:
                if manifest not in seen:
                    seen.add(manifest)
                    self._read_image(repository, manifest, None if manifest != digest else data)

    def _read_image(self, repository: str, digest: str, data: dict | None) -> None:
        if data is None:
            data = json.loads(self.site.manifest(repository, digest)[1])
        config = data.get("config") or {}
        if config.get("mediaType") not in IMAGE_CONFIGS:
            return   # an artifact: a model's, a bundle's
        try:
            diff_ids = json.loads(self.site.blob_bytes(repository, config["digest"]))["rootfs"]["diff_ids"]
        except (KeyError, TypeError, ValueError):
            return
        layers = data.get("layers") or []
        if len(diff_ids) != len(layers):
            return
        for diff_id, layer in zip(diff_ids, layers):
            self.layers.setdefault(diff_id, LayerAt(repository, Digest(layer["digest"]), layer["size"],
                                                    layer.get("mediaType", GZIP_LAYER)))

    def _held(self, repository: str, digest: str) -> bool:
        if repository in self.in_repo.get(digest, ()):
            return True
        if self.site.has_blob(repository, digest):
            self.in_repo.setdefault(digest, set()).add(repository)
            return True
        return False

    def _check_delta(self) -> None:
        """Everything a delta does not carry must already be in the registry: else stop now, naming it."""
        delta = self.head.delta
        if delta is None:
            return
        carried = {m.path for m in self.head.members}
        missing = []
        for image in self.head.images:
            for diff_id, blob in zip(image.layer_digests, image.blobs):
                if layout_path(blob_path(blob.digest)) in carried or any(p.layer == diff_id for p in delta.patches):
                    continue
                if not (diff_id in self.layers or self._held(self.repo, blob.digest)):
                    missing.append(f"layer {diff_id[:19]}.. of {image.name}")
        for patch in delta.patches:
            if patch.base not in self.layers and not self._held(self.repo, patch.base):
                missing.append(f"layer {patch.base[:19]}.. that the patch of {patch.layer[:19]}.. is made against")
        missing += [f"wheel {w.filename}" for w in self.head.wheels if w.sha256 in set(delta.wheels)
                    and not self._held(self.repo, f"sha256:{w.sha256}")]
        missing += [f"model file {f.path} of {m.name}" for m in self.head.models for f in m.files
                    if f.sha256 in set(delta.models) and not self._held(self.repo, f"sha256:{f.sha256}")]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            against = ", ".join(b.name for b in delta.bases)
            raise OperationalError(f"{missing[0]}{more}: not in this delta, and not on {self.site.host}/{self.repo}: "
                                   f"push the bundle it was made against ({against}) there first")

    # -- the members --
    def _member(self, member: MemberReader, scratch: Path) -> None:
        digest = Digest.from_hex(member.sha256)
        if member.name.startswith(f"{LAYOUT_DIR}/patches/"):
            self._patched(member, scratch)
        elif member.name in self.small:   # a manifest, a config, index.json: kept for the manifests pushed last
            if member.size > MAX_LAYOUT_FILE:
                raise IntegrityError(f"member {member.name}: {member.size} bytes, far more than an image layout's "
                                     "metadata holds")
            data = member.read()
            member.finish()
            self.layout[member.name] = data
            self._blob(self.repo, digest, data)
        elif digest in self.unpacked and member.name == layout_path(blob_path(digest)):
            if digest in self.layers:
                member.finish()
                self.report.blobs_held += 1
            else:
                self._compressed(digest, _chunks(member), member.finish)
        else:
            self._blob(self.repo, digest, member)

    def _blob(self, repository: str, digest: Digest, data: bytes | MemberReader | Path) -> None:
        """A blob whose digest is known, sent unless the registry holds it (the registry checks it)."""
        size = len(data) if isinstance(data, bytes) else data.stat().st_size if isinstance(data, Path) else data.size
        if self._held(repository, digest):
            if isinstance(data, MemberReader):
                data.finish()
            self.report.blobs_held += 1
            return
        chunks = data if isinstance(data, bytes) else file_chunks(data) if isinstance(data, Path) else _chunks(data)
        self.site.upload(repository, digest, chunks)
        if isinstance(data, MemberReader):
            data.finish()    # the registry checked the digest already; this checks the bundle too
        self.in_repo.setdefault(digest, set()).add(repository)
        self.report.blobs_sent += 1
        self.report.bytes_sent += size

    def _compressed(self, diff_id: Digest, chunks: Iterator[bytes], finish: object) -> None:
        """An unpacked layer, gzip-compressed as it streams up; checked (``finish``) before anything refers to it."""
        digest, size = self.site.upload_stream(self.repo, _gzip(chunks), f"layer {diff_id[:19]}..")
        finish()
        self.layers[diff_id] = LayerAt(self.repo, digest, size, GZIP_LAYER)
        self.in_repo.setdefault(digest, set()).add(self.repo)
        self.report.blobs_sent += 1
        self.report.bytes_sent += size

    def _patched(self, member: MemberReader, scratch: Path) -> None:
        """A rebuilt layer the delta carries as a patch: rebuilt here against the site's copy of its base."""
        layer = Digest.from_hex(member.name.rsplit("/", 1)[1])
        patch = next((p for p in self.head.delta.patches if p.layer == layer), None) if self.head.delta else None
        if patch is None:
            raise IntegrityError(f"member {member.name}: no patch of bundle.json is this member")
        spooled = scratch / f"patch-{layer.hex}"   # the patch is a member too: the bundle's artifact lists it
        with open(spooled, "wb") as out:
            shutil.copyfileobj(member, out, CHUNK)
        member.finish()
        self._blob(self.repo, Digest.from_hex(member.sha256), spooled.read_bytes() if member.size <= CHUNK else spooled)
        if layer in self.layers:
            spooled.unlink()
            return
        base = scratch / f"base-{patch.base.hex}"
        self._fetch_layer(patch.base, base)
        rebuilt = scratch / f"rebuilt-{layer.hex}"
        with open(spooled, "rb") as source:
            apply_patch(source, base, base_size=patch.base_size, out=rebuilt, size=patch.size, diff_id=layer,
                        name=f"member {member.name}")
        spooled.unlink()
        base.unlink()
        self._compressed(layer, file_chunks(rebuilt), lambda: None)   # checked when it was rebuilt
        rebuilt.unlink()

    def _fetch_layer(self, diff_id: Digest, out: Path) -> None:
        """The site's copy of a layer, decoded from whatever form the registry holds it in, into ``out``."""
        at = self.layers.get(diff_id) or LayerAt(self.repo, diff_id, 0, "")
        hasher = hashlib.sha256()
        with open(out, "wb") as handle, self.site.open_blob(at.repository, at.digest) as response:
            def take(data: bytes) -> None:
                hasher.update(data)
                handle.write(data)
            decoder = Decoder(take)
            for chunk in iter_body(response, self.site.policy):
                decoder.feed(chunk)
            decoder.finish()
        if Digest.from_hex(hasher.hexdigest()) != diff_id:
            raise IntegrityError(f"{self.site.host}/{at.repository}: blob {at.digest[:19]}.. does not unpack to "
                                 f"layer {diff_id[:19]}..")

    # -- the manifests --
    def _ensure(self, repository: str, digest: str) -> None:
        """``repository`` holds the blob: mounted from a repository known to hold it."""
        if self._held(repository, digest):
            return
        source = next(iter(self.in_repo.get(digest) or ()), None)
        if source is None:
            for repo in (self.repo, *(at.repository for at in self.layers.values() if at.digest == digest)):
                if self._held(repo, digest):
                    source = repo
                    break
        if source is None:
            raise OperationalError(f"blob {digest[:19]}.. is on no repository of {self.site.host} to mount from")
        self.site.mount(digest, source, repository)
        self.in_repo.setdefault(digest, set()).add(repository)

    def _image_manifest(self, image: ImageEntry) -> tuple[bytes, list[str]]:
        """The manifest an image is pushed with, and the blobs it refers to."""
        body = self.layout[layout_path(blob_path(image.manifest))]
        if image.exact:
            return body, [image.id, *(b.digest for b in image.blobs)]
        data = json.loads(body)
        layers = [self.layers[d] for d in image.layer_digests]
        data["layers"] = [{**old, "mediaType": at.media_type, "digest": at.digest, "size": at.size}
                          for old, at in zip(data["layers"], layers)]
        return json_bytes(data), [image.id, *(at.digest for at in layers)]

    def _images(self) -> list[Child]:
        children, pushed = [], {}
        listed = {digest for index in self.head.indexes for digest in index.manifests}
        for image in self.head.images:
            body, blobs = self._image_manifest(image)
            media_type = image.manifest_media_type
            ref = ImageRef.parse(image.name)
            for blob in blobs:
                self._ensure(self.repo, blob)
                self._ensure(ref.repository, blob)
            digest = self.site.put_manifest(self.repo, Digest.of(body), body, media_type)
            self.site.put_manifest(ref.repository, digest, body, media_type)
            pushed[image.manifest] = (digest, len(body))
            if ref.tag and image.manifest not in listed:
                self.site.put_manifest(ref.repository, ref.tag, body, media_type)
                self.report.notes.append(f"pushed {self.site.host}/{ref.repository}:{ref.tag}@{digest}")
            platform = Platform.parse(image.platform)
            children.append(Child("image", digest, len(body), media_type, name=image.name,
                                  platform={"os": platform.os, "architecture": platform.architecture,
                                            **({"variant": platform.variant} if platform.variant else {})}))
        for index in self.head.indexes:
            self._index(index, pushed)
        return children

    def _index(self, index: IndexEntry, pushed: dict[str, tuple[Digest, int]]) -> None:
        """An image carried for several platforms: its index under the tag, naming the manifests pushed."""
        ref = ImageRef.parse(index.name)
        body = self.layout[layout_path(blob_path(index.digest))]
        for attachment in index.attachments:
            for blob in attachment.blobs:
                self._ensure(ref.repository, blob.digest)
            self.site.put_manifest(ref.repository, attachment.digest,
                                   self.layout[layout_path(blob_path(attachment.digest))], attachment.media_type)
        if not index.upstream:   # an index made by the build names the unpacked manifests: name the pushed ones
            data = json.loads(body)
            for entry in data.get("manifests") or []:
                if entry.get("digest") in pushed:
                    entry["digest"], entry["size"] = pushed[entry["digest"]]
            body = json_bytes(data)
        digest = self.site.put_manifest(ref.repository, ref.tag or Digest.of(body), body, index.media_type)
        self.report.notes.append(f"pushed {self.site.host}/{ref.repository}:{ref.tag or ''}@{digest} "
                                 f"(an index of {len(index.manifests)} platforms)")

    def _models(self) -> list[Child]:
        children = []
        for model in self.head.models:
            config = model_config(model)
            self._blob(self.repo, Digest.of(config), config)
            for file in model.files:
                self._ensure(self.repo, f"sha256:{file.sha256}")
            body = model_manifest(model, config)
            digest = self.site.put_manifest(self.repo, Digest.of(body), body, OCI_MANIFEST)
            children.append(Child("model", digest, len(body), OCI_MANIFEST,
                                  name=f"{model.name}@{model.commit or model.revision}"))
        return children

    def _artifact(self, head_bytes: bytes, head_sha256: str, armored: bytes | None) -> Child:
        """The artifact of every member that is neither an unpacked layer nor a model file (a delta's:
        also the wheels the site holds), with bundle.json and its signature."""
        blobs = [Blob(HEAD, Digest.of(head_bytes), len(head_bytes), HEAD_MEDIA)]
        if armored is not None:
            blobs.append(Blob(f"{HEAD}.sig", Digest.of(armored), len(armored), SIGNATURE_MEDIA))
        for member in self.head.members:
            digest = Digest.from_hex(member.sha256)
            if member.path.startswith(f"{MODELS_DIR}/") or (digest in self.unpacked
                                                             and member.path.startswith(f"{LAYOUT_DIR}/blobs/")):
                continue
            blobs.append(Blob(member.path, digest, member.size, member_media_type(member.path)))
        titles = {b.title for b in blobs}
        for wheel in self.head.wheels:
            title = f"wheels/{wheel.filename}"
            if title not in titles:
                self._ensure(self.repo, f"sha256:{wheel.sha256}")
                blobs.append(Blob(title, Digest.from_hex(wheel.sha256), wheel.size, member_media_type(title)))
        self._blob(self.repo, Digest.of(EMPTY), EMPTY)
        body = artifact_manifest(blobs, head_sha256)
        digest = self.site.put_manifest(self.repo, Digest.of(body), body, OCI_MANIFEST)
        return Child("bundle", digest, len(body), OCI_MANIFEST)


def _chunks(member: MemberReader) -> Iterator[bytes]:
    while chunk := member.read(CHUNK):
        yield chunk


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` as one gzip stream (isal where it is installed, zlib otherwise), in pieces."""
    deflate = gzip_module().compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = deflate.compress(chunk)
        if out:
            yield out
    yield deflate.flush()
