#!/usr/bin/env bash
# Stop the local services (SIGTERM to each process group, SIGKILL after a grace period).
# Extra arguments go to `radfm services down`, e.g. --only mlflow,s3. Ports: see infra/local/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_radfm.sh"
exec "$RADFM" services down "$@"
