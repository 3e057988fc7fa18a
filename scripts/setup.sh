#!/usr/bin/env bash
# Install what bundler and its tests need on a fresh Debian or Ubuntu machine. Safe to run again:
# it installs only what is missing and reuses .venv when it is up to date.
#   PYTHON=python3.12 scripts/setup.sh     to build .venv with another interpreter (>= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io docker-registry skopeo containerd zstd busybox-static iproute2 util-linux ca-certificates rpm)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "setup: $python is older than 3.10; set PYTHON to a newer interpreter" >&2; exit 1; }

# The machine's own pip configuration (mirrors, caps, local wheel caches) must not shape our venv.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
stamp=.venv/.setup-stamp
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv || { echo "setup: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# The model-hub clients the tests install into a restored venv, as a user would: huggingface_hub
# and modelscope with every dependency, as wheels for CPython 3.10 on linux/amd64, served by the
# test bed's index (tests never reach PyPI). uv resolves for that target (pip would evaluate the
# markers for this interpreter); pip downloads exactly those pins, once.
hub_wheels=.testbed-wheels/hub-clients
if [ ! -f "$hub_wheels/.complete" ]; then
  echo "setup: downloading the model-hub clients' wheels into $hub_wheels (once)" >&2
  mkdir -p "$hub_wheels"
  pins=$(mktemp)
  printf 'huggingface_hub==2.4.0\nmodelscope==1.40.2\n' | .venv/bin/uv pip compile --quiet --no-header \
    --python-version 3.10 --python-platform x86_64-manylinux_2_28 -o "$pins" -
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.10 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$hub_wheels" -r "$pins"
  rm -f "$pins"
  touch "$hub_wheels/.complete"
fi

# The one-file restorer's wheels (bundler/restorer.lock) for the tests' local index, which stands for
# PyPI there: linux/amd64 and linux/arm64 for every Python the restorer supports (a restorer for the
# wrong platform, and one for both). Downloaded once, checked against the lock's hashes by pip.
wheels=.testbed-wheels/restorer
want=$(cat bundler/restorer.lock scripts/setup.sh | sha256sum | cut -c1-64)
if [ "$(cat "$wheels/.complete" 2>/dev/null)" != "$want" ]; then
  rm -rf "$wheels"
  for target in linux/{amd64,arm64}:{3.9,3.10,3.11,3.12,3.13}; do
    platform=${target%%:*} version=${target##*:}
    mapfile -t tags < <(.venv/bin/python -c 'import sys
from bundler.build.wheels.requirements import WheelTarget
from bundler.oci.reference import Platform
print("\n".join(WheelTarget(Platform.parse(sys.argv[1]), sys.argv[2]).platform_tags))' "$platform" "$version")
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --require-hashes -r bundler/restorer.lock \
      --implementation cp --python-version "$version" "${tags[@]/#/--platform=}" -d "$wheels"
  done
  echo "$want" > "$wheels/.complete"
fi
