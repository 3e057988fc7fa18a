"""Signed bundles: signing with an OpenSSH ed25519 key, the stock tools' check of OUT.sig, and
verify/restore refusing, with --trust, what is unsigned, signed by another key, or forged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from bundler import cli
from bundler.build.pack import skippable_frame
from bundler.format.archive import iter_members, load_head, read_front
from bundler.format.paths import SIGNATURE_FRAME, WHEELS_DIR
from conftest import bundler_cmd, offline
from testbed import wheels as tb_wheels


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def keygen(folder: Path, name: str, key_type: str = "ed25519", passphrase: str = "") -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", f"{name}@site", "-f", str(key)],
                   check=True)
    return key


def allowed_signers(path: Path, *keys: Path, options: str = "") -> Path:
    lines = []
    for key in keys:
        key_type, blob, comment = key.with_suffix(".pub").read_text().split()
        lines.append(" ".join(p for p in (comment, options, key_type, blob) if p))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    made = {name: keygen(folder, name) for name in ("alice", "mallory")}
    made["allowed"] = allowed_signers(folder / "allowed_signers", made["alice"])
    return made


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory, testbed_profile, keys) -> Path:
    out = tmp_path_factory.mktemp("signed") / "signed.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--sign", str(keys["alice"])]) == 0
    return out


# ---- the skippable frame every reader passes over ------------------------------------------------

@pytest.mark.parametrize("read_size", [1, 7, 4096])
def test_python_zstandard_skips_a_skippable_frame_between_frames(read_size):
    """The reader restore and verify use (and bundler 0.1.0 used) reads across the signature frame,
    however the frame falls across its reads."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("bundle.json", b"{}"), ("b", b"x" * 3000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    compress = zstandard.ZstdCompressor(write_checksum=True).compress
    stream = compress(raw[:1024]) + skippable_frame(SIGNATURE_FRAME, b"s" * 999) + compress(raw[1024:])
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream), read_size=read_size,
                                                        read_across_frames=True)
    assert reader.read() == raw
    zstd = subprocess.run(["zstd", "-dc"], input=stream, capture_output=True, check=True)
    assert zstd.stdout == raw


# ---- signing, and the stock tools' check ----------------------------------------------------------

def test_ssh_keygen_verifies_out_sig_by_the_readme_commands(signed_bundle, keys, tmp_path):
    """README's commands, with stock zstd, tar and ssh-keygen: no bundler."""
    sig = signed_bundle.with_name(signed_bundle.name + ".sig")
    assert sig.read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    script = (f"zstd -dc {signed_bundle} | tar -xOf - --occurrence bundle.json > {tmp_path}/bundle.json; "
              f"ssh-keygen -Y find-principals -s {sig} -f {keys['allowed']}; "
              f"ssh-keygen -Y verify -f {keys['allowed']} -I alice@site -n bundler -s {sig} < {tmp_path}/bundle.json")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "alice@site"
    assert 'Good "bundler" signature for alice@site with ED25519 key' in result.stdout
    assert (tmp_path / "bundle.json").read_bytes() == read_front(signed_bundle).head
    other = allowed_signers(tmp_path / "other", keys["mallory"])
    refused = subprocess.run(["bash", "-c", f"ssh-keygen -Y verify -f {other} -I alice@site -n bundler -s {sig} "
                                            f"< {tmp_path}/bundle.json"], capture_output=True, text=True)
    assert refused.returncode != 0


