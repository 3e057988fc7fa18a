"""The main job end to end, on this machine alone: build a bundle through (flaky) mirrors, restore it
with no network with the one-file restorer beside it, run what it restored.

It starts its own services on 127.0.0.1: a registry with two images made here from local files,
a PEP 503 index over wheels made here and the restorer's (which scripts/setup.sh downloaded), a
dead "mirror" in front of both, and a private dockerd. Everything it writes goes under demo-out/
(or the folder given as its argument).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from testbed import images, services, wheels  # noqa: E402


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def bundler(*args: str, env: dict | None = None) -> str:
    return shown("bundler " + " ".join(shlex.quote(a) for a in args), [sys.executable, "-m", "bundler", *args], env)


def shown(text: str, command: list[str], env: dict | None) -> str:
    print(f"$ {text}", flush=True)
    result = subprocess.run(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(result.stdout, end="", flush=True)
    if result.returncode:
        raise SystemExit(f"demo: the command above failed with exit code {result.returncode}")
    return result.stdout


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "demo-out").resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="bundler-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "XDG_CACHE_HOME": str(out / "cache"),
                "XDG_CONFIG_HOME": str(out / "config"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    os.environ.update(env)
    started = []
    try:
        say("a local registry with two images made from this machine's files (they share their base layers)")
        registry = services.Registry(scratch / "registry").start()
        started.append(registry)
        layout = images.Layout(scratch / "layout")
        base = [images.busybox_layer(),
                images.layer_tar(images.real_files(Path("/usr/share/common-licenses"), 400_000, "usr/share/licenses"))]
        layout.add("app", [images.ImageSpec(base + [images.layer_tar({"etc/bundler-test.txt":
                                                                       "hello from a bundle restored offline\n"})])])
        layout.add("tools", [images.ImageSpec(base + [images.layer_tar({"etc/bundler-test.txt": "tools\n"})])])
        layout.push("app", f"{registry.host}/demo/app:1.0", docker_format=True)
        layout.push("tools", f"{registry.host}/demo/tools:1.0")
        print(f"registry {registry.url}: demo/app:1.0, demo/tools:1.0")

        say("a local PEP 503 index with wheels made here")
        python = shutil.which("python3") or sys.executable
        version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        wheel_dir = scratch / "wheels"
        wheels.build_wheel(wheel_dir, "hello-bundler", "1.0", requires=["greeting-data>=1.0"],
                           module_code="from greeting_data import TEXT\ndef hello():\n    return TEXT\n")
        wheels.build_wheel(wheel_dir, "greeting-data", "1.0", module_code="TEXT = 'hello from a restored venv'\n")
        restorer_wheels = REPO / ".testbed-wheels" / "restorer"
        if not (restorer_wheels / ".complete").is_file():
            raise SystemExit(f"demo: {restorer_wheels} is missing: scripts/setup.sh downloads the restorer's wheels")
        for wheel in restorer_wheels.glob("*.whl"):
            (wheel_dir / wheel.name).symlink_to(wheel)
        index = services.IndexServer(wheel_dir).start()
        started.append(index)
        print(f"index {index.url}: hello-bundler 1.0, greeting-data 1.0, and the restorer's wheels "
              "(zstandard, docker, requests... as PyPI serves them)")

        say("a profile; its mirrors list a dead endpoint first, so the build has to fall back")
        dead = services.refusing_url()
        profile = out / "demo.yaml"
        profile.write_text(f"""\
name: demo
description: the demo stack, from a local registry and index
target:
  platform: linux/amd64
  python: "{version}"
images:
  - {registry.host}/demo/app:1.0
  - {registry.host}/demo/tools:1.0
python:
  requirements: [hello-bundler==1.0]
check: python -c "import hello_bundler; print(hello_bundler.hello())"
mirrors:
  registries:
    {registry.host}: [{dead}, official]
  pypi: [{dead}/simple, {index.url}]
""")
        print(profile.read_text(), end="")

        say("lock, build, inspect, verify (the connected side)")
        bundle = out / "demo.tar.zst"
        bundler("lock", str(profile), "-o", str(out / "demo.lock"), env=env)
        bundler("build", str(profile), "--lock", str(out / "demo.lock"), "-o", str(bundle), env=env)
        bundler("inspect", str(bundle), env=env)
        bundler("verify", str(bundle), env=env)

        say("restore with no network at all (the air-gapped side): the restorer beside the bundle, run by "
            f"{python} -I with a fresh HOME, into a private docker engine")
        dockerd = services.Dockerd(scratch / "docker").start()   # removed with scratch, mounts and all
        started.append(dockerd)
        home = scratch / "air-gapped-home"
        home.mkdir()
        air_gapped = {"HOME": str(home), "PATH": os.environ["PATH"], "DOCKER_HOST": dockerd.host, "LANG": "C.UTF-8"}
        started_at = time.monotonic()
        args = ["restore", str(bundle), "--dest", str(out / "restored"), "--python", python, "--check"]
        shown(f"unshare --net {python} -I {bundle.name}.pyz {' '.join(shlex.quote(a) for a in args)}",
              ["unshare", "--net", python, "-I", f"{bundle}.pyz", *args], air_gapped)
        print(f"(restored in {time.monotonic() - started_at:.1f} s)")

        say("the restored image runs with no network")
        for ref in (f"{registry.host}/demo/app:1.0", f"{registry.host}/demo/tools:1.0"):
            print(f"$ docker run --rm --network none {ref}")
            print(dockerd.docker("run", "--rm", "--network", "none", ref).stdout.decode(), end="")
        say(f"done: the bundle, its lock and the restored venv are in {out}")
        return 0
    finally:
        for service in reversed(started):
            service.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
