"""bundle.json's images (format.py holds the rest of the head): each image, each layer as carried,
and the indexes that name an image's platforms together, with what else they list (attestations).

One reader per type (``read``, every key checked, errors naming the key) and one writer (``to_json``),
as for every part of the head. Air-gapped side: nothing of the connected side, CPython 3.9's syntax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bundler.digest import Digest
from bundler.format.media import OCI_LAYER, OCI_MANIFEST
from bundler.format.reader import JsonObject, is_digest, is_size


@dataclass(frozen=True)
class LayerBlob:
    """A layer as the bundle carries it: its blob in the layout (format 2)."""

    digest: Digest                   # the blob's name in the layout: the diff_id, or (exact) the registry's digest
    size: int
    media_type: str                  # OCI_LAYER (uncompressed), or the registry's (gzip, zstd)

    @classmethod
    def read(cls, obj: JsonObject) -> LayerBlob:
        return cls(obj.digest("digest"), obj.size("size"), obj.string("media_type"))

    def to_json(self) -> dict:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type}


@dataclass(frozen=True)
class ImageEntry:
    """One image: where it came from, what it is (config ``id``, layers) and its manifest in the layout."""

    ref: str                         # as the profile wrote it
    name: str                        # normalised: registry/repository[:tag][@digest]
    digest: Digest                   # the platform's manifest digest upstream (source docker: the image ID)
    index_digest: Digest | None
    platform: str
    source: str                      # registry | docker
    id: Digest                       # the config's digest: what docker calls the image ID
    tags: tuple[str, ...]            # RepoTags, as docker shows them
    size: int                        # the layers, uncompressed
    layer_digests: tuple[Digest, ...]    # diff_ids, which are also the layers' blob digests in the layout
    layer_sizes: tuple[int, ...] | None   # absent in bundles of bundler 0.1.0 before its reliability work
    manifest: Digest                 # the manifest in the layout (exact: the registry's own)
    manifest_size: int
    annotations: dict[str, str] = field(default_factory=dict)
    # format 2
    exact: bool = False              # carried byte for byte as the registry serves it
    layer_blobs: tuple[LayerBlob, ...] | None = None    # None: the diff_ids, uncompressed (format 1)
    manifest_media_type: str = OCI_MANIFEST

    @property
    def layer_count(self) -> int:
        return len(self.layer_digests)

    @property
    def blobs(self) -> tuple[LayerBlob, ...]:
        """Each layer as the bundle carries it."""
        if self.layer_blobs is not None:
            return self.layer_blobs
        sizes = self.layer_sizes or (None,) * self.layer_count
        return tuple(LayerBlob(d, s if s is not None else -1, OCI_LAYER) for d, s in zip(self.layer_digests, sizes))

    @property
    def pinnable(self) -> Digest:
        """The digest a user can pin on the site's registry after ``restore --registry``."""
        return self.manifest

    @classmethod
    def read(cls, obj: JsonObject, version: int = 1) -> ImageEntry:
        digests = obj.items("layer_digests", obj.of_kind(is_digest, "sha256:<64 hex digits>"))
        layer_digests = tuple(map(Digest, digests))
        layer_sizes = obj.items("layer_sizes", obj.of_kind(is_size, "a whole number, 0 or more"), may_be_absent=True)
        count = obj.size("layers")
        if count != len(layer_digests):
            raise obj.fail(obj.path("layers"), f"{count}, but layer_digests lists {len(layer_digests)}")
        if layer_sizes is not None and len(layer_sizes) != len(layer_digests):
            raise obj.fail(obj.path("layer_sizes"), f"{len(layer_sizes)} sizes for {len(layer_digests)} layers")
        source = obj.string("source")
        if source not in ("registry", "docker"):
            raise obj.fail(obj.path("source"), f"{source!r} is not registry or docker")
        later = {}
        if version >= 2:
            if layer_sizes is None:
                raise obj.fail(obj.path("layer_sizes"), "missing")
            blobs = obj.objects("layer_blobs", LayerBlob.read)
            if len(blobs) != len(layer_digests):
                raise obj.fail(obj.path("layer_blobs"), f"{len(blobs)} blobs for {len(layer_digests)} layers")
            later = {"exact": obj.flag("exact"), "layer_blobs": blobs,
                     "manifest_media_type": obj.string("manifest_media_type")}
        return cls(obj.string("ref"), obj.string("name"), obj.digest("digest"),
                   obj.digest("index_digest", nullable=True), obj.string("platform"), source, obj.digest("id"),
                   obj.items("tags", obj.of_kind(lambda v: isinstance(v, str), "a string")), obj.size("size"),
                   layer_digests, layer_sizes, obj.digest("manifest"), obj.size("manifest_size"),
                   obj.string_map("annotations"), **later)

    def to_json(self, version: int) -> dict:
        data = {"ref": self.ref, "name": self.name, "digest": self.digest, "index_digest": self.index_digest,
                "platform": self.platform, "source": self.source, "id": self.id, "tags": list(self.tags),
                "layers": self.layer_count, "size": self.size, "layer_digests": list(self.layer_digests),
                "manifest": self.manifest, "manifest_size": self.manifest_size, "annotations": dict(self.annotations)}
        if self.layer_sizes is not None:
            data["layer_sizes"] = list(self.layer_sizes)
        if version >= 2:
            data.update(exact=self.exact, layer_blobs=[b.to_json() for b in self.blobs],
                        manifest_media_type=self.manifest_media_type)
        return data


@dataclass(frozen=True)
class Attachment:
    """A manifest an index lists that is no platform's image: a build's provenance or SBOM
    attestation (platform unknown/unknown). Carried so that the registry's own index stays whole."""

    digest: Digest
    size: int
    media_type: str
    blobs: tuple[LayerBlob, ...]     # its config and layers

    @classmethod
    def read(cls, obj: JsonObject) -> Attachment:
        return cls(obj.digest("digest"), obj.size("size"), obj.string("media_type"),
                   obj.objects("blobs", LayerBlob.read))

    def to_json(self) -> dict:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type,
                "blobs": [b.to_json() for b in self.blobs]}


@dataclass(frozen=True)
class IndexEntry:
    """An image carried for several platforms (format 2): the index that names them all."""

    name: str                        # normalised reference, as its images' ``name``
    tags: tuple[str, ...]            # RepoTags of the name
    digest: Digest                   # the index in the layout
    size: int
    media_type: str
    upstream: bool                   # the registry's own index, byte for byte (every platform carried)
    manifests: tuple[Digest, ...]    # the platforms' manifests it lists that the bundle carries
    attachments: tuple[Attachment, ...] = ()   # the other manifests it lists (attestations), when upstream;
                                               # absent in bundles made before bundler carried them: none

    @classmethod
    def read(cls, obj: JsonObject) -> IndexEntry:
        return cls(obj.string("name"), obj.items("tags", obj.of_kind(lambda v: isinstance(v, str), "a string")),
                   obj.digest("digest"), obj.size("size"), obj.string("media_type"), obj.flag("upstream"),
                   tuple(map(Digest, obj.items("manifests", obj.of_kind(is_digest, "sha256:<64 hex digits>")))),
                   obj.items("attachments", lambda entry, key: Attachment.read(JsonObject(entry, key, obj.where)),
                             may_be_absent=True) or ())

    def to_json(self) -> dict:
        data = {"name": self.name, "tags": list(self.tags), "digest": self.digest, "size": self.size,
                "media_type": self.media_type, "upstream": self.upstream, "manifests": list(self.manifests)}
        if self.attachments:
            data["attachments"] = [a.to_json() for a in self.attachments]
        return data
