"""One image's SBOM out of a bundle's: for scanners that take one image (and one distribution) per
file, as trivy does. Plain JSON, no CycloneDX library: this runs on the air-gapped side."""

from __future__ import annotations

import json
import uuid

from bundler.errors import InputError


def image_sbom(data: bytes, wanted: str, where: str) -> bytes:
    """The SBOM of the image named ``wanted`` (its name, a tag, or its ref in the SBOM: image-N):
    the image as the document's subject, what it holds as its components, and their edges."""
    bom = json.loads(data)
    images = [c for c in bom.get("components", []) if c.get("type") == "container"]
    image = next((c for c in images if wanted in _names(c)), None)
    if image is None:
        known = ", ".join(sorted(c.get("name", "?") for c in images)) or "none"
        raise InputError(f"{where}: no image {wanted!r} in its SBOM (images: {known})")
    inside = list(image.get("components", []))
    subject = {key: value for key, value in image.items() if key != "components"}
    refs = {image["bom-ref"], *(c["bom-ref"] for c in inside)}
    dependencies = [{**d, "dependsOn": [r for r in d.get("dependsOn", []) if r in refs]}
                    for d in bom.get("dependencies", []) if d.get("ref") in refs]
    for entry in dependencies:
        if not entry["dependsOn"]:
            del entry["dependsOn"]
    metadata = {**bom.get("metadata", {}), "component": subject}
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"{bom.get('serialNumber', '')}/{image['bom-ref']}")
    one = {**bom, "serialNumber": serial.urn, "metadata": metadata, "components": inside,
           "dependencies": dependencies}
    return (json.dumps(one, indent=1, ensure_ascii=False) + "\n").encode()


def _names(image: dict) -> set[str]:
    names = {image.get("name", ""), image.get("bom-ref", "")}
    for prop in image.get("properties", []):
        if prop.get("name") == "bundler:tags":
            names.update(tag.strip() for tag in prop.get("value", "").split(","))
    return names - {""}
