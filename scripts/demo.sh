#!/usr/bin/env bash
# The main job end to end on an embedded demo: installs what is missing (scripts/setup.sh), starts
# a local registry, index and docker engine, builds a bundle, restores it under `unshare --net`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
