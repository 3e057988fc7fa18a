"""SSH signatures: OpenSSH's SSHSIG format (PROTOCOL.sshsig), the one ``ssh-keygen -Y sign`` writes
and ``ssh-keygen -Y verify`` checks, checked here with ``cryptography`` (made by build/signing.py).

A bundle is signed with an OpenSSH ed25519 key: engineers have one or make one offline
(``ssh-keygen -t ed25519``), and every Linux with OpenSSH 8.1 or later verifies the signature
without bundler. The signature covers ``bundle.json`` (which holds every member's sha256) under the
namespace ``bundler``, hashed with sha512 as ssh-keygen does; the one-file restorer beside a signed
bundle gets one of its own, over its bytes (``OUT.pyz.sig``), so that a site checks it with
``ssh-keygen -Y verify`` before running it.

This module runs on the air-gapped side too (verifying): CPython 3.9 syntax, nothing of the
connected side. Where ``cryptography`` is not installed (the one-file restorer leaves it out: it
would carry a native library per platform), a signature is checked by the system's own
``ssh-keygen -Y check-novalidate`` instead; the trust file is read here either way.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from bundler import proc
from bundler.errors import IntegrityError, OperationalError
from bundler.files import CHUNK

MAGIC = b"SSHSIG"
VERSION = 1
NAMESPACE = "bundler"            # ssh-keygen -Y verify -n bundler
HASH_ALGORITHM = "sha512"
ED25519 = "ssh-ed25519"
BEGIN = b"-----BEGIN SSH SIGNATURE-----"
END = b"-----END SSH SIGNATURE-----"
LINE = 70                        # ssh-keygen wraps the base64 at 70 columns
MAX_ARMORED = 16 << 10           # an ed25519 signature is about 300 bytes


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Wire:
    """Reads SSH wire values (uint32, string) from a blob; any shortfall is ``error``."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self.data, self.offset, self.error = data, 0, error

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise self.error
        piece = self.data[self.offset:self.offset + count]
        self.offset += count
        return piece

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self) -> None:
        if self.offset != len(self.data):
            raise self.error


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key as its wire blob: what signatures carry and trust files list."""

    blob: bytes

    @property
    def key_type(self) -> str:
        return _Wire(self.blob, ValueError()).string().decode("ascii", "replace")

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` prints it: SHA256:<unpadded base64>."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def describe(self) -> str:
        name = self.key_type.replace("ssh-", "").upper()
        return f"{name} key {self.fingerprint}"

    def openssh(self) -> str:
        """``ssh-ed25519 AAAA...``: a line of an authorized_keys or .pub file."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    @classmethod
    def from_base64(cls, key_type: str, text: str) -> PublicKey:
        """The key of a ``TYPE BASE64`` pair; ValueError when the base64 does not hold a key of that type."""
        blob = base64.b64decode(text.encode("ascii"), validate=True)
        key = cls(blob)
        if key.key_type != key_type:
            raise ValueError(f"the key is {key.key_type!r}, the line says {key_type!r}")
        return key


