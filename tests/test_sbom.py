"""The SBOM: what a test image built with a known dpkg status, an apk db and two dist-info folders
holds, found in the pass that decodes its layers, whiteouts honoured; and ``bundler sbom``."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from bundler import cli
from bundler.build.cache import Cache
from bundler.build.images.layerscan import SCAN_VERSION, LayerScan, image_contents
from bundler.build.sbom import required_by
from bundler.digest import Digest
from bundler.format.archive import read_front
from conftest import write_profile
from testbed import images as tb_images

STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Version: 12.4+deb12u5
Architecture: amd64
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e7a7b88a71b5ffd9e2644e71a0cfab

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: bash
Status: install ok installed
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b2
"""
APK = """\
C:Q1eVxhSYQ5mnb3ziPmb6XsHsxfLrw=
P:musl
V:1.2.4-r2
A:x86_64
o:musl
R:ld-musl-x86_64.so.1

C:Q1ynMcGe2B0l2C7Bmm3ge8E8vlYrg=
P:busybox
V:1.36.1-r5
A:x86_64
o:busybox
F:bin
R:busybox
"""
SITE = "usr/local/lib/python3.11/site-packages"


def metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: s\n\n{'long description ' * 500}\n"


def base_layer() -> bytes:
    return tb_images.layer_tar({
        "usr/lib/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                              'VERSION_ID="12"\nID=debian\n',
        "etc/os-release": "->../usr/lib/os-release",
        "var/lib/dpkg/status": STATUS,
        "lib/apk/db/installed": APK,
        f"{SITE}/numpy-1.26.4.dist-info/METADATA": metadata("numpy", "1.26.4"),
        f"{SITE}/numpy-1.26.4.dist-info/RECORD": "numpy/__init__.py,,\n",
        f"{SITE}/Requests-2.31.0.dist-info/METADATA": metadata("Requests", "2.31.0"),
    })


def removal_layer() -> bytes:
    """What ``apt-get remove bash && pip uninstall requests`` leaves: a rewritten status, a whiteout."""
    status = STATUS[:STATUS.index("Package: bash")]
    return tb_images.layer_tar({"var/lib/dpkg/status": status, f"{SITE}/.wh.Requests-2.31.0.dist-info": b""})


def scan(layer: bytes, piece: int = 4096) -> dict:
    found = LayerScan()
    for at in range(0, len(layer), piece):
        found.feed(layer[at:at + piece])
    return found.findings()


# ---- the scan, on layers made here ---------------------------------------------------------------

@pytest.mark.parametrize("piece", [1, 511, 512, 65536])
def test_the_scan_finds_the_same_whatever_the_pieces(piece):
    assert scan(base_layer(), piece) == scan(base_layer(), 1 << 30)


def test_stacked_layers_list_what_the_image_has():
    contents = image_contents([scan(base_layer()), scan(removal_layer())])
    assert contents.os_release["ID"] == "debian" and contents.os_release["VERSION_ID"] == "12"
    found = {(p.kind, p.name, p.version, p.layer) for p in contents.packages}
    assert found == {("deb", "base-files", "12.4+deb12u5", 0), ("deb", "libc6", "2.36-9+deb12u4", 0),
                     ("apk", "musl", "1.2.4-r2", 0), ("apk", "busybox", "1.36.1-r5", 0),
                     ("pypi", "numpy", "1.26.4", 0)}
    libc = next(p for p in contents.packages if p.name == "libc6")
    assert (libc.source, libc.arch) == ("glibc", "amd64")


def test_an_opaque_folder_hides_what_the_layers_below_had_there():
    lower = tb_images.layer_tar({f"{SITE}/old-1.0.dist-info/METADATA": metadata("old", "1.0"),
                                 "opt/site-packages/other-3.dist-info/METADATA": metadata("other", "3")})
    upper = tb_images.layer_tar({f"{SITE}/.wh..wh..opq": b"", f"{SITE}/new-2.0.dist-info/METADATA": metadata("new", "2.0")})
    contents = image_contents([scan(lower), scan(upper)])
    assert {(p.name, p.layer) for p in contents.packages} == {("other", 0), ("new", 1)}


