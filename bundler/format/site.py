"""A bundle in a registry: how ``bundler push`` lays one out, and how ``restore oci://`` and ``serve``
find it again. Part of the format: a bundle pushed by one release is read by every later one.

At ``REPO:TAG`` stands one OCI image index, annotated with the head's sha256 and the profile, that
refers to (each child annotated with ``io.bundler.kind``):

- every image the bundle carries, one manifest per platform (``image``), whose layers are gzip
  blobs (an image carried exact keeps its registry's own manifest and blobs); the same manifests
  are pushed under each image's own name, so nodes pull them by the names they already type;
- every model repository as a CNCF ModelPack artifact (``model``): each file one raw layer with
  its path in ``org.cncf.model.filepath``, so modctl and other ModelPack tools read it too;
- one artifact (``bundle``) whose layers are bundle.json (the head), its signature, and every other
  member by its own sha256: the SBOM, the lock, the wheels, the image layout's small files.

Every member of the bundle is then a blob of ``REPO`` with the member's own sha256 as its digest,
except an unpacked image's layers, which are there gzip-compressed: the head's diff_id of each is
matched with the blob at its place in the image's manifest, and the decoded bytes are checked
against it. Stock tools copy the whole of it (``skopeo copy --all``), which keeps every child
manifest byte for byte, though it may rewrite the index and drop its children's annotations: a
reader therefore recognises the children by their own manifests as well.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from bundler.digest import Digest, is_digest
from bundler.errors import IntegrityError
from bundler.format.media import OCI_INDEX, OCI_MANIFEST
from bundler.format.models import ModelEntry

BUNDLE_ARTIFACT = "application/vnd.bundler.bundle.v1+json"   # the index's and the bundle artifact's type
HEAD_MEDIA = "application/vnd.bundler.head.v1+json"          # bundle.json, byte for byte
SIGNATURE_MEDIA = "application/vnd.bundler.signature.v1+ssh"   # OUT.sig: the SSH signature of bundle.json
MEMBER_MEDIA = "application/vnd.bundler.member.v1"           # any other member, named by its title
SBOM_MEDIA = "application/vnd.cyclonedx+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_MEDIA = "application/vnd.oci.empty.v1+json"            # OCI 1.1's config of an artifact: {}
EMPTY = b"{}"

MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"   # CNCF ModelPack
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODEL_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MODEL_DOC = "application/vnd.cncf.model.doc.v1.raw"
MODEL_CODE = "application/vnd.cncf.model.code.v1.raw"
MODEL_DATASET = "application/vnd.cncf.model.dataset.v1.raw"

KIND = "io.bundler.kind"                       # on the index's children: image | model | bundle
HEAD_SHA256 = "io.bundler.head.sha256"         # on the index and the bundle artifact
PROFILE = "io.bundler.profile"
IMAGE_NAME = "io.bundler.image"                # an image child: its name as bundle.json writes it
MODEL_NAME = "io.bundler.model"                # a model child: hub:ORG/NAME@COMMIT
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
REF_NAME = "org.opencontainers.image.ref.name"
FILEPATH = "org.cncf.model.filepath"

ChildKind = Literal["image", "model", "bundle"]

_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".tflite",
            ".pb", ".model", ".npz", ".pdparams", ".mlmodel", ".ot")
_CODE = (".py", ".ipynb", ".sh", ".cu", ".cpp", ".c", ".h")
_DOCS = ("readme", "license", "licence", "notice", "copying", "citation", "usage_policy", "responsible_use")


def json_bytes(data: Any) -> bytes:
    """A document as bundler writes it: sorted keys, no spaces, so the same content has one digest."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **{k: v for k, v in extra.items() if v}}


def empty_config() -> dict:
    return descriptor(EMPTY_MEDIA, Digest.of(EMPTY), len(EMPTY), data=base64.b64encode(EMPTY).decode())


def model_layer_type(path: str, repo_type: str) -> str:
    """The ModelPack media type of one file of a repository: weights, their configuration (config.json,
    the tokenizer), documentation, code; every file of a dataset repository is the dataset's."""
    if repo_type == "dataset":
        return MODEL_DATASET
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(_WEIGHTS):
        return MODEL_WEIGHT
    if name.endswith(_CODE):
        return MODEL_CODE
    if name.startswith(_DOCS) or name.endswith((".md", ".rst", ".pdf")):
        return MODEL_DOC
    return MODEL_WEIGHT_CONFIG


def model_config(model: ModelEntry) -> bytes:
    """The ModelPack configuration of a repository at its commit: what it is, and every file's digest."""
    formats = sorted({f.path.rsplit(".", 1)[-1] for f in model.files
                      if model_layer_type(f.path, model.repo_type) == MODEL_WEIGHT and "." in f.path})
    return json_bytes({
        "descriptor": {"name": model.repo, "revision": model.commit or model.revision},
        "config": {"format": formats[0]} if len(formats) == 1 else {},
        "modelfs": {"type": "layers", "diffIds": [f"sha256:{f.sha256}" for f in model.files]},
    })


