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
  echo "radfm is not installed: run 'make install' (or pip install -e '.[dev]') in $repo" >&2
  exit 1
fi
