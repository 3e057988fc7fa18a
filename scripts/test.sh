#!/usr/bin/env bash
# The test command: set up whatever is missing on this machine, lint with ruff, then run the suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k restore, or -m network for the PyPI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
.venv/bin/ruff check --quiet . || { echo "test: ruff found problems (see above); the suite did not run" >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