def test_a_package_installed_early_is_credited_to_its_layer():
    later = STATUS + "\nPackage: curl\nStatus: install ok installed\nVersion: 7.88.1-10\nArchitecture: amd64\n"
    contents = image_contents([scan(base_layer()), scan(tb_images.layer_tar({"var/lib/dpkg/status": later}))])
    layers = {p.name: p.layer for p in contents.packages if p.kind == "deb"}
    assert layers == {"base-files": 0, "libc6": 0, "bash": 0, "curl": 1}


def test_long_names_huge_lines_and_garbage_are_bounded():
    """A pax path of 300 characters, a status line of 10 MB (kept to 64 KiB), and a stream that is
    no tar at all (nothing found, a note)."""
    deep = "a/" * 150 + "site-packages/deep-1.0.dist-info/METADATA"
    huge = "Package: big\nStatus: install ok installed\nVersion: 1\nDescription: " + "x" * (10 << 20) + "\n"
    found = scan(tb_images.layer_tar({deep: metadata("deep", "1.0"), "var/lib/dpkg/status": huge}), 1 << 20)
    assert found["files"][deep] == {"kind": "python", "name": "deep", "version": "1.0"}
    assert found["files"]["var/lib/dpkg/status"]["packages"][0]["name"] == "big"
    garbage = scan(os.urandom(5000))
    assert garbage["files"] == {} and "checksum" in garbage["note"]


# ---- RPM: a real rpmdb.sqlite, written by rpm itself -----------------------------------------------

RPMS = (("acme-tools", "1", "2.1", "3.el9"), ("acme-libs", "", "0.9", "1.el9"), ("acme-old", "", "1.0", "1.el9"))
RPMDB = "var/lib/rpm/rpmdb.sqlite"


@pytest.fixture(scope="module")
def rpm_databases(tmp_path_factory) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """/var/lib/rpm of an image after ``dnf install`` of three packages (as rpm writes it: the
    database, its WAL and shared-memory files), and after ``rpm -e acme-old`` in a later layer."""
    import subprocess
    if not shutil.which("rpm") or not shutil.which("rpmbuild"):
        pytest.fail("rpm and rpmbuild are needed to make a real rpm database (scripts/setup.sh installs rpm)")
    work = tmp_path_factory.mktemp("rpm")
    for name, epoch, version, release in RPMS:
        spec = work / f"{name}.spec"
        spec.write_text(f"Name: {name}\n{f'Epoch: {epoch}' if epoch else ''}\nVersion: {version}\nRelease: {release}\n"
                        "Summary: a test package\nLicense: MIT\nBuildArch: noarch\n%description\na test package\n"
                        "%files\n")
        subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {work / 'top'}", str(spec)], check=True)
    dbpath = work / "root" / "var" / "lib" / "rpm"
    rpm = ["rpm", "--dbpath", str(dbpath)]
    subprocess.run([*rpm, "--initdb"], check=True)
    subprocess.run([*rpm, "-i", "--justdb", "--nodeps", "--noscripts", "--ignorearch",
                    *map(str, sorted((work / "top" / "RPMS" / "noarch").glob("*.rpm")))], check=True,
                   capture_output=True)

    def files() -> dict[str, bytes]:
        return {f"var/lib/rpm/{p.name}": p.read_bytes() for p in dbpath.iterdir() if p.name.startswith("rpmdb")}
    installed = files()
    subprocess.run([*rpm, "-e", "--justdb", "--nodeps", "--noscripts", "acme-old"], check=True, capture_output=True)
    return installed, files()


def rpm_layers(rpm_databases) -> list[bytes]:
    installed, removed = rpm_databases
    release = 'NAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n'
    return [tb_images.layer_tar({"etc/os-release": release, **installed}), tb_images.layer_tar(removed)]


def test_an_rpm_database_is_read_and_a_package_a_later_layer_removed_is_not_listed(rpm_databases):
    from bundler.build.sbom import package_purl
    lower, upper = rpm_layers(rpm_databases)
    assert scan(lower, 1) == scan(lower, 1 << 30)
    found = scan(lower)["files"][RPMDB]
    assert found["kind"] == "rpm" and {p["name"] for p in found["packages"]} == {"acme-tools", "acme-libs", "acme-old"}
    contents = image_contents([scan(lower), scan(upper)])
    packages = {(p.kind, p.name, p.version, p.epoch, p.arch, p.layer) for p in contents.packages}
    assert packages == {("rpm", "acme-tools", "2.1-3.el9", "1", "noarch", 0), ("rpm", "acme-libs", "0.9-1.el9", "", "noarch", 0)}
    tools = next(p for p in contents.packages if p.name == "acme-tools")
    purl = package_purl(tools, contents.os_release["ID"], "rocky-9.3")
    assert str(purl) == ("pkg:rpm/rocky/acme-tools@2.1-3.el9?arch=noarch&distro=rocky-9.3&epoch=1"
                         "&upstream=acme-tools-2.1-3.el9.src.rpm")
    assert not contents.notes


