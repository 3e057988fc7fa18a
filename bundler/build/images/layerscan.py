"""What a layer holds, found while it streams: the package databases and Python distributions an
SBOM lists (sbom.py), read from the layer's tar in the pass that already decodes it.

``LayerScan`` is fed the layer's raw tar bytes in pieces (layers.LayerWriter does, on its own
thread, beside hashing and compressing) and keeps only what it looks for: os-release, dpkg's
status (and distroless ``status.d/``), Alpine's ``lib/apk/db/installed``, and every
``*.dist-info/METADATA`` (or ``*.egg-info/PKG-INFO``) under a ``site-packages`` or
``dist-packages`` folder, parsed line by line so that memory stays bounded whatever their size;
RPM's ``rpmdb.sqlite`` (RHEL 9, Rocky, Fedora; with its write-ahead log when the layer has one),
spooled to a temporary file and read with sqlite3 once the layer ends; and the layer's whiteouts.
Older RPM databases (Berkeley DB: RHEL 8 and before, CentOS 7) are not read: a note says so. Its
findings are a small JSON value that the cache keeps per diff_id, so a rebuild from a warm cache
never decodes the layer again.

``image_contents`` stacks the findings of an image's layers as the engine would: a whiteout
(``.wh.NAME``) removes NAME from the layers below, an opaque folder (``.wh..wh..opq``) everything
they had in it, and a file in a later layer replaces the earlier one.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SCAN_VERSION = "scan-2"          # the cache's key for findings: a parser that changes what it finds bumps it
BLOCK = 512
_ZEROS = bytes(BLOCK)
MAX_LINE = 64 << 10              # longer lines (a package's file list) are cut: only short fields are kept
MAX_PAX = 1 << 20
MAX_FIELD_LINES = 64             # a METADATA header block is read no further
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
APK_INSTALLED = "lib/apk/db/installed"
RPM_SQLITE = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
RPM_WAL = "-wal"                 # beside the database: what was written and not yet checkpointed into it
RPM_BERKELEY = ("var/lib/rpm/Packages", "usr/lib/sysimage/rpm/Packages")
MAX_RPMDB = 1 << 30              # a larger database is not read (real ones are tens of MiB)
SPOOL_IN_MEMORY = 8 << 20        # an rpm database held in memory up to this, on disk beyond
# rpm's header tags the SBOM keeps (rpmtag.h), and the types it reads them as
_RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1022: "arch", 1044: "sourcerpm"}
_RPM_INT32, _RPM_STRING, _RPM_I18NSTRING = 4, 6, 9
_PYTHON_METADATA = re.compile(r"(.*/)?(site|dist)-packages/[^/]+\.(dist-info/METADATA|egg-info/PKG-INFO)\Z")


def wanted(path: str) -> str | None:
    """The kind of file ``path`` is, if it is one the SBOM reads."""
    if path in OS_RELEASE:
        return "os-release"
    if path == DPKG_STATUS or (path.startswith(DPKG_STATUS_D) and "/" not in path[len(DPKG_STATUS_D):]
                               and not path.endswith(".md5sums")):
        return "dpkg"
    if path == APK_INSTALLED:
        return "apk"
    if path in RPM_SQLITE:
        return "rpm"
    if path.endswith(RPM_WAL) and path[:-len(RPM_WAL)] in RPM_SQLITE:
        return "rpm-wal"
    if path in RPM_BERKELEY:
        return "rpm-berkeley"
    if _PYTHON_METADATA.match(path):
        return "python"
    return None


# ---- the files it reads, line by line ------------------------------------------------------------

class _Lines:
    """Bytes in, whole lines to ``on_line`` (cut at MAX_LINE), and an empty line at the end."""

    def __init__(self, on_line: Callable[[str], bool]) -> None:
        self.on_line = on_line            # returns False when it wants no more lines
        self._partial = bytearray()
        self._cut = False
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        start = 0
        while not self.done:
            end = data.find(b"\n", start)
            if end < 0:
                room = MAX_LINE - len(self._partial)
                if room > 0 and not self._cut:
                    self._partial += data[start:start + room]
                self._cut = self._cut or len(data) - start > room
                return
            if not self._cut:
                self._partial += data[start:end][:max(MAX_LINE - len(self._partial), 0)]
            self._line()
            start = end + 1

    def _line(self) -> None:
        line = self._partial.decode("utf-8", "replace").rstrip("\r")
        self._partial.clear()
        self._cut = False
        if not self.on_line(line):
            self.done = True

    def finish(self) -> None:
        if not self.done and (self._partial or self._cut):
            self._line()
        if not self.done:
            self.on_line("")


class Stanzas:
    """Paragraphs of ``Field: value`` (dpkg status) or ``X:value`` (apk) lines, only the fields asked for."""

    def __init__(self, fields: dict[str, str], separator: str) -> None:
        self.fields, self.separator = fields, separator   # what a line starts with -> the key kept
        self.found: list[dict[str, str]] = []
        self._current: dict[str, str] = {}
        self.lines = _Lines(self._line)

    def _line(self, line: str) -> bool:
        if not line.strip():
            if self._current:
                self.found.append(self._current)
                self._current = {}
            return True
        name, sep, value = line.partition(self.separator)
        if sep and not line[:1].isspace() and name in self.fields:
            self._current[self.fields[name]] = value.strip()
        return True


class Headers:
    """The header block of a METADATA (or PKG-INFO) file, or the lines of os-release."""

    def __init__(self, separator: str, stop_at_blank: bool) -> None:
        self.separator, self.stop_at_blank = separator, stop_at_blank
        self.found: dict[str, str] = {}
        self._count = 0
        self.lines = _Lines(self._line)

    def _line(self, line: str) -> bool:
        self._count += 1
        if not line.strip():
            return not self.stop_at_blank
        name, sep, value = line.partition(self.separator)
        if sep and not line[:1].isspace() and name.strip() not in self.found:
            self.found[name.strip()] = value.strip()
        return self._count < MAX_FIELD_LINES or not self.stop_at_blank


def _reader(kind: str) -> Stanzas | Headers:
    if kind == "dpkg":
        return Stanzas({"Package": "name", "Status": "status", "Version": "version", "Architecture": "arch",
                        "Source": "source"}, ":")
    if kind == "apk":
        return Stanzas({"P": "name", "V": "version", "A": "arch", "o": "origin"}, ":")
    if kind == "python":
        return Headers(":", stop_at_blank=True)
    return Headers("=", stop_at_blank=False)


def _result(kind: str, reader: Stanzas | Headers) -> dict:
    if kind == "dpkg":
        packages = []
        for stanza in reader.found:
            if stanza.get("status", "install ok installed").split()[-1:] != ["installed"]:
                continue
            if "name" in stanza and "version" in stanza:
                source, _, source_version = stanza.get("source", "").partition(" ")
                packages.append({"name": stanza["name"], "version": stanza["version"], "arch": stanza.get("arch", ""),
                                 "source": source, "source_version": source_version.strip("()")})
        return {"kind": kind, "packages": packages}
    if kind == "apk":
        return {"kind": kind, "packages": [{"name": s["name"], "version": s["version"], "arch": s.get("arch", ""),
                                            "origin": s.get("origin", "")}
                                           for s in reader.found if "name" in s and "version" in s]}
    if kind == "python":
        return {"kind": kind, "name": reader.found.get("Name", ""), "version": reader.found.get("Version", "")}
    values = {}
    for key, value in reader.found.items():
        try:
            values[key] = " ".join(shlex.split(value)) if value else ""
        except ValueError:
            values[key] = value.strip("\"'")
    return {"kind": kind, "fields": {k: values[k] for k in ("ID", "VERSION_ID", "NAME", "PRETTY_NAME") if k in values}}


# ---- the tar stream -------------------------------------------------------------------------------

class LayerScan:
    """A layer's tar, fed in pieces of any size; ``findings()`` once it has all been fed.

    A stream that is not a tar (or a damaged header) ends the scan quietly with a note: the layer
    itself was checked against its diff_id, the SBOM only lists less."""

    def __init__(self) -> None:
        self._block = bytearray()
        self._remaining = 0               # bytes of the current entry's data still to come
        self._padding = 0
        self._sink: Callable[[bytes], None] | None = None
        self._on_end: Callable[[], None] | None = None
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._stopped = False
        self.files: dict[str, dict] = {}
        self.links: dict[str, str] = {}
        self.whiteouts: list[str] = []
        self.opaque: list[str] = []
        self.note: str | None = None
        self._spools: dict[str, IO[bytes]] = {}    # rpm databases (and their logs), read when the layer ends

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            self._feed(data)
        except Exception as exc:  # noqa: BLE001 - a layer the scan cannot read is listed less, never refused
            self._stop(f"the scan stopped ({type(exc).__name__}: {exc})")

    def _feed(self, data: bytes) -> None:
        view, at = memoryview(data), 0
        while at < len(view) and not self._stopped:
            if self._remaining:
                take = min(self._remaining, len(view) - at)
                if self._sink is not None:
                    self._sink(bytes(view[at:at + take]))
                self._remaining -= take
                at += take
                if not self._remaining:
                    self._end_entry()
            elif self._padding:
                take = min(self._padding, len(view) - at)
                self._padding -= take
                at += take
            else:
                take = min(BLOCK - len(self._block), len(view) - at)
                self._block += view[at:at + take]
                at += take
                if len(self._block) == BLOCK:
                    block = bytes(self._block)
                    self._block.clear()
                    self._header(block)

    def _stop(self, note: str | None) -> None:
        self._stopped = True
        if note:
            self._add_note(note)

    def _end_entry(self) -> None:
        if self._on_end is not None:
            self._on_end()
        self._sink = self._on_end = None

    def _header(self, block: bytes) -> None:
        if block == _ZEROS:
            self._stop(None)              # the archive's end
            return
        stored = _number(block[148:156])   # the sum of the header's bytes, as unsigned or (old writers) signed bytes
        if stored is None or (stored != sum(block[:148]) + 8 * 32 + sum(block[156:])
                              and stored != 8 * 32 + sum(b - 256 * (b > 127) for b in block[:148] + block[156:])):
            self._stop("a tar header's checksum does not match; the rest of the layer was not scanned")
            return
        size = _number(block[124:136])
        if size is None:
            self._stop("a tar header's size is not a number; the rest of the layer was not scanned")
            return
        kind = block[156:157]
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345:346] != b"\x00":
            name = _text(block[345:500]) + "/" + name
        self._padding = -size % BLOCK
        self._remaining = size
        if kind in (b"x", b"L"):
            buffer = bytearray()
            self._sink = lambda data: buffer.extend(data[:max(MAX_PAX - len(buffer), 0)])
            self._on_end = (lambda: self._pax.update(_pax_records(bytes(buffer)))) if kind == b"x" else \
                (lambda: setattr(self, "_long_name", _text(bytes(buffer))))
        elif kind in (b"g", b"K"):
            self._sink = None
        else:
            path = self._pax.pop("path", None) or self._long_name or name
            link = self._pax.pop("linkpath", None) or _text(block[157:257])
            if "size" in self._pax:
                size = int(self._pax.pop("size")) if self._pax["size"].isdigit() else size
                self._remaining, self._padding = size, -size % BLOCK
            self._pax, self._long_name = {}, None
            self._entry(_clean(path), kind, link)
        if not self._remaining:
            self._end_entry()

    def _entry(self, path: str, kind: bytes, link: str) -> None:
        folder, _, base = path.rpartition("/")
        if base == OPAQUE:
            self.opaque.append(folder)
            return
        if base.startswith(WHITEOUT):
            self.whiteouts.append(f"{folder}/{base[len(WHITEOUT):]}" if folder else base[len(WHITEOUT):])
            return
        found = wanted(path)
        if found is None:
            return
        if kind == b"2" and found == "os-release":
            self.links[path] = link
        elif found == "rpm-berkeley" and kind in (b"0", b"\x00", b"7"):
            self._add_note(f"{path}: an rpm database in the Berkeley DB format (RHEL 8 and older), which the "
                           "SBOM does not read: its packages are not listed")
        elif found in ("rpm", "rpm-wal") and kind in (b"0", b"\x00", b"7"):
            if self._remaining > MAX_RPMDB:
                self._add_note(f"{path}: {self._remaining >> 20} MiB, larger than an rpm database is read")
                return
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)   # noqa: SIM115 - closed in findings
            self._sink = spool.write
            self._on_end = lambda: self._keep_spool(path, spool)
        elif kind in (b"0", b"\x00", b"7"):
            reader = _reader(found)
            self._sink = reader.lines.feed

            def done() -> None:
                reader.lines.finish()
                self.files[path] = _result(found, reader)
            self._on_end = done

    def _keep_spool(self, path: str, spool: IO[bytes]) -> None:
        """A whole rpm database (or log), read when the layer ends; a later copy in the same tar wins."""
        if path in self._spools:
            self._spools[path].close()
        self._spools[path] = spool

    def _add_note(self, note: str) -> None:
        self.note = f"{self.note}; {note}" if self.note else note

    def _read_rpm(self) -> None:
        """The rpm databases the layer holds, each with its write-ahead log when the layer has one."""
        try:
            for path, spool in self._spools.items():
                if wanted(path) != "rpm":
                    continue
                try:
                    packages = rpm_packages(spool, self._spools.get(path + RPM_WAL))
                    self.files[path] = {"kind": "rpm", "packages": packages}
                except Exception as exc:  # noqa: BLE001 - sqlite3's errors, a short header, no sqlite3 at all
                    self._add_note(f"{path}: the rpm database could not be read ({type(exc).__name__}: {exc}); its "
                                   "packages are not listed")
        finally:
            for spool in self._spools.values():
                spool.close()
            self._spools.clear()

    def findings(self) -> dict:
        """What the layer holds, as the cache keeps it (JSON)."""
        self._read_rpm()
        if not self._stopped and (self._remaining or self._block):
            self.note = "the layer's tar ends inside an entry"
        found = {"files": self.files, "links": self.links, "whiteouts": self.whiteouts, "opaque": self.opaque}
        if self.note:
            found["note"] = self.note
        return found


def _number(field: bytes) -> int | None:
    if field[:1] in (b"\x80", b"\xff"):   # base-256, for sizes past 8 GiB
        value = int.from_bytes(field[1:], "big")
        return -value if field[:1] == b"\xff" else value
    text = field.replace(b"\x00", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _clean(path: str) -> str:
    while path.startswith(("./", "/")):
        path = path[2:] if path.startswith("./") else path[1:]
    return path.rstrip("/")


def _pax_records(data: bytes) -> dict[str, str]:
    """``LENGTH KEY=VALUE\\n`` records: the ones that rename or resize the next entry."""
    records, at = {}, 0
    while at < len(data):
        space = data.find(b" ", at)
        if space < 0 or not data[at:space].isdigit():
            break
        length = int(data[at:space])
        if length <= 0:
            break
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        if key in (b"path", b"linkpath", b"size"):
            records[key.decode()] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


# ---- rpm's database ------------------------------------------------------------------------------

def rpm_packages(database: IO[bytes], wal: IO[bytes] | None = None) -> list[dict]:
    """The packages of an ``rpmdb.sqlite`` (and its write-ahead log), read with sqlite3 from a copy in a
    temporary folder: the ``Packages`` table holds each package's rpm header."""
    import sqlite3  # here, not at the top: a Python built without it still builds, and lists no rpm

    with tempfile.TemporaryDirectory(prefix="bundler-rpmdb-") as folder:
        copy = Path(folder) / "rpmdb.sqlite"
        for source, target in ((database, copy), (wal, copy.with_name(copy.name + RPM_WAL))):
            if source is not None:
                source.seek(0)
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
        with contextlib.closing(sqlite3.connect(copy)) as db:
            rows = db.execute("SELECT blob FROM Packages").fetchall()
    packages = []
    for (blob,) in rows:
        fields = rpm_header(bytes(blob))
        if "name" not in fields or "version" not in fields or fields["name"] == "gpg-pubkey":
            continue   # a signing key rpm keeps as a package, not software
        version = fields["version"] + (f"-{fields['release']}" if fields.get("release") else "")
        packages.append({"name": fields["name"], "version": version, "epoch": fields.get("epoch", ""),
                         "arch": fields.get("arch", ""), "source": fields.get("sourcerpm", "")})
    return packages


