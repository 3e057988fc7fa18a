"""The SBOM every build writes: CycloneDX 1.6 JSON, made with cyclonedx-python-lib.

What it lists: each image (a ``container`` with a ``pkg:oci`` purl: its manifest digest, platform
and repository), its layers (``file`` components hashed by diff_id), its distribution (an
``operating-system`` component from os-release) and the packages inside it (``pkg:deb`` from
dpkg's status, ``pkg:apk`` from Alpine's installed db, ``pkg:rpm`` from rpmdb.sqlite, ``pkg:pypi``
from every dist-info), each
with the layer that brought it; every bundled wheel (``pkg:pypi`` with its sha256) and the
dependency edges the lock's ``# via`` lines record; every model and dataset (a hub's repository at
its commit, ``pkg:huggingface`` for Hugging Face models) and its files with their sha256. Purls
are written as syft writes them, which is what grype and trivy read: ``distro=ID-VERSION_ID``,
deb's source package in ``upstream``.

What is inside each image was found while its layers were decoded (layerscan.py). The same pins
give the same SBOM: its serial number and timestamp come from the pins, never the clock.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import uuid
from dataclasses import dataclass

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from bundler import __version__
from bundler.build.images.layerscan import ImageContents, Package
from bundler.build.pack import Member
from bundler.digest import Digest
from bundler.format.head import WheelEntry
from bundler.format.images import ImageEntry
from bundler.format.models import HUGGINGFACE, ModelEntry
from bundler.format.paths import SBOM
from bundler.oci.reference import ImageRef, Platform

PROPERTY = "bundler:"


@dataclass(frozen=True, kw_only=True)
class SbomInput:
    """Everything the SBOM describes, as the build has it before the head is written."""

    profile: str
    description: str
    platform: str
    python: str | None
    created: int
    lock_text: str | None
    images: tuple[ImageEntry, ...]
    contents: tuple[ImageContents, ...]          # aligned with ``images``
    wheels: tuple[WheelEntry, ...]
    seed: str                                    # what makes the serial number: the other members' hashes
    models: tuple[ModelEntry, ...] = ()
    # a delta: how each layer (by blob digest), wheel and model file (by sha256 hex) reaches the site,
    # "in the bundle", "as a patch" or "on the site"; None for a full bundle, which carries everything
    delivery: dict[str, str] | None = None

    def reaches(self, digest: str) -> str | None:
        return None if self.delivery is None else self.delivery.get(digest, "in the bundle")


def sbom_member(data: SbomInput) -> Member:
    """The SBOM as the bundle's second member, in a zstd frame of its own (``bundler sbom`` reads that frame)."""
    text = render(data).encode()
    return Member(SBOM, len(text), hashlib.sha256(text).hexdigest(), data=text, alone=True)


def render(data: SbomInput) -> str:
    root = Component(type=ComponentType.APPLICATION, name=data.profile, bom_ref="bundle",
                     description=data.description or None,
                     properties=_properties({"target.platform": data.platform, "target.python": data.python}))
    moment = datetime.datetime.fromtimestamp(data.created, datetime.timezone.utc)
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"bundler-sbom:{data.seed}"),
              metadata=BomMetaData(timestamp=moment, component=root))
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="bundler",
                                                version=__version__))
    edges: dict[Component, list[Component]] = {}    # every component, and what it depends on (or holds)
    for index, (image, contents) in enumerate(zip(data.images, data.contents), 1):
        bom.components.add(_image(edges, image, contents, f"image-{index}", data))
    images = list(bom.components)
    wheels, direct = _wheels(edges, data)
    bom.components.update(wheels)
    models = [_model(edges, model, f"model-{index}", data=data) for index, model in enumerate(data.models, 1)]
    bom.components.update(models)
    edges[root] = images + direct + models
    # Bom.register_dependency searches every edge it has for each one it adds: quadratic, seconds
    # for an SBOM of a few thousand packages. The edges are made once here instead.
    bom.dependencies.update(Dependency(ref=component.bom_ref, dependencies=[Dependency(ref=c.bom_ref) for c in needs])
                            for component, needs in edges.items())
    return JsonV1Dot6(bom).output_as_string(indent=1) + "\n"


