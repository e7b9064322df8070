# Sourced by up.sh/down.sh/status.sh: finds the `radfm` command and pins RADFM_HOME to the repository's
# .radfm/ (radfm's default is ./.radfm of the current directory, so a script run from elsewhere would
# otherwise look for the services in another folder).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export RADFM_HOME="${RADFM_HOME:-$repo/.radfm}"
if [ -x "$repo/.venv/bin/radfm" ]; then
  RADFM="$repo/.venv/bin/radfm"
elif command -v radfm >/dev/null 2>&1; then
  RADFM="$(command -v radfm)"
else
  # The Makefile's install step is its stamp file, which `make demo` and `make test` build first: it pins torch
  # and applies constraints.txt, which a bare `pip install -e .` would not (tests/test_infra.py checks the name).
  echo "radfm is not installed: run 'make .venv/.radfm-installed' in $repo (the install step of 'make demo'" \
       "and 'make test')" >&2
  exit 1
fi
