"""How the golden bundles in this folder were made. Never run it to replace one.

A golden bundle is the promise that a file a user made with an earlier release still restores:
it is made once, by the release whose format it stands for, and committed. If a change makes
``tests/test_golden.py`` fail, the change broke the format: give the new format a new number and
keep a reader for the old one; do not make the golden bundle again.

    .venv/bin/python tests/golden/make_golden.py tests/golden/NAME.tar.zst [--format2 | --delta | --signed]

It starts a registry and an index on 127.0.0.1 (the test bed), builds one small runnable image
and two pure-Python wheels, and writes the bundle with a fixed SOURCE_DATE_EPOCH. With --format2
it uses what format 2 added: the image is an index of linux/amd64 and linux/arm64 carried exact,
the target is both platforms, and the test bed's Hugging Face and ModelScope endpoints give a
model, a dataset and a ModelScope model that share one safetensors file. With --delta it writes a
delta (format 2) against the format-1 golden bundle, as an update of that site: the image rebuilt
(its busybox layer with one file more: a patch against the golden one; a new marker layer) and one
wheel more (golden-extra); its scratch cache first builds the format-1 golden's image again (the
same layers) so that the patch can be made. With --signed it writes a wheels-only bundle (format 1)
signed with an ed25519 key made for it and thrown away: beside it go OUT.sig and
NAME.allowed_signers (the public key, principal golden@bundler). It refuses to write over an
existing file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from testbed import hubs, images, services, wheels  # noqa: E402

MARKER = "hello from the golden bundle\n"
DELTA_MARKER = "hello from the golden delta\n"
FORMAT1 = Path(__file__).resolve().parent / "format1-bundler-0.1.0.tar.zst"
GOLDEN_WEIGHTS = hubs.safetensors({"golden.weight": [1.5, -2.0, 0.25, 8.0]}, {"format": "pt", "by": "golden"})
GOLDEN_CONFIG = b'{"model_type": "golden", "hidden_size": 4}'


def golden_hubs() -> tuple[hubs.HuggingFaceHub, hubs.ModelScopeHub, str]:
    """The repositories of a format-2 golden bundle, and its models: section."""
    hf, ms = hubs.HuggingFaceHub(), hubs.ModelScopeHub()
    hf.repo("golden/tiny").commit({"config.json": GOLDEN_CONFIG, "model.safetensors": GOLDEN_WEIGHTS,
                                   "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n"}, "main")
    hf.repo("golden/data", "dataset").commit({"train.jsonl": b'{"text": "hello from a golden dataset"}\n'}, "main")
    ms.repo("golden/tiny-ms").commit({"configuration.json": b'{"framework": "pytorch"}',
                                      "model.safetensors": GOLDEN_WEIGHTS}, "master")
    section = ("models:\n  - hf: golden/tiny\n  - hf: golden/data\n    repo_type: dataset\n"
               "  - modelscope: golden/tiny-ms\n")
    return hf, ms, section


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    format2 = "--format2" in sys.argv[2:]
    delta = "--delta" in sys.argv[2:]
    signed = "--signed" in sys.argv[2:]
    if out.exists():
        raise SystemExit(f"{out}: exists; golden bundles are never made again (see this file's docstring)")
    scratch = Path(tempfile.mkdtemp(prefix="bundler-golden-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "XDG_CACHE_HOME": str(scratch / "cache"),
                "XDG_CONFIG_HOME": str(scratch / "config"), "SOURCE_DATE_EPOCH": "1764460800",
                "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    registry = services.Registry(scratch / "registry").start()
    index = hf = ms = None
    try:
        layout = images.Layout(scratch / "layout")
        amd64 = images.ImageSpec([images.busybox_layer(), images.layer_tar({"etc/bundler-test.txt": MARKER})])
        if delta:   # the format-1 golden's image again (into the cache), and its rebuild
            layout.add("app", [amd64])
            layout.push("app", f"{registry.host}/golden/app:1.0", docker_format=True)
            rebuilt = {"bin/busybox": images.busybox().read_bytes(), "etc/golden-v2.txt": "rebuilt\n"}
            rebuilt.update({f"bin/{a}": "->busybox" for a in ("sh", "cat", "ls", "echo", "sha256sum", "wc")})
            layout.add("app2", [images.ImageSpec([images.layer_tar(rebuilt),
                                                  images.layer_tar({"etc/bundler-test.txt": DELTA_MARKER})])])
            layout.push("app2", f"{registry.host}/golden/app:2.0", docker_format=True)
        elif format2:   # an index of two platforms, carried exact
            arm64 = images.ImageSpec([images.layer_tar({"etc/bundler-test.txt": "arm64\n"})],
                                     platform=("linux", "arm64", "v8"))
            layout.add("app", [amd64, arm64], index=True)
            layout.push("app", f"{registry.host}/golden/app:1.0")
        else:
            layout.add("app", [amd64])
            layout.push("app", f"{registry.host}/golden/app:1.0", docker_format=True)
        wheel_dir = scratch / "wheels"
        wheels.build_wheel(wheel_dir, "golden-app", "1.0", requires=["golden-data>=1.0"],
                           module_code="from golden_data import TEXT\ndef hello():\n    return TEXT\n")
        wheels.build_wheel(wheel_dir, "golden-data", "1.0", module_code="TEXT = 'hello from a golden venv'\n")
        wheels.build_wheel(wheel_dir, "golden-extra", "1.0", module_code="TEXT = 'hello from a golden update'\n")
        index = services.IndexServer(wheel_dir).start()
        models, hub_mirrors = "", ""
        if format2:
            hf, ms, models = golden_hubs()
            hub_mirrors = f"  huggingface: [{hf.url}]\n  modelscope: [{ms.url}]\n"
        profile = scratch / "golden.yaml"
        image = "" if signed else f"""\