def _properties(values: dict[str, object]) -> list[Property]:
    """``bundler:NAME`` properties, leaving out what is unknown."""
    return [Property(name=PROPERTY + name, value=str(value)) for name, value in values.items()
            if value is not None and value != ""]


# ---- images -------------------------------------------------------------------------------------

def image_purl(image: ImageEntry) -> PackageURL:
    """``pkg:oci/NAME@DIGEST?arch=..&repository_url=REGISTRY/REPOSITORY&tag=..`` (purl-spec's oci type)."""
    ref = ImageRef.parse(image.name)
    platform = Platform.parse(image.platform)
    qualifiers = {"arch": platform.architecture, "repository_url": f"{ref.registry}/{ref.repository}"}
    if ref.tag:
        qualifiers["tag"] = ref.tag
    return PackageURL("oci", None, ref.repository.rsplit("/", 1)[-1].lower(), image.digest, qualifiers)


def _image(edges: dict[Component, list[Component]], image: ImageEntry, contents: ImageContents,
           ref: str, data: SbomInput) -> Component:
    sizes = image.layer_sizes or (None,) * image.layer_count
    component = Component(type=ComponentType.CONTAINER, name=image.name, version=image.digest, bom_ref=ref,
                          purl=image_purl(image),
                          properties=_properties({"platform": image.platform, "image_id": image.id,
                                                  "source": image.source, "tags": ", ".join(image.tags)}))
    layers = []
    for number, (diff_id, size, blob) in enumerate(zip(image.layer_digests, sizes, image.blobs), 1):
        layer = Component(type=ComponentType.FILE, name=f"layer {number} of {image.layer_count}",
                          bom_ref=f"{ref}/layer-{number}",
                          hashes=[HashType(alg=HashAlgorithm.SHA_256, content=Digest(diff_id).hex)],
                          properties=_properties({"diff_id": diff_id, "size": size,
                                                  "delivery": data.reaches(blob.digest)}))
        component.components.add(layer)
        layers.append(layer)
    release = contents.os_release
    distro = f"{release.get('ID', '')}-{release.get('VERSION_ID', '')}" if release.get("ID") else None
    system = None
    if release.get("ID"):
        system = Component(type=ComponentType.OPERATING_SYSTEM, name=release["ID"], version=release.get("VERSION_ID"),
                           bom_ref=f"{ref}/os", description=release.get("PRETTY_NAME"))
        component.components.add(system)
    os_packages, python = [], []
    seen: set[str] = set()
    for package in contents.packages:
        purl = package_purl(package, release.get("ID"), distro)
        bom_ref = f"{ref}/{purl}"
        if bom_ref in seen:            # the same package listed twice (two status.d files): once is enough
            continue
        seen.add(bom_ref)
        found = Component(type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=purl,
                          bom_ref=bom_ref, properties=_properties({
                              "layer": image.layer_digests[package.layer], "path": package.path,
                              "source": package.source}))
        component.components.add(found)
        (python if package.kind == "pypi" else os_packages).append(found)
    for found in (*layers, *os_packages, *python):
        edges[found] = []
    if system is not None:
        edges[system] = os_packages
        edges[component] = [system, *python]
    else:
        edges[component] = os_packages + python
    return component


def package_purl(package: Package, distro_id: str | None, distro: str | None) -> PackageURL:
    if package.kind == "pypi":
        return pypi_purl(package.name, package.version)
    qualifiers = {}
    if package.arch:
        qualifiers["arch"] = package.arch
    if distro:
        qualifiers["distro"] = distro
    if package.kind == "deb" and package.source and (package.source != package.name or package.source_version):
        qualifiers["upstream"] = package.source + (f"@{package.source_version}" if package.source_version else "")
    if package.kind == "rpm":
        if package.epoch and package.epoch != "0":
            qualifiers["epoch"] = package.epoch
        if package.source:
            qualifiers["upstream"] = package.source
    return PackageURL(package.kind, distro_id or None, package.name, package.version, qualifiers)


