#!/usr/bin/env bash
# Show each local service: up/starting/down, URL, pid.
# Extra arguments go to `radfm services status`, e.g. --only mlflow,s3. Ports: see infra/local/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_radfm.sh"
exec "$RADFM" services status "$@"
