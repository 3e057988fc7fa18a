"""Signing a bundle's head, and the restorer beside it, with an OpenSSH ed25519 key (``build --sign KEY``):
the SSHSIG signature ``ssh-keygen -Y sign -n bundler`` would write (format/sshsig.py reads and checks
it on both sides)."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.errors import InputError
from bundler.format.sshsig import (
    BEGIN,
    ED25519,
    END,
    HASH_ALGORITHM,
    LINE,
    MAGIC,
    NAMESPACE,
    VERSION,
    PublicKey,
    file_digest,
    signed_data,
    signed_digest,
    ssh_string,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    """An ed25519 private key loaded from an OpenSSH key file."""

    path: Path
    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization
        line = self.private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH)
        return PublicKey(base64.b64decode(line.split()[1]))

    def sign(self, message: bytes) -> bytes:
        """The armored SSHSIG signature of ``message``, as ``ssh-keygen -Y sign -n bundler`` writes it."""
        return self._armored(signed_data(message, NAMESPACE, HASH_ALGORITHM))

    def sign_file(self, path: Path) -> bytes:
        """The same for the bytes of the file at ``path`` (``ssh-keygen -Y sign -n bundler FILE``)."""
        return self._armored(signed_digest(file_digest(path, HASH_ALGORITHM), NAMESPACE, HASH_ALGORITHM))

    def _armored(self, signed: bytes) -> bytes:
        raw = self.private.sign(signed)
        blob = (MAGIC + struct.pack(">I", VERSION) + ssh_string(self.public.blob) + ssh_string(NAMESPACE.encode())
                + ssh_string(b"") + ssh_string(HASH_ALGORITHM.encode())
                + ssh_string(ssh_string(ED25519.encode()) + ssh_string(raw)))
        text = base64.b64encode(blob)
        lines = [text[i:i + LINE] for i in range(0, len(text), LINE)]
        return b"\n".join([BEGIN, *lines, END]) + b"\n"


def key_needs_passphrase(path: Path) -> bool:
    """Whether the OpenSSH private key at ``path`` is protected by a passphrase."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    try:
        serialization.load_ssh_private_key(_read_key(path), password=None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False   # load_signing_key names the problem
    return False


def load_signing_key(path: Path, passphrase: str | None = None) -> SigningKey:
    """An OpenSSH ed25519 private key (``ssh-keygen -t ed25519``), decrypted with ``passphrase`` if it
    has one. Bad input (exit 2) naming the file when it is not one."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    data = _read_key(path)
    try:
        key = serialization.load_ssh_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise InputError(f"{path}: the key is protected by a passphrase; give it in BUNDLER_KEY_PASSPHRASE or "
                         "run on a terminal to be asked") from None
    except UnsupportedAlgorithm as exc:
        raise InputError(f"{path}: cannot read this key ({exc})") from None
    except ValueError as exc:
        if passphrase:
            raise InputError(f"{path}: wrong passphrase, or a damaged key ({exc})") from None
        raise InputError(f"{path}: not an OpenSSH private key ({exc}); make one with "
                         "ssh-keygen -t ed25519 -f KEY") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: a {type(key).__name__.replace('PrivateKey', '').replace('_', '')} key; "
                         "bundler signs with ed25519 keys only (ssh-keygen -t ed25519 -f KEY)")
    return SigningKey(path, key)


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the key: {exc.strerror}") from None
    if b"PRIVATE KEY" not in data[:200]:
        raise InputError(f"{path}: not a private key (give the key file, not KEY.pub)")
    return data