def rpm_header(blob: bytes) -> dict[str, str]:
    """The fields bundler keeps of one rpm header as rpm stores it (no lead magic): a count of index
    entries and the data's length, the entries (tag, type, offset, count; big-endian), then the data."""
    count, length = struct.unpack_from(">II", blob)
    start = 8 + 16 * count
    if start + length > len(blob):
        raise ValueError("an rpm header is shorter than its index says")
    found = {}
    for number in range(count):
        tag, kind, offset, _ = struct.unpack_from(">iIiI", blob, 8 + 16 * number)
        name = _RPM_TAGS.get(tag)
        if name is None or not 0 <= offset < length:
            continue
        at = start + offset
        if kind in (_RPM_STRING, _RPM_I18NSTRING):
            end = blob.find(b"\x00", at, start + length)
            found[name] = blob[at:end if end >= 0 else start + length].decode("utf-8", "replace")
        elif kind == _RPM_INT32:
            found[name] = str(struct.unpack_from(">I", blob, at)[0])
    return found


# ---- an image: its layers stacked --------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Package:
    kind: str                        # deb | apk | rpm | pypi
    name: str
    version: str                     # rpm: VERSION-RELEASE
    arch: str = ""
    source: str = ""                 # deb: the source package; apk: the origin; rpm: the source rpm
    source_version: str = ""
    layer: int = 0                   # the index of the layer that brought it
    path: str = ""                   # the file that lists it
    epoch: str = ""                  # rpm: the epoch, when the package has one


