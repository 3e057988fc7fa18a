"""A bundle read back from the site's registry: ``restore oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``.

``bundler push`` laid it out (format/site.py). Its head comes from the bundle artifact, and its
signature is checked as a file's is (``--trust``); then every member the node lacks, and only those,
is fetched by its own sha256 and checked against the head as it streams, exactly as a member of a
file would be. An unpacked image's layer is in the registry gzip-compressed: it is decoded on the
way and checked against its diff_id. A delta's head names pieces it does not carry; those come from
the same registry, where its push proved them to be.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bundler.context import Context
from bundler.digest import Digest
from bundler.errors import InputError, IntegrityError, NetworkError
from bundler.files import CHUNK, copy_checked
from bundler.format.archive import MAX_HEAD
from bundler.format.decode import gzip_module
from bundler.format.head import Head, MemberEntry
from bundler.format.media import IMAGE_CONFIGS, INDEX_TYPES
from bundler.format.paths import blob_path, layout_path
from bundler.format.site import BUNDLE_ARTIFACT, HEAD_SHA256, Child, artifact_type, read_artifact, read_index
from bundler.format.trust import CheckedHead, TrustFile, checked_head
from bundler.net.http import iter_body
from bundler.oci.site import SiteRegistry
from bundler.restore.options import Piece

SCHEME = "oci://"
_REFERENCE = re.compile(r"oci://(?P<host>[^/@]+)/(?P<repository>[a-z0-9][a-z0-9._/-]*?)"
                        r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?\Z")


@dataclass(frozen=True)
class OciReference:
    """``oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`` (default tag: latest)."""

    host: str
    repository: str
    reference: str               # a tag, or the index's digest

    @classmethod
    def parse(cls, text: str) -> OciReference:
        found = _REFERENCE.match(text)
        if not found:
            raise InputError(f"{text!r}: a bundle in a registry is oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
        return cls(found["host"], found["repository"], found["digest"] or found["tag"] or "latest")

    def __str__(self) -> str:
        separator = "@" if self.reference.startswith("sha256:") else ":"
        return f"{SCHEME}{self.host}/{self.repository}{separator}{self.reference}"


def is_oci(text: str) -> bool:
    return text.startswith(SCHEME)


@dataclass(frozen=True)
class LayerAt:
    """Where the registry holds a layer, and in what form (gzip, zstd, or the plain tar)."""

    repository: str
    digest: Digest
    size: int
    media_type: str


class RegistryBundle:
    """A pushed bundle, opened: its checked head, and its members fetched from the registry on demand."""

    def __init__(self, ref: OciReference, site: SiteRegistry) -> None:
        self.ref, self.site = ref, site
        self.layers: dict[str, LayerAt] = {}       # diff_id -> the blob that holds it
        self.children: list[Child] = []

    def __str__(self) -> str:
        return str(self.ref)

    def open(self, trust: TrustFile | None) -> CheckedHead:
        where = str(self.ref)
        repo = self.ref.repository
        _, body, media_type = self.site.manifest(repo, self.ref.reference)
        if media_type not in INDEX_TYPES:
            raise InputError(f"{where}: a manifest, not the index bundler push leaves: not a bundle")
        self.children, annotations = read_index(body, where)
        manifests = {child.digest: self.site.manifest(repo, child.digest)[1] for child in self.children}
        artifacts = [c for c in self.children if c.kind == "bundle" or (
            c.kind is None and artifact_type(manifests[c.digest]) == BUNDLE_ARTIFACT)]
        if len(artifacts) != 1:
            raise InputError(f"{where}: holds {len(artifacts)} bundle artifacts, not one: not a bundle bundler pushed")
        head_blob, signature_blob, _ = read_artifact(manifests[artifacts[0].digest], where)
        if head_blob.size > MAX_HEAD:
            raise IntegrityError(f"{where}: its bundle.json claims {head_blob.size} bytes; not a bundle's")
        head_bytes = self.site.blob_bytes(repo, head_blob.digest, limit=MAX_HEAD)
        armored = self.site.blob_bytes(repo, signature_blob.digest) if signature_blob else None
        head, signature = checked_head(head_bytes, armored, trust, where)
        sha = hashlib.sha256(head_bytes).hexdigest()
        if annotations.get(HEAD_SHA256, sha) != sha:
            raise IntegrityError(f"{where}: the index names bundle.json {annotations[HEAD_SHA256][:12]}.., its "
                                 f"artifact holds {sha[:12]}..")
        for child in self.children:
            self._read_image(manifests[child.digest], head)
        return CheckedHead(head, sha, signature)

    def _read_image(self, body: bytes, head: Head) -> None:
        """An image child: its config names the head's image, whose diff_ids its layers hold, in order."""
        try:
            data = json.loads(body)
            config, layers = data["config"], data["layers"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(config, dict) or config.get("mediaType") not in IMAGE_CONFIGS:
            return
        for image in head.images:
            if image.id == config.get("digest") and len(layers) == image.layer_count:
                for diff_id, layer in zip(image.layer_digests, layers):
                    self.layers.setdefault(diff_id, LayerAt(self.ref.repository, Digest(layer["digest"]),
                                                            layer["size"], str(layer.get("mediaType", ""))))

    def bytes_to_read(self, checked: CheckedHead, needed: Callable[[str], bool]) -> int:
        return sum(m.size for m in checked.head.members if needed(m.path))

    def members(self, checked: CheckedHead, needed: Callable[[str], bool]) -> Iterator[RemoteMember]:
        """The members ``needed`` asks for, in the head's order, each fetched when it is read."""
        unpacked = {d for i in checked.head.images if not i.exact for d in i.layer_digests}
        for entry in checked.head.members:
            if not needed(entry.path):
                continue
            digest = Digest.from_hex(entry.sha256)
            if digest in unpacked and entry.path == layout_path(blob_path(digest)) and digest in self.layers:
                yield RemoteMember(self, entry, self.layers[digest])
            else:
                yield RemoteMember(self, entry, LayerAt(self.ref.repository, digest, entry.size, ""))

    # -- a delta's pieces ---------------------------------------------------------------------------
    def provide(self, piece: Piece, target: Path) -> bool:
        """Write ``piece`` (checked) to ``target`` from this registry; False when it holds none such."""
        at = self.layers.get(piece.digest) if piece.raw else None
        if at is None:
            at = LayerAt(self.ref.repository, Digest(piece.digest), piece.size or 0, "")
            if not self.site.has_blob(at.repository, at.digest):
                return False
        with self.site.open_blob(at.repository, at.digest) as response:
            chunks = _decoded(iter_body(response, self.site.policy)) if piece.raw else \
                iter_body(response, self.site.policy)
            copy_checked(chunks, target, piece.digest, what=f"{self.site.host}/{at.repository}")
        return True


class RemoteMember(io.RawIOBase):
    """One member, read from the registry as it streams (decoded when the registry holds it compressed),
    hashed; ``finish()`` reads the rest and checks it against the head, as a file's member is checked."""

    def __init__(self, bundle: RegistryBundle, entry: MemberEntry, at: LayerAt) -> None:
        self._bundle, self._at = bundle, at
        self.name, self.size, self.sha256 = entry.path, entry.size, entry.sha256
        self._hasher, self._read = hashlib.sha256(), 0
        self._chunks: Iterator[bytes] | None = None
        self._response = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _open(self) -> Iterator[bytes]:
        site = self._bundle.site
        self._response = site.open_blob(self._at.repository, self._at.digest)
        body = iter_body(self._response, site.policy)
        return _decoded(body) if self._at.media_type else body

    def readinto(self, buffer: bytearray) -> int:
        if self._chunks is None:
            self._chunks = self._open()
        while not self._pending:
            try:
                chunk = next(self._chunks, None)
            except NetworkError as exc:
                raise NetworkError(f"member {self.name}: {exc}") from None
            except (zlib.error, gzip_module().error, zstandard.ZstdError, EOFError) as exc:
                raise IntegrityError(f"member {self.name}: {self._at.digest[:19]}.. on {self._bundle.site.host} "
                                     f"does not decode ({exc})") from None
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._hasher.update(memoryview(buffer)[:n])
        self._read += n
        if self._read > self.size:
            raise IntegrityError(f"member {self.name}: more than the {self.size} bytes bundle.json gives it, from "
                                 f"{self._bundle.site.host}")
        return n

    def finish(self) -> None:
        scratch = bytearray(CHUNK)
        while self.readinto(scratch):
            pass
        self.close()
        if self._read != self.size or self._hasher.hexdigest() != self.sha256:
            found = self._hasher.hexdigest()
            raise IntegrityError(f"member {self.name}: {self._read} bytes with sha256 {found[:16]}.. came from "
                                 f"{self._bundle.site.host}/{self._at.repository}, bundle.json says {self.size} "
                                 f"bytes, {self.sha256[:16]}..")

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        super().close()


def _decoded(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A layer's bytes as the registry holds them (gzip, zstd, or the plain tar, by their first bytes),
    decoded in pieces of at most CHUNK however much they inflate."""
    first = next(chunks, b"")
    rest = _prepend(first, chunks)
    if first[:2] == b"\x1f\x8b":
        yield from _gunzip(rest)
    elif first[:4] == b"\x28\xb5\x2f\xfd":
        reader = zstandard.ZstdDecompressor().stream_reader(_IterFile(rest), read_across_frames=True)
        while piece := reader.read(CHUNK):
            yield piece
    else:
        yield from rest


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """gzip (several members allowed), each piece of output at most CHUNK however much it inflates."""
    zlib_module = gzip_module()
    inflate, fed = zlib_module.decompressobj(31), False
    for chunk in chunks:
        data = chunk
        while data or fed:
            fed = True
            piece = inflate.decompress(data, CHUNK)
            if piece:
                yield piece
            if inflate.eof:            # another member may follow
                data, inflate, fed = inflate.unused_data, zlib_module.decompressobj(31), False
                continue
            data = inflate.unconsumed_tail
            if not data and len(piece) < CHUNK:
                break
    if fed:
        raise zlib.error("the gzip stream ends before its end marker")


class _IterFile(io.RawIOBase):
    """Chunks read as a file (zstandard's stream reader reads through it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def open_registry_bundle(text: str, *, plain_http: bool, ctx: Context) -> RegistryBundle:
    ref = OciReference.parse(text)
    return RegistryBundle(ref, SiteRegistry(ref.host, ctx.policy, plain_http=plain_http))


def pushed_bundles(site: SiteRegistry, repositories: Sequence[str]) -> Iterator[tuple[OciReference, Head]]:
    """Every bundle pushed to ``repositories`` (each tag whose index bundler wrote), with its head."""
    for repository in repositories:
        for tag in site.tags(repository):
            _, body, media_type = site.manifest(repository, tag)
            if media_type not in INDEX_TYPES or HEAD_SHA256 not in read_index(body, f"{site.host}/{repository}")[1]:
                continue
            ref = OciReference(site.host, repository, tag)
            yield ref, RegistryBundle(ref, site).open(None).head