def model_manifest(model: ModelEntry, config: bytes) -> bytes:
    """A repository as a ModelPack artifact: each file a raw layer, by its sha256, with its path."""
    return json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_ARTIFACT,
        "config": descriptor(MODEL_CONFIG, Digest.of(config), len(config)),
        "layers": [descriptor(model_layer_type(f.path, model.repo_type), f"sha256:{f.sha256}", f.size,
                              annotations={FILEPATH: f.path, TITLE: f.path}) for f in model.files],
        "annotations": {MODEL_NAME: f"{model.name}@{model.commit or model.revision}"},
    })


def member_media_type(path: str) -> str:
    return SBOM_MEDIA if path.endswith(".cdx.json") else MEMBER_MEDIA


@dataclass(frozen=True)
class Blob:
    """One blob the bundle artifact lists: a member (by its path), the head or the signature."""

    title: str
    digest: Digest
    size: int
    media_type: str


def artifact_manifest(blobs: list[Blob], head_sha256: str) -> bytes:
    return json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_ARTIFACT, "config": empty_config(),
        "layers": [descriptor(b.media_type, b.digest, b.size, annotations={TITLE: b.title}) for b in blobs],
        "annotations": {HEAD_SHA256: head_sha256},
    })


@dataclass(frozen=True)
class Child:
    """One manifest the bundle's index refers to."""

    kind: ChildKind | None       # None: not said by an annotation (an index a stock tool rewrote)
    digest: Digest
    size: int
    media_type: str
    platform: dict | None = None
    name: str = ""               # IMAGE_NAME or MODEL_NAME

    def to_json(self) -> dict:
        annotations = {KIND: self.kind} if self.kind else {}
        if self.name:
            annotations[IMAGE_NAME if self.kind == "image" else MODEL_NAME] = self.name
        return descriptor(self.media_type, self.digest, self.size, platform=self.platform, annotations=annotations)


def bundle_index(children: list[Child], *, head_sha256: str, profile: str, created: str) -> bytes:
    return json_bytes({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": BUNDLE_ARTIFACT,
        "manifests": [child.to_json() for child in children],
        "annotations": {HEAD_SHA256: head_sha256, PROFILE: profile, CREATED: created},
    })


def read_index(body: bytes, where: str) -> tuple[list[Child], dict[str, str]]:
    """The children and annotations of an index bundler pushed, every digest checked for its form."""
    try:
        data = json.loads(body)
    except ValueError:
        raise IntegrityError(f"{where}: the index is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("manifests"), list):
        raise IntegrityError(f"{where}: not an OCI image index")
    children = []
    for number, entry in enumerate(data["manifests"]):
        if not isinstance(entry, dict) or not is_digest(entry.get("digest")) or not isinstance(entry.get("size"), int):
            raise IntegrityError(f"{where}: manifests[{number}] is not a descriptor")
        annotations = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
        kind = annotations.get(KIND)
        children.append(Child(kind if kind in ("image", "model", "bundle") else None, Digest(entry["digest"]),
                              entry["size"], str(entry.get("mediaType") or OCI_MANIFEST),
                              platform=entry.get("platform") if isinstance(entry.get("platform"), dict) else None,
                              name=str(annotations.get(IMAGE_NAME) or annotations.get(MODEL_NAME) or "")))
    annotations = data.get("annotations") if isinstance(data.get("annotations"), dict) else {}
    return children, {str(k): str(v) for k, v in annotations.items()}


def artifact_type(body: bytes) -> str | None:
    """The artifact type a manifest says it is (OCI 1.1's ``artifactType``, else its config's type)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("artifactType")
    if isinstance(found, str):
        return found
    config = data.get("config")
    return config.get("mediaType") if isinstance(config, dict) else None


def read_artifact(body: bytes, where: str) -> tuple[Blob, Blob | None, list[Blob]]:
    """The bundle artifact's head, its signature (None for an unsigned bundle) and its members."""
    try:
        data = json.loads(body)
        layers = data["layers"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{where}: the bundle's artifact manifest is not one") from None
    blobs = []
    for number, layer in enumerate(layers if isinstance(layers, list) else []):
        annotations = layer.get("annotations") if isinstance(layer, dict) else None
        title = annotations.get(TITLE) if isinstance(annotations, dict) else None
        if not isinstance(title, str) or not is_digest(layer.get("digest")) or not isinstance(layer.get("size"), int):
            raise IntegrityError(f"{where}: layers[{number}] of the bundle's artifact is not a titled blob")
        blobs.append(Blob(title, Digest(layer["digest"]), layer["size"], str(layer.get("mediaType", ""))))
    heads = [b for b in blobs if b.media_type == HEAD_MEDIA]
    if len(heads) != 1:
        raise IntegrityError(f"{where}: the bundle's artifact holds {len(heads)} bundle.json, not one")
    signatures = [b for b in blobs if b.media_type == SIGNATURE_MEDIA]
    members = [b for b in blobs if b.media_type not in (HEAD_MEDIA, SIGNATURE_MEDIA)]
    return heads[0], signatures[0] if signatures else None, members