def test_what_the_write_ahead_log_holds_counts(rpm_databases, tmp_path):
    """A layer whose rpmdb.sqlite-wal holds a change not yet checkpointed into the database (a
    snapshot taken while rpm's connection was open): the log's view is the one listed."""
    import sqlite3
    installed, _ = rpm_databases
    database = tmp_path / "rpmdb.sqlite"
    database.write_bytes(installed[RPMDB])
    db = sqlite3.connect(database)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("DELETE FROM Packages WHERE instr(blob, CAST('acme-libs' AS BLOB)) > 0")
        db.commit()
        logged = {RPMDB: database.read_bytes(), f"{RPMDB}-wal": Path(f"{database}-wal").read_bytes()}
    finally:
        db.close()
    assert logged[f"{RPMDB}-wal"]
    names = {p["name"] for p in scan(tb_images.layer_tar(logged))["files"][RPMDB]["packages"]}
    assert names == {"acme-tools", "acme-old"}
    alone = {p["name"] for p in scan(tb_images.layer_tar({RPMDB: logged[RPMDB]}))["files"][RPMDB]["packages"]}
    assert alone == {"acme-tools", "acme-libs", "acme-old"}


def test_a_damaged_rpm_database_is_a_note_not_a_failure():
    found = scan(tb_images.layer_tar({RPMDB: b"SQLite format 3\x00" + os.urandom(5000)}))
    assert RPMDB not in found["files"] and "the rpm database could not be read" in found["note"], found
    older = scan(tb_images.layer_tar({"var/lib/rpm/Packages": os.urandom(5000)}))
    assert older["files"] == {} and "in the Berkeley DB format" in older["note"], older


def test_required_by_reads_the_via_lines_of_uv_and_pip_compile():
    lock = """\
alpha==1.0 \\
    --hash=sha256:aa
    # via -r requirements.in
beta==2.0 \\
    --hash=sha256:bb
    # via
    #   alpha
    #   Gamma_Pkg
gamma-pkg==3 --hash=sha256:cc
    # via alpha
"""
    assert required_by(lock) == {"alpha": [], "beta": ["alpha", "gamma-pkg"], "gamma-pkg": ["alpha"]}


# ---- a bundle of the image, and bundler sbom ------------------------------------------------------

@pytest.fixture(scope="module")
def sbom_image(registry, tmp_path_factory) -> str:
    layout = tb_images.Layout(tmp_path_factory.mktemp("sbom-layout"))
    layout.add("sbom", [tb_images.ImageSpec([base_layer(), removal_layer()], created="2024-05-01T12:00:00Z")])
    ref = f"{registry.host}/team/sbom:1.0"
    layout.push("sbom", ref, docker_format=True)
    return ref


@pytest.fixture(scope="module")
def sbom_profile(sbom_image, registry, index, tmp_path_factory) -> Path:
    return write_profile(tmp_path_factory.mktemp("sbom-profile"), registry.host, [sbom_image], index.url,
                         ["alpha==1.0"], name="sbom")