images:
  - ref: {registry.host}/golden/app:1.0
    exact: {"true" if format2 else "false"}
"""
        kind = "a delta (format 2)" if delta else "a signed bundle" if signed else f"a format-{2 if format2 else 1} bundle"
        profile.write_text(f"""\
name: golden
description: {kind} kept to prove that later releases restore it
target:
  platform: {"[linux/amd64, linux/arm64]" if format2 else "linux/amd64"}
  python: "3.10"
{image}python:
  requirements: [golden-app==1.0]
{models}check: python -c "import golden_app; print(golden_app.hello())"
mirrors:
  registries:
    {registry.host}: [official]
  pypi: [{index.url}]
{hub_mirrors}""")
        if delta:   # the cache gets the golden image's layers, then the update is made against the golden bundle
            subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o", str(scratch / "v1.tar.zst")],
                           env=env, check=True)
            text = profile.read_text().replace("golden/app:1.0", "golden/app:2.0")
            profile.write_text(text.replace("requirements: [golden-app==1.0]",
                                            "requirements: [golden-app==1.0, golden-extra==1.0]"))
            subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "--since", str(FORMAT1), "-o",
                            str(out)], env=env, check=True)
        elif signed:   # the key lives only in the scratch folder; its public half is kept beside the bundle
            key = scratch / "golden_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "golden@bundler", "-f", str(key)],
                           check=True)
            allowed = out.with_name(out.name.removesuffix(".tar.zst") + ".allowed_signers")
            kind, public = key.with_suffix(".pub").read_text().split()[:2]
            allowed.write_text(f"golden@bundler {kind} {public}\n")
            subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "--sign", str(key),
                            "-o", str(out)], env=env, check=True)
        else:
            subprocess.run([sys.executable, "-m", "bundler", "build", "--no-restorer", str(profile), "-o", str(out)],
                           env=env, check=True)
    finally:
        for server in (index, hf, ms):
            if server is not None:
                server.stop()
        registry.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
