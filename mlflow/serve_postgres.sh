#!/usr/bin/env bash
# A team's MLflow tracking server: PostgreSQL for runs and metrics, artifacts proxied by the
# server (clients need no bucket credentials), bound to 127.0.0.1 unless MLFLOW_HOST says otherwise.
#
#   mlflow/serve_postgres.sh POSTGRES_URI ARTIFACTS [PORT]
#     POSTGRES_URI  postgresql://USER[:PASSWORD]@HOST:PORT/DB (needs psycopg2-binary)
#     ARTIFACTS     a folder (/srv/mlflow-artifacts) or s3://bucket/prefix (AWS_* variables as usual)
#     PORT          default 5000
#   Environment:
#     MLFLOW_HOST           interface to bind (default 127.0.0.1; 0.0.0.0 = every interface)
#     MLFLOW_ALLOWED_HOSTS  Host headers accepted (default: localhost,127.0.0.1 and MLFLOW_HOST, with port)
#     MLFLOW_CORS_ORIGINS   browser origins allowed to call the API (default: the server's own URL)
#     MLFLOW_AUTH=1         --app-name basic-auth (login; set it whenever the server is reachable by others)
# Sweeps then use: srsweep run ... --tracking-uri http://HOST:PORT (or MLFLOW_TRACKING_URI=http://HOST:PORT)
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
db="$1"; artifacts="$2"; port="${3:-5000}"
host="${MLFLOW_HOST:-127.0.0.1}"
case "$db" in
  postgresql://*) db="postgresql+psycopg2://${db#postgresql://}" ;;  # SQLAlchemy 2 would pick psycopg 3
  postgresql+psycopg2://*) ;;
  *) echo "serve_postgres.sh: $db: expected postgresql://USER@HOST:PORT/DB" >&2; exit 2 ;;
esac
case "$artifacts" in
  s3://*) ;;
  *) mkdir -p "$artifacts"; artifacts="$(cd "$artifacts" && pwd)" ;;
esac
allowed="${MLFLOW_ALLOWED_HOSTS:-localhost:$port,127.0.0.1:$port,$host:$port}"
origins="${MLFLOW_CORS_ORIGINS:-http://$host:$port}"
args=(server --backend-store-uri "$db" --serve-artifacts --artifacts-destination "$artifacts"
      --host "$host" --port "$port" --allowed-hosts "$allowed" --cors-allowed-origins "$origins")
[ "${MLFLOW_AUTH:-0}" = 1 ] && args+=(--app-name basic-auth)
# Job execution off: ~0.5 GiB instead of ~2.4 GiB; no telemetry.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true
shown="$(printf '%s' "$db" | sed -E 's#(//[^:/@]+):[^@]*@#\1:***@#')"   # no password in logs
echo "MLflow tracking server on http://$host:$port (runs in $shown, artifacts in $artifacts)" >&2
exec mlflow "${args[@]}"