@pytest.fixture(scope="module")
def sbom_bundle(sbom_profile, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sbom-bundle") / "sbom.tar.zst"
    cache = out.parent / "cache"
    assert cli.main(["build", "--no-restorer", str(sbom_profile), "-o", str(out), "-q", "--cache", str(cache)]) == 0
    return out


def read_sbom(capsys, bundle: Path, *args: str) -> dict:
    assert cli.main(["sbom", str(bundle), *args]) == 0
    return json.loads(capsys.readouterr().out)


def components(data: dict):
    for component in data.get("components", []):
        yield component
        yield from components(component)


def test_the_sbom_lists_exactly_what_the_image_and_the_wheels_hold(sbom_bundle, capsys):
    text = json.dumps(read_sbom(capsys, sbom_bundle))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)
    head = json.loads(read_front(sbom_bundle).head)
    (image,) = [c for c in data["components"] if c["type"] == "container"]
    entry = head["images"][0]
    purl = PackageURL.from_string(image["purl"])
    assert (purl.type, purl.name, purl.version) == ("oci", "sbom", entry["digest"])
    assert purl.qualifiers == {"arch": "amd64", "repository_url": entry["name"].rsplit(":", 1)[0], "tag": "1.0"}
    inside = list(components(image))
    layers = [c for c in inside if c["type"] == "file"]
    assert [c["hashes"][0]["content"] for c in layers] == [Digest(d).hex for d in entry["layer_digests"]]
    (system,) = [c for c in inside if c["type"] == "operating-system"]
    assert (system["name"], system["version"]) == ("debian", "12")
    packages = {(PackageURL.from_string(c["purl"]).type, c["name"], c["version"]) for c in inside
                if c["type"] == "library"}
    assert packages == {("deb", "base-files", "12.4+deb12u5"), ("deb", "libc6", "2.36-9+deb12u4"),
                        ("apk", "musl", "1.2.4-r2"), ("apk", "busybox", "1.36.1-r5"), ("pypi", "numpy", "1.26.4")}
    libc = PackageURL.from_string(next(c["purl"] for c in inside if c["name"] == "libc6"))
    assert (libc.namespace, libc.qualifiers) == ("debian", {"arch": "amd64", "distro": "debian-12", "upstream": "glibc"})
    numpy = next(c for c in inside if c["name"] == "numpy")
    assert numpy["purl"] == "pkg:pypi/numpy@1.26.4"
    assert {"name": "bundler:layer", "value": entry["layer_digests"][0]} in numpy["properties"]

    wheels = {c["name"]: c for c in data["components"] if c["type"] == "library"}
    assert {name: (c["purl"], c["hashes"][0]["content"]) for name, c in wheels.items()} == {
        w["name"]: (f"pkg:pypi/{w['name']}@{w['version']}", w["sha256"]) for w in head["wheels"]}
    edges = {d["ref"]: set(d.get("dependsOn", [])) for d in data["dependencies"]}
    assert edges["pkg:pypi/alpha@1.0"] == {"pkg:pypi/beta@1.0"}
    assert edges[data["metadata"]["component"]["bom-ref"]] == {image["bom-ref"], "pkg:pypi/alpha@1.0"}
    assert edges[system["bom-ref"]] == {c["bom-ref"] for c in inside if c["type"] == "library"
                                        and not c["purl"].startswith("pkg:pypi/")}


def test_an_rpm_based_image_lists_its_rpms_in_the_bundles_sbom(rpm_databases, registry, index, tmp_path, capsys):
    layout = tb_images.Layout(tmp_path / "layout")
    layout.add("rocky", [tb_images.ImageSpec(rpm_layers(rpm_databases))])
    ref = f"{registry.host}/team/rocky:9"
    layout.push("rocky", ref, docker_format=True)
    profile = write_profile(tmp_path, registry.host, [ref], index.url, [], name="rocky")
    out = tmp_path / "rocky.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "-q", "--cache", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    text = json.dumps(read_sbom(capsys, out))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    inside = [c for c in components(json.loads(text)) if c["type"] == "library"]
    assert {c["purl"] for c in inside} == {
        "pkg:rpm/rocky/acme-tools@2.1-3.el9?arch=noarch&distro=rocky-9.3&epoch=1&upstream=acme-tools-2.1-3.el9.src.rpm",
        "pkg:rpm/rocky/acme-libs@0.9-1.el9?arch=noarch&distro=rocky-9.3&upstream=acme-libs-0.9-1.el9.src.rpm"}


def test_the_sbom_is_a_member_right_after_the_head_and_sbom_reads_only_that(sbom_bundle, capsys, tmp_path):
    """``bundler sbom`` needs the file only up to the SBOM's frame: a copy cut right after it works."""
    with zstandard.ZstdDecompressor().stream_reader(open(sbom_bundle, "rb"), read_across_frames=True,
                                                     closefd=True) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        names = []
        for info in tar:
            names.append(info.name)
            if info.name == "bundle.json":
                head = json.loads(tar.extractfile(info).read())
            if info.name == "sbom.cdx.json":
                member = tar.extractfile(info).read()
    layers = {f"images/blobs/sha256/{d.removeprefix('sha256:')}" for i in head["images"] for d in i["layer_digests"]}
    # then the layers (bottom up, test_bundle.py), then the rest by path
    assert names[:2] == ["bundle.json", "sbom.cdx.json"] and set(names[2:2 + len(layers)]) == layers
    assert names[2 + len(layers):] == sorted(names[2 + len(layers):])
    front = read_front(sbom_bundle)
    rest = sbom_bundle.read_bytes()[front.next_frame:]
    decoder = zstandard.ZstdDecompressor().decompressobj()
    decoder.decompress(rest)
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(sbom_bundle.read_bytes()[:front.next_frame + len(rest) - len(decoder.unused_data)])
    assert cut.stat().st_size < sbom_bundle.stat().st_size   # the images and wheels are not there
    out = tmp_path / "sbom.json"
    assert cli.main(["sbom", str(cut), "-o", str(out), "-q"]) == 0
    assert out.read_bytes() == member