def test_a_signed_bundle_reads_as_before_with_stock_tools_and_without_trust(signed_bundle, capsys):
    listing = subprocess.run(["bash", "-c", f"zstd -dc {signed_bundle} | tar -tf -"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[:2] == ["bundle.json", "sbom.cdx.json"]
    head = load_head(signed_bundle)
    assert [m.path for m in head.members] == listing[1:]
    assert sum(1 for m in iter_members(signed_bundle, head) if m.read() is not None) == len(head.members)
    code, out, _ = run(capsys, "verify", str(signed_bundle))
    assert code == 0
    assert "signed by ED25519 key SHA256:" in out and "no trust file" in out
    code, out, _ = run(capsys, "inspect", str(signed_bundle))
    assert code == 0 and "signed    by ED25519 key SHA256:" in out and "sbom      sbom.cdx.json" in out


def test_verify_with_trust_names_the_signer(signed_bundle, keys, capsys):
    code, out, err = run(capsys, "verify", str(signed_bundle), "--trust", str(keys["allowed"]))
    assert code == 0, err
    assert "signed by alice@site (ED25519 key SHA256:" in out and f"trusted by {keys['allowed']}" in out


def test_the_same_pins_give_the_same_signed_bundle(signed_bundle, testbed_profile, keys, tmp_path):
    """ed25519 signatures are deterministic: a signed bundle is reproducible too."""
    again = tmp_path / "again.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(again), "-q", "--sign", str(keys["alice"])]) == 0
    assert again.read_bytes() == signed_bundle.read_bytes()
    assert again.with_name("again.tar.zst.sig").read_bytes() == signed_bundle.with_name("signed.tar.zst.sig").read_bytes()


def test_a_split_signed_bundle_has_its_signature_beside_the_volumes(testbed_profile, keys, tmp_path, capsys):
    out = tmp_path / "split.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--split", "1M",
                     "--sign", str(keys["alice"])]) == 0
    assert (tmp_path / "split.tar.zst.001").is_file() and (tmp_path / "split.tar.zst.sig").is_file()
    code, out_text, err = run(capsys, "verify", str(tmp_path / "split.tar.zst.002"), "--trust", str(keys["allowed"]))
    assert code == 0, err
    assert "signed by alice@site" in out_text


def test_building_unsigned_over_a_signed_bundle_with_force_removes_the_old_signature(signed_bundle, testbed_profile,
                                                                                   tmp_path):
    out = tmp_path / "b.tar.zst"
    shutil.copy(signed_bundle, out)
    shutil.copy(signed_bundle.with_name("signed.tar.zst.sig"), tmp_path / "b.tar.zst.sig")
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q"]) == 2   # OUT exists
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--force"]) == 0
    assert not (tmp_path / "b.tar.zst.sig").exists()
    assert read_front(out).signature is None


RELEASE_0_1_0 = "36fdedb44f5598765c06f0624b807b9c9edfe62b"   # the commit whose bundler 0.1.0 made tests/golden/


def test_bundler_0_1_0_reads_a_signed_bundle_with_its_sbom(signed_bundle, testbed_profile, keys, tmp_path):
    """The reader of the release that made the golden bundle verifies and inspects a signed bundle
    (one file, and volumes): it passes over the signature frame and checks the SBOM like any member."""
    old = tmp_path / "bundler-0.1.0"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(Path(__file__).parent.parent), "archive", RELEASE_0_1_0, "bundler"],
                             capture_output=True)
    assert archive.returncode == 0, (f"this test reads bundler 0.1.0 from the repository's history (commit "
                                     f"{RELEASE_0_1_0[:12]}); a shallow clone lacks it: {archive.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old, filter="data")
    split = tmp_path / "split.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(split), "-q", "--split", "1M",
                     "--sign", str(keys["alice"])]) == 0

    def old_bundler(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(old)}, cwd=tmp_path)

    where = old_bundler("-c", "import bundler.archive; print(bundler.archive.__file__)").stdout
    assert where.startswith(str(old)), where
    for bundle in (signed_bundle, split):
        checked = old_bundler("-m", "bundler", "verify", str(bundle))
        assert checked.returncode == 0 and "all 16 members match bundle.json" in checked.stdout, checked.stderr
        shown = old_bundler("-m", "bundler", "inspect", str(bundle))
        assert shown.returncode == 0 and "members   16" in shown.stdout, shown.stderr
        assert "\nsigned " not in shown.stdout   # 0.1.0 knows nothing of signatures


# ---- what --trust refuses -------------------------------------------------------------------------

def test_an_unsigned_bundle_is_refused_with_trust(built_bundle, keys, capsys):
    code, out, err = run(capsys, "verify", str(built_bundle))
    assert code == 0 and "the bundle is not signed" in out
    code, _, err = run(capsys, "verify", str(built_bundle), "--trust", str(keys["allowed"]))
    assert code == 3
    assert f"not signed, and {keys['allowed']} trusts signed bundles only" in err