@dataclass(frozen=True)
class Signature:
    """One SSHSIG signature, read but not yet checked."""

    key: PublicKey
    namespace: str
    hash_algorithm: str
    algorithm: str                   # of the signature itself: ssh-ed25519
    raw: bytes                       # the signature bytes
    armored: bytes                   # as it was read

    def matches(self, message: bytes) -> bool:
        """Whether this signature, by its own key, is over ``message`` in bundler's namespace."""
        return self._matches(message, None)

    def matches_file(self, path: Path) -> bool:
        """The same for the bytes of the file at ``path``, read a chunk at a time (a restorer is 32 MiB)."""
        return self._matches(None, path)

    def _matches(self, message: bytes | None, path: Path | None) -> bool:
        if self.algorithm != ED25519 or self.key.key_type != ED25519 or self.namespace != NAMESPACE:
            return False
        if self.hash_algorithm not in ("sha256", "sha512"):
            return False
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError:
            return self._checked_by_ssh_keygen(message, path)
        digest = (hashlib.new(self.hash_algorithm, message).digest() if path is None
                  else file_digest(path, self.hash_algorithm))
        wire = _Wire(self.key.blob, ValueError())
        wire.string()
        try:
            public = Ed25519PublicKey.from_public_bytes(wire.string())
            public.verify(self.raw, signed_digest(digest, self.namespace, self.hash_algorithm))
        except (InvalidSignature, ValueError):
            return False
        return True

    def _checked_by_ssh_keygen(self, message: bytes | None, path: Path | None) -> bool:
        import shlex
        import shutil
        import tempfile

        if shutil.which("ssh-keygen") is None:
            raise OperationalError("cannot check the signature: neither the cryptography package nor "
                                   "ssh-keygen (OpenSSH 8.2 or later) is here")
        with tempfile.TemporaryDirectory(prefix="bundler-sig-") as folder:
            signature = Path(folder) / "signed.sig"
            signature.write_bytes(self.armored)
            if path is None:
                path = Path(folder) / "signed"
                path.write_bytes(message)
            # ssh-keygen reads the message on its stdin only, and proc.run's input is text: a redirect
            # passes the exact bytes; both paths are quoted
            command = (f"ssh-keygen -Y check-novalidate -n {NAMESPACE} -s {shlex.quote(str(signature))} "
                       f"< {shlex.quote(str(path))}")
            result = proc.run(command, "ssh-keygen -Y check-novalidate", 60, shell=True)  # noqa: S604
        if result.returncode and "Unknown -Y" in (result.stderr or ""):
            raise OperationalError("cannot check the signature: this ssh-keygen is older than OpenSSH 8.2 "
                                   "and the cryptography package is not here")
        return result.returncode == 0


def signed_data(message: bytes, namespace: str, hash_algorithm: str) -> bytes:
    return signed_digest(hashlib.new(hash_algorithm, message).digest(), namespace, hash_algorithm)


def signed_digest(digest: bytes, namespace: str, hash_algorithm: str) -> bytes:
    """What SSHSIG signs: the message's ``hash_algorithm`` digest, with the namespace (PROTOCOL.sshsig)."""
    return (MAGIC + ssh_string(namespace.encode()) + ssh_string(b"") + ssh_string(hash_algorithm.encode())
            + ssh_string(digest))


def file_digest(path: Path, hash_algorithm: str) -> bytes:
    """The ``hash_algorithm`` digest of the file at ``path``, read a chunk at a time."""
    hasher = hashlib.new(hash_algorithm)
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
    return hasher.digest()


def parse(armored: bytes, where: str) -> Signature:
    """An armored SSH signature (``-----BEGIN SSH SIGNATURE-----``); IntegrityError naming ``where``
    when it is not one."""
    damaged = IntegrityError(f"{where}: not a readable SSH signature")
    text = armored.strip()
    if not text.startswith(BEGIN) or not text.endswith(END) or len(text) > MAX_ARMORED:
        raise damaged
    try:
        blob = base64.b64decode(b"".join(text[len(BEGIN):-len(END)].split()), validate=True)
    except ValueError:
        raise damaged from None
    wire = _Wire(blob, damaged)
    if wire.take(6) != MAGIC:
        raise damaged
    version = wire.uint32()
    if version != VERSION:
        raise IntegrityError(f"{where}: SSH signature version {version}; this bundler reads version {VERSION}")
    key = PublicKey(wire.string())
    namespace = wire.string().decode("utf-8", "replace")
    wire.string()  # reserved
    hash_algorithm = wire.string().decode("ascii", "replace")
    inner = _Wire(wire.string(), damaged)
    wire.end()
    algorithm = inner.string().decode("ascii", "replace")
    raw = inner.string()
    try:
        key.key_type  # noqa: B018 - a key blob that does not start with its type is damage
    except ValueError:
        raise damaged from None
    return Signature(key, namespace, hash_algorithm, algorithm=algorithm, raw=raw, armored=armored)


# ---- signing (the connected side) -------------------------------------------------------------


