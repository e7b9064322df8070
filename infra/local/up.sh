#!/usr/bin/env bash
# Start MLflow, Prefect, a Ray head and the S3 API on 127.0.0.1 and wait until they answer.
# Extra arguments go to `radfm services up`, e.g. --only mlflow,s3. Ports: see infra/local/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_radfm.sh"
exec "$RADFM" services up "$@"