def test_a_bundle_signed_by_another_key_is_refused(testbed_profile, keys, tmp_path, capsys):
    out = tmp_path / "m.tar.zst"
    assert cli.main(["build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--sign", str(keys["mallory"])]) == 0
    code, _, err = run(capsys, "verify", str(out), "--trust", str(keys["allowed"]))
    assert code == 3
    assert "signed by ED25519 key SHA256:" in err and f"which {keys['allowed']} does not trust" in err


def _members(bundle: Path) -> dict[str, bytes]:
    with zstandard.ZstdDecompressor().stream_reader(open(bundle, "rb"), read_across_frames=True, closefd=True) as raw, \
            tarfile.open(fileobj=raw, mode="r|") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}


def forge(bundle: Path, out: Path, replace: dict[str, bytes], keep_signature: bool) -> Path:
    """What whoever holds the USB stick can do: swap members, rewrite bundle.json (and the lock's
    hashes) to match, and write the bundle again, keeping the signature frame or dropping it."""
    from bundler.build.pack import Member, write_bundle
    members = _members(bundle)
    head = json.loads(members.pop("bundle.json"))
    for path, data in replace.items():
        old = hashlib.sha256(members[path]).hexdigest()
        new = hashlib.sha256(data).hexdigest()
        members[path] = data
        members["requirements.lock"] = members["requirements.lock"].replace(old.encode(), new.encode())
        head["lock"] = head["lock"].replace(old, new)
        for wheel in head["wheels"]:
            if f"{WHEELS_DIR}/{wheel['filename']}" == path:
                wheel.update(sha256=new, size=len(data))
    head["members"] = [{"path": p, "size": len(members[p]), "sha256": hashlib.sha256(members[p]).hexdigest()}
                       for p in (m["path"] for m in head["members"])]
    head["totals"]["wheels"] = sum(w["size"] for w in head["wheels"])
    head["totals"]["members"] = sum(m["size"] for m in head["members"])
    data = (json.dumps(head, sort_keys=True, indent=1) + "\n").encode()
    listed = [Member(m["path"], m["size"], m["sha256"], data=members[m["path"]]) for m in head["members"]]
    write_bundle(out, data, listed, head["created"], 3, None)
    if keep_signature:
        original = read_front(bundle).signature
        forged = out.read_bytes()
        decoder = zstandard.ZstdDecompressor().decompressobj()
        decoder.decompress(forged)
        first = len(forged) - len(decoder.unused_data)
        out.write_bytes(forged[:first] + skippable_frame(SIGNATURE_FRAME, original) + forged[first:])
    return out


@pytest.fixture(scope="module")
def forged_alpha(tmp_path_factory, signed_bundle) -> tuple[str, bytes]:
    folder = tmp_path_factory.mktemp("forged-wheel")
    wheel = tb_wheels.build_wheel(folder, "alpha", "1.0", requires=["beta>=1.0"],
                                  module_code="VERSION = 'forged'\n")
    head = load_head(signed_bundle)
    path = next(f"{WHEELS_DIR}/{w.filename}" for w in head.wheels if w.name == "alpha")
    return path, wheel.read_bytes()


def test_a_forged_bundle_with_its_signature_kept_is_refused_naming_the_member(signed_bundle, forged_alpha, keys,
                                                                              tmp_path, capsys):
    path, data = forged_alpha
    forged = forge(signed_bundle, tmp_path / "forged.tar.zst", {path: data}, keep_signature=True)
    for trust in ([], ["--trust", str(keys["allowed"])]):
        code, _, err = run(capsys, "verify", str(forged), *trust)
        assert code == 3
        assert f"members requirements.lock, {path}: their sha256 in bundle.json is not the signed one" in err
        assert "forged; nothing was loaded" in err