def pypi_purl(name: str, version: str) -> PackageURL:
    """purl-spec's pypi name: lowercase, ``_`` as ``-``."""
    return PackageURL("pypi", None, name.lower().replace("_", "-"), version)


# ---- models -------------------------------------------------------------------------------------

def _model(edges: dict[Component, list[Component]], model: ModelEntry, ref: str, *, data: SbomInput) -> Component:
    """A repository of a hub at its commit, and each of its files with its sha256. Hugging Face models
    get purl-spec's ``pkg:huggingface/ORG/NAME@COMMIT``; purl has no type for datasets or ModelScope."""
    purl = None
    if model.hub == HUGGINGFACE and model.repo_type == "model" and model.commit:
        org, _, name = model.repo.rpartition("/")
        purl = PackageURL("huggingface", org or None, name, model.commit.lower())
    kind = ComponentType.DATA if model.repo_type == "dataset" else ComponentType.MACHINE_LEARNING_MODEL
    component = Component(type=kind, name=model.repo, version=model.commit or model.revision, purl=purl,
                          bom_ref=ref, properties=_properties({"hub": model.hub, "revision": model.revision,
                                                               "repo_type": model.repo_type}))
    files = []
    for number, found in enumerate(model.files, 1):
        file = Component(type=ComponentType.FILE, name=found.path, bom_ref=f"{ref}/file-{number}",
                         hashes=[HashType(alg=HashAlgorithm.SHA_256, content=found.sha256)],
                         properties=_properties({"size": found.size, "delivery": data.reaches(found.sha256)}))
        component.components.add(file)
        edges[file] = []
        files.append(file)
    edges[component] = []
    return component


# ---- wheels -------------------------------------------------------------------------------------

def _wheels(edges: dict[Component, list[Component]], data: SbomInput) -> tuple[list[Component], list[Component]]:
    """Every wheel, and the edges between them; and those the profile asked for itself (every one,
    when the lock does not say who needs what)."""
    components: dict[str, Component] = {}
    for wheel in data.wheels:
        purl = pypi_purl(wheel.name, wheel.version)
        components[_canonical(wheel.name)] = Component(
            type=ComponentType.LIBRARY, name=wheel.name, version=wheel.version, purl=purl, bom_ref=str(purl),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel.sha256)],
            properties=_properties({"filename": wheel.filename, "built_from_sdist": "true" if wheel.built else None,
                                    "delivery": data.reaches(wheel.sha256)}))
    needed_by = required_by(data.lock_text or "")
    direct = []
    children: dict[str, list[Component]] = {}
    for name, component in components.items():
        parents = [p for p in needed_by.get(name, []) if p in components]
        if not parents:
            direct.append(component)
        for parent in parents:
            children.setdefault(parent, []).append(component)
    for name, component in components.items():
        edges[component] = children.get(name, [])
    return list(components.values()), direct


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required_by(lock_text: str) -> dict[str, list[str]]:
    """Each pin's ``# via`` names, as pip-compile and uv annotate a lock (``-r FILE`` is the profile
    itself, left out): ``{"idna": ["requests"]}``."""
    via: dict[str, list[str]] = {}
    current, listing = None, False
    for raw in lock_text.splitlines():
        line = raw.strip()
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==|===)", line)
        if pin:
            current, listing = _canonical(pin.group(1)), False
            via.setdefault(current, [])
            continue
        if current is None or not line.startswith("#"):
            if line and not line.startswith("--"):
                listing = False
            continue
        body = line[1:].strip()
        if body.startswith("via"):
            rest = body[3:].strip()
            listing = not rest
            names = [rest] if rest else []
        elif listing and body:
            names = [body]
        else:
            listing, names = False, []
        for name in names:
            if not name.startswith(("-r", "-c", "--")):
                via[current].append(_canonical(re.sub(r"\[.*\]$", "", name.split()[0])))
    return via
