"""Trust at the gap: which keys a site accepts bundles from, and the check every reader makes.

A signed bundle carries, in a zstd skippable frame right after its head's frame (format.py's
SIGNATURE_FRAME), the SSH signature of bundle.json followed by the exact bundle.json bytes it signs
(sshsig.py). Every zstd decoder skips that frame, so bundler 0.1.0 and ``zstd -dc | tar -x`` read
a signed bundle as before; ``OUT.sig`` beside the bundle holds the same signature for stock tools.

The check (``check``): a signature that is present must match what it signs, and the bundle.json
in the file must be the signed one (else exit 3, naming the member or key that changed). With a
trust file (``--trust FILE``, or ``trust:`` in the user's or the site's config.yaml), the bundle
must also be signed, by a key that file lists. Without one, the check says who signed it.

The trust file is OpenSSH's allowed_signers format (``ssh-keygen -Y verify -f``), whose lines may
also be plain public keys (a ``.pub`` file, or authorized_keys lines). This is the air-gapped side:
CPython 3.9 syntax, nothing of the connected side.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bundler.errors import InputError, IntegrityError
from bundler.format import sshsig
from bundler.format.archive import Front, read_front
from bundler.format.head import Head
from bundler.format.paths import HEAD
from bundler.format.sshsig import PublicKey, Signature
from bundler.yamlfile import Doc, read_text

CONFIG_FILE = "config.yaml"
_KEY_TYPE = re.compile(r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+)\Z")


# ---- the trust file -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedKey:
    principals: str                  # as the line names them (comma-separated patterns), or the key's comment
    key: PublicKey
    namespaces: tuple[str, ...] | None = None   # patterns; None: any
    valid_after: datetime.datetime | None = None
    valid_before: datetime.datetime | None = None
    line: int = 0

    def accepts(self, signature: Signature, now: datetime.datetime) -> bool:
        if self.key.blob != signature.key.blob:
            return False
        if self.namespaces is not None and not any(fnmatch.fnmatchcase(signature.namespace, pattern)
                                                   for pattern in self.namespaces):
            return False
        if self.valid_after is not None and now < self.valid_after:
            return False
        return self.valid_before is None or now < self.valid_before


@dataclass(frozen=True)
class TrustFile:
    path: Path
    keys: tuple[TrustedKey, ...]

    def signer(self, signature: Signature, now: datetime.datetime | None = None) -> TrustedKey | None:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return next((key for key in self.keys if key.accepts(signature, now)), None)


def read_trust_file(path: Path) -> TrustFile:
    """An allowed_signers file (``principals [options] keytype base64 [comment]``) or public key
    lines (``keytype base64 [comment]``). Bad input (exit 2) naming the file and line.

    Lines marked ``cert-authority`` are skipped (bundler signs with plain keys, not certificates);
    ``namespaces=`` and ``valid-after=``/``valid-before=`` are honoured as ssh-keygen does."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such trust file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the trust file ({exc})") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = _trusted_key(line, number)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: {exc}") from None
        if key is not None:
            keys.append(key)
    if not keys:
        raise InputError(f"{path}: lists no key (expected allowed_signers lines or public keys)")
    return TrustFile(path, tuple(keys))


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at ``separator`` outside double quotes, the quotes kept."""
    if text.count('"') % 2:
        raise ValueError("a quote is not closed")
    return re.findall(rf'(?:[^{re.escape(separator)}"]|"[^"]*")+', text)


def _trusted_key(line: str, number: int) -> TrustedKey | None:
    words = [w for w in _split(line.replace("\t", " "), " ") if w]
    if _KEY_TYPE.match(words[0]):           # a public key line: its comment names it
        return TrustedKey(" ".join(words[2:]) or "(no comment)", _key(words, 0), line=number)
    if len(words) < 3:
        raise ValueError("expected: principals [options] keytype base64-key [comment]")
    principals, options, at = words[0], {}, 1
    if not _KEY_TYPE.match(words[1]):
        options, at = _options(words[1]), 2
    if "cert-authority" in options:
        return None
    namespaces = tuple(options["namespaces"].split(",")) if "namespaces" in options else None
    return TrustedKey(principals, _key(words, at), namespaces, valid_after=_moment(options.get("valid-after")),
                      valid_before=_moment(options.get("valid-before")), line=number)


def _key(words: list[str], at: int) -> PublicKey:
    if len(words) <= at + 1:
        raise ValueError(f"{words[at]}: the key's base64 is missing")
    try:
        return PublicKey.from_base64(words[at], words[at + 1])
    except ValueError as exc:
        raise ValueError(f"not a {words[at]} public key ({exc})") from None


def _options(text: str) -> dict[str, str]:
    options = {}
    for part in _split(text, ","):
        name, _, value = part.partition("=")
        value = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
        if name not in ("cert-authority", "namespaces", "valid-after", "valid-before"):
            raise ValueError(f"unknown option {name!r} (allowed_signers knows cert-authority, namespaces, "
                             "valid-after, valid-before)")
        options[name] = value
    return options


def _moment(text: str | None) -> datetime.datetime | None:
    """``YYYYMMDD[HHMM[SS]][Z]`` as ssh-keygen reads it (local time unless Z)."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d{8})(\d{4})?(\d{2})?(Z?)", text)
    if not match:
        raise ValueError(f"{text!r} is not a time (YYYYMMDD[HHMM[SS]][Z])")
    moment = datetime.datetime.strptime("".join(g or "" for g in match.groups()[:3]).ljust(14, "0"), "%Y%m%d%H%M%S")
    if match.group(4):
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone()


