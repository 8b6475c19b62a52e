#!/usr/bin/env bash
# Start an MLflow tracking + registry server on 127.0.0.1 with a SQLite backend in the state dir
# and artifacts in S3.
#
#   scripts/stack/start_mlflow.sh        # port from BPIML_MLFLOW_PORT, else a free port
#
# Artifacts: `--serve-artifacts --artifacts-destination s3://$BPIML_MLFLOW_BUCKET/artifacts`.
# New experiments get the artifact root `mlflow-artifacts:/...`, so clients upload through the
# server's HTTP proxy and never need S3 credentials; only this server holds them. (With
# `--default-artifact-root s3://...` every client would write to S3 itself.)
#
# BPIML_MLFLOW_ARTIFACTS=<local folder> keeps artifacts on local disk instead (the embedded default
# of scripts/demo.sh: no S3 at all).
# S3 endpoint: BPIML_S3_ENDPOINT, else the local endpoint of start_s3.sh in the same state dir.
# Credentials: the AWS_* variables in the environment, else the local S3 endpoint's key pair (s3.env).
# The bucket is created when missing. Prints the tracking URI.
#
# BPIML_STACK_MLFLOW_AUTH=1 runs MLflow's basic-auth app (`--app-name basic-auth`): every request but
# /health needs HTTP basic auth. An admin user and password, and the server's CSRF key, are generated
# once into <state>/mlflow-auth.env (mode 600; the password never appears on a command line or in a
# log); the users live in <state>/mlflow-auth.db. Clients send MLFLOW_TRACKING_USERNAME /
# MLFLOW_TRACKING_PASSWORD (env.sh and the Ray nodes get them from that file).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if alive mlflow; then
    echo "http://$HOST:$(cat "$STACK_DIR/mlflow.port")"
    log "mlflow: already running (pid $(cat "$STACK_DIR/mlflow.pid"))"
    exit 0
fi

BUCKET="${BPIML_MLFLOW_BUCKET:-bpiml-mlflow}"
LOCAL_ARTIFACTS="${BPIML_MLFLOW_ARTIFACTS:-}"
if [[ -n "$LOCAL_ARTIFACTS" ]]; then
    [[ "$LOCAL_ARTIFACTS" == s3://* ]] && die "mlflow: BPIML_MLFLOW_ARTIFACTS is for a local folder; for S3 set BPIML_MLFLOW_BUCKET"
    mkdir -p "$LOCAL_ARTIFACTS"
    DESTINATION="$(cd "$LOCAL_ARTIFACTS" && pwd)"
elif [[ -n "${BPIML_S3_ENDPOINT:-}" ]]; then
    S3_ENDPOINT="$BPIML_S3_ENDPOINT"
elif alive s3; then
    S3_ENDPOINT="http://$HOST:$(cat "$STACK_DIR/s3.port")"
    load_s3_credentials
else
    die "mlflow: no S3 endpoint: start scripts/stack/start_s3.sh first or set BPIML_S3_ENDPOINT"
fi
# Without this the server starts a pool of job-runner processes (~15 processes, ~3 GB).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

if [[ -z "$LOCAL_ARTIFACTS" ]]; then
DESTINATION="s3://$BUCKET/artifacts"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$LOCAL_AWS_REGION}"
export MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT" AWS_ENDPOINT_URL_S3="$S3_ENDPOINT"
"$PY" - "$S3_ENDPOINT" "$BUCKET" <<'PYEOF' || die "mlflow: cannot create or reach bucket $BUCKET at $S3_ENDPOINT"
import sys, boto3, botocore.exceptions
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint)
try:
    s3.head_bucket(Bucket=bucket)
except botocore.exceptions.ClientError:
    s3.create_bucket(Bucket=bucket)
    print(f"[stack] mlflow: created bucket s3://{bucket}", file=sys.stderr)
PYEOF
fi

PORT="${BPIML_MLFLOW_PORT:-$(free_port)}"
wait_port_free "$PORT" 10 || die "mlflow: port $PORT on $HOST is already in use (set BPIML_MLFLOW_PORT)"

AUTH=() AUTH_NOTE=""
rm -f "$STACK_DIR/mlflow.auth"
if [[ "${BPIML_STACK_MLFLOW_AUTH:-0}" == 1 ]]; then
    export_mlflow_server_auth  # the server's own environment: never its command line
    AUTH=(--app-name basic-auth) AUTH_NOTE=", basic auth: users in $STACK_DIR/mlflow-auth.db"
    echo 1 > "$STACK_DIR/mlflow.auth"
fi

start=$SECONDS
start_group mlflow "$VENV/bin/mlflow" server "${AUTH[@]}" \
    --backend-store-uri "sqlite:///$STACK_DIR/mlflow.db" \
    --serve-artifacts --artifacts-destination "$DESTINATION" \
    --host "$HOST" --port "$PORT" --workers 1 \
    --allowed-hosts "localhost,localhost:$PORT,$HOST,$HOST:$PORT"
echo "$PORT" > "$STACK_DIR/mlflow.port"
wait_http "http://$HOST:$PORT/health" 180 mlflow
log "mlflow: up in $((SECONDS - start))s (pid $(cat "$STACK_DIR/mlflow.pid"), artifacts $DESTINATION, log $STACK_DIR/mlflow.log$AUTH_NOTE)"
echo "http://$HOST:$PORT"
