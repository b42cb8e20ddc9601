#!/usr/bin/env bash
# Start the MLflow dashboard over the sweep store: the same command `srsweep ui` runs.
#   mlflow/serve.sh [TRACKING_URI] [PORT]     (defaults: sqlite:///$PWD/mlflow.db, 5000)
# Bound to 127.0.0.1: for a shared machine put it behind `--app-name basic-auth` or a proxy.
set -euo pipefail
uri="${1:-${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}}"
exec srsweep ui --tracking-uri "$uri" --port "${2:-5000}"