@dataclass(frozen=True)
class ImageContents:
    os_release: dict[str, str]
    packages: tuple[Package, ...]
    notes: tuple[str, ...] = ()


def image_contents(layers: list[dict]) -> ImageContents:
    """The packages an image has once its layers (their findings, bottom first) are stacked."""
    files: dict[str, tuple[dict, int]] = {}
    links: dict[str, str] = {}
    for index, layer in enumerate(layers):
        hidden = [folder + "/" for folder in layer.get("opaque", [])]
        gone = list(layer.get("whiteouts", []))
        for table in (files, links):
            for path in list(table):
                if any(path.startswith(folder) for folder in hidden) or \
                        any(path == g or path.startswith(g + "/") for g in gone):
                    del table[path]
        for path, found in layer.get("files", {}).items():
            files[path] = (found, index)
            links.pop(path, None)
        for path, target in layer.get("links", {}).items():
            links[path] = target
            files.pop(path, None)
    release = next((files[p][0]["fields"] for p in OS_RELEASE if p in files), {})
    distro = release.get("ID", "")
    packages = []
    for path, (found, index) in sorted(files.items()):
        if found["kind"] in ("dpkg", "apk", "rpm"):
            kind = {"dpkg": "deb", "apk": "apk", "rpm": "rpm"}[found["kind"]]
            for entry in found["packages"]:
                first = _first_layer(layers, path, found["kind"], entry=entry, last=index)
                packages.append(Package(kind=kind, name=entry["name"], version=entry["version"],
                                        arch=entry.get("arch", ""),
                                        source=entry.get("source") or entry.get("origin", ""),
                                        source_version=entry.get("source_version", ""), layer=first, path=path,
                                        epoch=entry.get("epoch", "")))
        elif found["kind"] == "python" and found["name"] and found["version"]:
            packages.append(Package(kind="pypi", name=found["name"], version=found["version"], layer=index, path=path))
    notes = tuple(f"layer {i + 1}: {layer['note']}" for i, layer in enumerate(layers) if layer.get("note"))
    if packages and not distro and any(p.kind != "pypi" for p in packages):
        notes += ("no os-release: OS packages are listed without their distribution",)
    return ImageContents(release, tuple(packages), notes)


def _first_layer(layers: list[dict], path: str, kind: str, *, entry: dict, last: int) -> int:
    """The earliest layer, up to ``last``, whose copy of the database already listed this package at
    this version: the layer that installed it (a later layer rewrites the whole database)."""
    for index in range(last + 1):
        found = layers[index].get("files", {}).get(path)
        if found and found["kind"] == kind and any(
                p["name"] == entry["name"] and p["version"] == entry["version"] for p in found["packages"]):
            return index
    return last