def test_a_signature_moved_onto_another_head_does_not_match(signed_bundle, forged_alpha, tmp_path, capsys):
    """The old signature, framed with the rewritten head as if it had signed it."""
    from bundler.build.pack import Member, write_bundle
    path, data = forged_alpha
    forged = forge(signed_bundle, tmp_path / "forged.tar.zst", {path: data}, keep_signature=False)
    head = load_head(forged)
    members = _members(forged)
    moved = tmp_path / "moved.tar.zst"
    write_bundle(moved, read_front(forged).head, [Member(m.path, m.size, m.sha256, data=members[m.path])
                                                  for m in head.members], head.created, 3, None,
                 signature=signed_bundle.with_name("signed.tar.zst.sig").read_bytes())
    code, _, err = run(capsys, "verify", str(moved))
    assert code == 3
    assert "its signature (ED25519 key SHA256:" in err and "does not match what it signs" in err


def test_a_forged_bundle_restores_without_trust_and_is_refused_with_it(signed_bundle, forged_alpha, keys, python310,
                                                                       tmp_path, can_unshare):
    """Without a trust file nothing proves who made a bundle (README says so); with one, the forged
    bundle loads nothing."""
    path, data = forged_alpha
    forged = forge(signed_bundle, tmp_path / "forged.tar.zst", {path: data}, keep_signature=False)
    dest = tmp_path / "dest"
    plain = offline(bundler_cmd("restore", str(forged), "--wheels-only", "--dest", str(dest), "--python",
                                str(python310)), capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert "the bundle is not signed" in plain.stdout
    out = subprocess.run([str(dest / "venv" / "bin" / "python"), "-c", "import alpha; print(alpha.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "forged\n"

    guarded = tmp_path / "guarded"
    refused = offline(bundler_cmd("restore", str(forged), "--wheels-only", "--dest", str(guarded), "--python",
                                  str(python310), "--trust", str(keys["allowed"])), capture_output=True, text=True)
    assert refused.returncode == 3, refused.stderr
    assert "not signed" in refused.stderr and "nothing was loaded" in refused.stderr
    assert not guarded.exists()


def test_restore_with_trust_loads_a_bundle_its_key_signed(signed_bundle, keys, python310, tmp_path, can_unshare):
    dest = tmp_path / "dest"
    result = offline(bundler_cmd("restore", str(signed_bundle), "--wheels-only", "--dest", str(dest), "--python",
                                 str(python310), "--trust", str(keys["allowed"])), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("signed by alice@site (ED25519 key SHA256:")


def test_a_member_swapped_without_touching_the_head_is_named(signed_bundle, forged_alpha, keys, tmp_path, capsys):
    """bundle.json left as signed, one wheel replaced: the member's check names it."""
    path, data = forged_alpha
    members = _members(signed_bundle)
    head = load_head(signed_bundle)
    from bundler.build.pack import Member, write_bundle
    listed = [Member(m.path, m.size, m.sha256, data=data if m.path == path else members[m.path])
              for m in head.members]
    out = tmp_path / "swapped.tar.zst"
    forged_members = [m if m.path != path else Member(m.path, len(data), hashlib.sha256(data).hexdigest(), data=data)
                      for m in listed]
    write_bundle(out, read_front(signed_bundle).head, forged_members, head.created, 3, None,
                 signature=signed_bundle.with_name("signed.tar.zst.sig").read_bytes())
    code, _, err = run(capsys, "verify", str(out), "--trust", str(keys["allowed"]))
    assert code == 3
    assert f"member {path}:" in err


# ---- the trust file and where it is configured --------------------------------------------------

def test_trust_from_the_user_config(signed_bundle, built_bundle, keys, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config" / "bundler"
    config.mkdir(parents=True)
    shutil.copy(keys["allowed"], config / "site_signers")
    (config / "config.yaml").write_text("trust: site_signers   # relative to this file\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code, out, _ = run(capsys, "verify", str(signed_bundle))
    assert code == 0 and "signed by alice@site" in out
    code, _, err = run(capsys, "verify", str(built_bundle))
    assert code == 3 and "trusts signed bundles only" in err
    (config / "config.yaml").write_text("trust: site_signers\ntrusts: x\n")
    code, _, err = run(capsys, "verify", str(signed_bundle))
    assert code == 2 and f"{config / 'config.yaml'}:2: trusts: unknown key" in err


def test_the_site_config_applies_when_the_user_has_none(built_bundle, keys, tmp_path, monkeypatch, capsys):
    site = tmp_path / "xdg" / "bundler"
    site.mkdir(parents=True)
    (site / "config.yaml").write_text(f"trust: {keys['allowed']}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    code, _, err = run(capsys, "verify", str(built_bundle))
    assert code == 3 and "trusts signed bundles only" in err


@pytest.mark.parametrize(("options", "trusted"), [
    ('namespaces="bundler"', True), ('namespaces="file,git"', False), ('valid-before="20200101"', False),
    ('valid-after="20200101Z"', True), ("cert-authority", None),
])
def test_allowed_signers_options_are_honoured(signed_bundle, keys, tmp_path, capsys, options, trusted):
    trust = allowed_signers(tmp_path / "allowed", keys["alice"], options=options)
    if trusted is None:   # a certificate authority line: bundler signs with plain keys, so it lists no key
        trust.write_text(trust.read_text() + keys["mallory"].with_suffix(".pub").read_text())
    code, _, err = run(capsys, "verify", str(signed_bundle), "--trust", str(trust))
    assert code == (0 if trusted else 3), err


def test_a_public_key_file_is_a_trust_file(signed_bundle, keys, capsys):
    code, out, err = run(capsys, "verify", str(signed_bundle), "--trust", str(keys["alice"].with_suffix(".pub")))
    assert code == 0, err
    assert "signed by alice@site" in out


@pytest.mark.parametrize(("text", "problem"), [
    ("alice@site ssh-ed25519\n", ":1: expected: principals [options] keytype base64-key"),
    ("ssh-ed25519\n", ":1: ssh-ed25519: the key's base64 is missing"),
    ('alice@site namespaces="bundler ssh-ed25519 AAAA\n', ":1: a quote is not closed"),
    ("alice@site ssh-ed25519 AAAA!!\n", ":1: not a ssh-ed25519 public key"),
    ("# nothing\n", "lists no key"),
    ('alice@site from="*" ssh-ed25519 AAAA\n', ":1: unknown option 'from'"),
])
def test_a_bad_trust_file_is_bad_input_naming_the_line(signed_bundle, tmp_path, capsys, text, problem):
    trust = tmp_path / "allowed"
    trust.write_text(text)
    code, _, err = run(capsys, "verify", str(signed_bundle), "--trust", str(trust))
    assert code == 2 and problem in err, err


# ---- keys ----------------------------------------------------------------------------------------

def test_a_passphrase_protected_key(testbed_profile, tmp_path, monkeypatch, capsys):
    key = keygen(tmp_path, "locked", passphrase="open sesame")
    out = tmp_path / "p.tar.zst"
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--sign", str(key))
    assert code == 2 and "protected by a passphrase" in err and "BUNDLER_KEY_PASSPHRASE" in err
    assert not out.exists()
    monkeypatch.setenv("BUNDLER_KEY_PASSPHRASE", "wrong")
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--sign", str(key))
    assert code == 2 and "wrong passphrase" in err
    monkeypatch.setenv("BUNDLER_KEY_PASSPHRASE", "open sesame")
    assert run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(out), "-q", "--sign", str(key))[0] == 0
    assert read_front(out).signature is not None


@pytest.mark.parametrize(("make", "problem"), [
    (lambda d: keygen(d, "rsa", key_type="rsa"), "ed25519 keys only"),
    (lambda d: keygen(d, "ed").with_suffix(".pub"), "not a private key"),
    (lambda d: d / "absent", "no such key file"),
])
def test_keys_bundler_cannot_sign_with_are_named(testbed_profile, tmp_path, capsys, make, problem):
    key = make(tmp_path)
    code, _, err = run(capsys, "build", "--no-restorer", str(testbed_profile), "-o", str(tmp_path / "x.tar.zst"), "--sign", str(key))
    assert code == 2 and problem in err, err


def test_trust_applies_to_an_images_restore_before_docker_is_touched(built_bundle, keys, tmp_path, can_unshare):
    """No engine at all: the refusal comes first."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    result = offline(bundler_cmd("restore", str(built_bundle), "--images-only", "--trust", str(keys["allowed"])),
                     capture_output=True, text=True, env=env)
    assert result.returncode == 3 and "not signed" in result.stderr, result.stderr
