#!/usr/bin/env bash
# Re-pin the one-file restorer's wheels (bundler/restorer.lock) against the upstream index. Needs the
# network; review `git diff bundler/restorer.lock` before committing.
# The restorer carries the air-gapped side: bundler's own dependencies (pyproject.toml, whose lower
# bounds it keeps) less those only the connected side imports (restorer.CONNECTED_ONLY: uv, isal,
# huggingface_hub, shiv, installer, pyfastcdc), resolved once for every platform and for CPython 3.9 and later.
# The fewest versions, not the newest per Python: one site-packages in the restorer serves every
# Python, so each package must have one version for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
requirements=$(mktemp --suffix=.in)
trap 'rm -f "$requirements"' EXIT
.venv/bin/python - "$requirements" <<'PY'
import sys
from importlib.metadata import requires
from bundler.build.restorer import CONNECTED_ONLY
from packaging.requirements import Requirement
deps = [r for r in requires("bundler") if "extra ==" not in r]   # pyproject.toml's, as setup.sh installed them
kept = [d for d in deps if Requirement(d).name not in CONNECTED_ONLY]
open(sys.argv[1], "w").write("".join(f"{d}\n" for d in kept))
PY
uv=$(.venv/bin/python -c 'from uv import find_uv_bin; print(find_uv_bin())')
UV_NO_CONFIG=1 "$uv" pip compile "$requirements" --universal --fork-strategy fewest --python-version 3.9 --generate-hashes \
  --no-header --no-annotate --quiet -o bundler/restorer.lock.new
{ echo "# The one-file restorer's wheels: written by scripts/lock-restorer.sh, read by bundler/build/restorer.py."
  echo "# bundler's dependencies less the connected side's, one version each for CPython 3.9 and later, every platform."
  cat bundler/restorer.lock.new; } > bundler/restorer.lock
rm bundler/restorer.lock.new
