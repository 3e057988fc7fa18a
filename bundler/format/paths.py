"""Where things are in a bundle and beside it: the member paths, the frames after the head, and the
files a build writes next to the bundle. Every reader and writer takes these names from here.

Air-gapped side too: CPython 3.9.
"""

from __future__ import annotations

from bundler.digest import Digest

HEAD = "bundle.json"             # the first member, in a zstd frame of its own
SIGNATURE_FRAME = 0x184D2A5B     # the zstd skippable frame after the head's that holds its signature (trust.py)
SBOM = "sbom.cdx.json"           # the second member, in the frame after those: CycloneDX 1.6 JSON (build/sbom.py)
RESTORER_SUFFIX = ".pyz"         # the one-file restorer beside a bundle: OUT.pyz (build/restorer.py makes it)
SIGNATURE_SUFFIX = ".sig"        # beside a signed bundle: OUT.sig (of bundle.json) and OUT.pyz.sig (of its restorer)

LAYOUT_DIR = "images"            # one OCI image layout for every image, with docker's manifest.json
WHEELS_DIR = "wheels"
REQUIREMENTS = "requirements.lock"
MODELS_DIR = "models"            # format 2: model files, each once under its sha256 (models.py)
OCI_LAYOUT = "oci-layout"
OCI_INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"


def blob_path(digest: str) -> str:
    """Where a blob lives inside an OCI image layout."""
    return f"blobs/sha256/{Digest(digest).hex}"


def layout_path(name: str) -> str:
    """A file of the image layout, as a member path of the bundle."""
    return f"{LAYOUT_DIR}/{name}"


def wheel_path(filename: str) -> str:
    return f"{WHEELS_DIR}/{filename}"


def model_blob_path(sha256_hex: str) -> str:
    """Where a model file lives in the bundle: once, by content, whichever repositories share it."""
    return f"{MODELS_DIR}/blobs/sha256/{Digest.from_hex(sha256_hex).hex}"


def restorer_beside(bundle_name: str) -> str:
    """The file name of the restorer beside a bundle named ``bundle_name`` (its base, when split)."""
    return bundle_name + RESTORER_SUFFIX


def signature_beside(name: str) -> str:
    """The file name of the signature beside the file named ``name``: ``ssh-keygen -Y verify -s`` reads it."""
    return name + SIGNATURE_SUFFIX


def unsafe_path(path: str) -> str | None:
    """Why ``path`` may not name a member (absolute, ``..``, empty parts, backslashes, control
    characters), or None when it is safe."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path or any(ord(c) < 32 for c in path):
        return "backslash or control character"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "empty, '.' or '..' component"
    return None