def test_a_warm_rebuild_reads_what_each_layer_holds_from_the_cache(sbom_bundle, sbom_profile, tmp_path):
    """The cache kept each layer's findings when it was decoded; a rebuild copies frames and gives
    the same bytes; findings missing from an older cache are found again from the frames."""
    cache = sbom_bundle.parent / "cache"
    head = json.loads(read_front(sbom_bundle).head)
    diff_ids = head["images"][0]["layer_digests"]
    assert all(Cache(cache).meta(SCAN_VERSION, d) is not None for d in diff_ids)
    again = tmp_path / "again.tar.zst"
    assert cli.main(["build", "--no-restorer", str(sbom_profile), "-o", str(again), "-q", "--cache", str(cache)]) == 0
    assert again.read_bytes() == sbom_bundle.read_bytes()
    shutil.rmtree(cache / "meta" / SCAN_VERSION)
    older = tmp_path / "older.tar.zst"
    assert cli.main(["build", "--no-restorer", str(sbom_profile), "-o", str(older), "-q", "--cache", str(cache)]) == 0
    assert older.read_bytes() == sbom_bundle.read_bytes()


def test_an_image_from_the_local_docker_engine_is_scanned_too(dockerd, sbom_image, sbom_profile, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    dockerd.docker("pull", sbom_image)
    dockerd.docker("tag", sbom_image, "myteam/sbom:dev")
    profile = tmp_path / "local.yaml"
    text = sbom_profile.read_text().replace(f"  - {sbom_image}\n", "  - ref: myteam/sbom:dev\n    source: docker\n")
    profile.write_text(text.replace("name: sbom", "name: local"))
    out = tmp_path / "local.tar.zst"
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(out), "-q", "--images-only", "--cache", str(tmp_path / "c")]) == 0
    capsys.readouterr()   # the build's summary line
    data = read_sbom(capsys, out)
    (image,) = data["components"]
    assert PackageURL.from_string(image["purl"]).version == json.loads(read_front(out).head)["images"][0]["id"]
    names = {c["name"] for c in components(image) if c["type"] == "library"}
    assert names == {"base-files", "libc6", "musl", "busybox", "numpy"}


def test_a_bundle_without_an_sbom_says_so(capsys):
    from test_format import GOLDEN
    assert cli.main(["sbom", str(GOLDEN)]) == 2
    assert "holds no SBOM (made by bundler 0.1.0" in capsys.readouterr().err


def test_the_sbom_of_the_test_bed_validates(built_bundle, capsys):
    data = read_sbom(capsys, built_bundle)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(data)) is None
    assert len([c for c in data["components"] if c["type"] == "container"]) == 2
    created = json.loads(read_front(built_bundle).head)["created"]
    assert data["metadata"]["timestamp"] == datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat()


def test_one_image_out_of_the_sbom_for_scanners_that_take_one(built_bundle, capsys):
    whole = read_sbom(capsys, built_bundle)
    tags = json.loads(read_front(built_bundle).head)["images"][1]["tags"]
    one = read_sbom(capsys, built_bundle, "--image", tags[0])
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(one)) is None
    image = next(c for c in whole["components"] if c["type"] == "container" and c["bom-ref"] == "image-2")
    assert one["metadata"]["component"]["purl"] == image["purl"]
    assert one["components"] == image["components"]
    refs = {image["bom-ref"], *(c["bom-ref"] for c in image["components"])}
    assert {d["ref"] for d in one["dependencies"]} == refs
    assert cli.main(["sbom", str(built_bundle), "--image", "nope:1"]) == 2
    assert "no image 'nope:1' in its SBOM (images: " in capsys.readouterr().err