# ---- where the trust file is configured -------------------------------------------------------

def config_files() -> list[Path]:
    """config.yaml in the user's config folder, then the site's (``$XDG_CONFIG_DIRS``, /etc/xdg)."""
    import platformdirs
    user = Path(platformdirs.user_config_dir("bundler")) / CONFIG_FILE
    sites = [Path(folder) / CONFIG_FILE for folder in platformdirs.site_config_dir("bundler", multipath=True)
             .split(os.pathsep)]
    return [user, *sites]


def configured_trust(explicit: Path | None) -> Path | None:
    """The trust file: ``explicit`` (--trust), else ``trust:`` of the first config.yaml that has one."""
    if explicit is not None:
        return explicit
    for path in config_files():
        if not path.is_file():
            continue
        doc = Doc(path)
        data = doc.load_text(read_text(path, InputError))
        if data is None:
            continue
        data = doc.mapping(data, "", 1, allowed={"trust"})
        if "trust" in data:
            value = doc.string(data["trust"], "trust", data.lines["trust"])
            return path.parent / Path(value).expanduser()
    return None


# ---- the check ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignatureCheck:
    """What the check found: who signed the bundle, and who trusts that key."""

    signer: PublicKey | None          # None: not signed
    trusted_as: str | None = None     # the principals of the trust file's line
    trust_file: Path | None = None

    def describe(self) -> str:
        """The one line verify and restore print."""
        if self.signer is None:
            return "the bundle is not signed (nothing proves who made it; bundler build --sign KEY)"
        if self.trusted_as is not None:
            return f"signed by {self.trusted_as} ({self.signer.describe()}), trusted by {self.trust_file}"
        return f"signed by {self.signer.describe()}; no trust file names the keys to accept (--trust FILE)"


@dataclass(frozen=True)
class CheckedHead:
    head: Head
    head_sha256: str                  # of bundle.json's bytes: iter_members checks the streamed one against it
    signature: SignatureCheck
    front: Front | None = None        # a bundle file's start; None for a bundle read from a registry


def split_frame(payload: bytes, where: str) -> tuple[bytes, bytes]:
    """The signature frame's content: the armored signature, then the bundle.json it signs."""
    end = payload.find(sshsig.END)
    if not payload.startswith(sshsig.BEGIN) or end < 0:
        raise IntegrityError(f"{where}: the signature frame does not hold an SSH signature")
    cut = end + len(sshsig.END)
    if payload[cut:cut + 1] == b"\n":
        cut += 1
    return payload[:cut], payload[cut:]


def signature_payload(armored: bytes, head: bytes) -> bytes:
    return armored + head


