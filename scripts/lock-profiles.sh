#!/usr/bin/env bash
# Re-lock the built-in profiles' wheels against the upstream index and write the locks that ship
# beside them (profiles/NAME.lock). Needs the network; review `git diff profiles/` before committing.
#   scripts/lock-profiles.sh                   every built-in profile
#   scripts/lock-profiles.sh pytorch-cuda12.1  just these
# Image digests are not locked here (a build resolves the tags when the lock pins none), so the
# locks can be refreshed from a machine that reaches the Python index but not Docker Hub.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
mirrors=$(mktemp --suffix=.yaml)
trap 'rm -f "$mirrors"' EXIT
echo "pypi: [official]" > "$mirrors"   # the upstream itself: a mirror's lag must not reach a shipped lock
names=("$@")
[ ${#names[@]} -gt 0 ] || mapfile -t names < <(.venv/bin/bundler profiles | cut -d' ' -f1)
for name in "${names[@]}"; do
  .venv/bin/bundler lock "$name" --wheels-only --mirrors "$mirrors" -o "profiles/$name.lock"
done