def open_bundle(path: Path, trust: TrustFile | None) -> CheckedHead:
    """The bundle's head once its signature was checked (see the module's docstring); exit 3 for a
    signature that does not match, a head changed after signing, or, with ``trust``, an unsigned
    bundle or a key the trust file does not list. Reads kilobytes."""
    front = read_front(path)
    armored = None
    if front.signature is not None:
        armored, signed = split_frame(front.signature, str(path))
        signature = sshsig.parse(armored, f"{path}: its signature")
        if signed != front.head and signature.matches(signed):
            raise IntegrityError(f"{path}: {_first_change(signed, front.head)}, changed after "
                                 f"{signature.key.describe()} signed it: forged; nothing was loaded")
    head, check = checked_head(front.head, armored, trust, str(path))
    return CheckedHead(head, hashlib.sha256(front.head).hexdigest(), check, front=front)


def checked_head(data: bytes, armored: bytes | None, trust: TrustFile | None,
                 where: str) -> tuple[Head, SignatureCheck]:
    """bundle.json's bytes, read once ``armored`` (its SSH signature, or None when unsigned) was checked
    against them and ``trust``: exit 3 for a signature that does not match, or, with ``trust``, an
    unsigned head or a key the trust file does not list. ``where`` (a file, a registry reference)
    starts every error."""
    check = SignatureCheck(None, trust_file=trust.path if trust else None)
    if armored is not None:
        signature = sshsig.parse(armored, f"{where}: its signature")
        if not signature.matches(data):
            raise IntegrityError(f"{where}: its signature ({signature.key.describe()}) does not match what it signs: "
                                 "damaged, or forged; nothing was loaded")
        check = SignatureCheck(signature.key, trust_file=check.trust_file)
        if trust is not None:
            trusted = trust.signer(signature)
            if trusted is None:
                raise IntegrityError(f"{where}: signed by {signature.key.describe()}, which {trust.path} does not "
                                     "trust; nothing was loaded")
            check = SignatureCheck(signature.key, trusted.principals, trust.path)
    elif trust is not None:
        raise IntegrityError(f"{where}: not signed, and {trust.path} trusts signed bundles only; nothing was loaded")
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"{where}: unreadable {HEAD} ({exc})") from None
    if not isinstance(decoded, dict):
        raise IntegrityError(f"{where}: {HEAD} is not a JSON object")
    return Head.from_json(decoded, where), check


def check_file_signature(path: Path, signature_path: Path, trust: TrustFile | None) -> SignatureCheck:
    """The signature at ``signature_path`` (the restorer's ``OUT.pyz.sig``) checked against the bytes of
    ``path``, and with ``trust`` against the keys it lists: IntegrityError naming the signature file
    when it is not one, does not match the file, or is by a key the trust file does not list."""
    try:
        armored = signature_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{signature_path}: cannot read it: {exc.strerror or exc}") from None
    signature = sshsig.parse(armored, str(signature_path))
    if not signature.matches_file(path):
        raise IntegrityError(f"{signature_path}: not a signature of {path.name} ({signature.key.describe()}): the "
                             "file was changed after it was signed, or the signature is another's; do not run it")
    if trust is None:
        return SignatureCheck(signature.key)
    trusted = trust.signer(signature)
    if trusted is None:
        raise IntegrityError(f"{signature_path}: signed by {signature.key.describe()}, which {trust.path} does not "
                             f"trust; do not run {path.name}")
    return SignatureCheck(signature.key, trusted.principals, trust.path)


def _first_change(signed: bytes, found: bytes) -> str:
    """What differs between the signed head and the one in the file: a member by name, else a key."""
    try:
        before, after = json.loads(signed), json.loads(found)
    except ValueError:
        return f"{HEAD} is not the one signed"
    if not isinstance(before, dict) or not isinstance(after, dict):
        return f"{HEAD} is not the one signed"
    listed = {m.get("path"): m for m in before.get("members", []) if isinstance(m, dict)}
    members = after.get("members") if isinstance(after.get("members"), list) else []
    changed = [m.get("path") for m in members if isinstance(m, dict) and listed.get(m.get("path")) != m]
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return (f"member{'s' if len(changed) > 1 else ''} {', '.join(map(str, changed[:3]))}{more}: "
                f"{'their' if len(changed) > 1 else 'its'} sha256 in {HEAD} is not the signed one")
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            return f"{HEAD}: {key}"
    return f"{HEAD} is not the one signed"
