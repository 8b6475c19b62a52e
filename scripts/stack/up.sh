#!/usr/bin/env bash
# Start the local stack: S3 endpoint (SeaweedFS), MLflow server (artifacts in that S3), Ray head with
# token auth (and, with BPIML_RAY_WORKERS=N, N worker nodes with private scratch: a small cluster),
# and write <state>/env.sh for clients:
#
#   scripts/stack/up.sh
#   source .bpiml/stack/env.sh
#   ray job submit --working-dir . -- python -c 'print(1)'
#
# Ray starts last so that its jobs inherit the S3 endpoint and MLFLOW_TRACKING_URI (and, with
# BPIML_STACK_MLFLOW_AUTH=1, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).
# Settings: see start_s3.sh, start_mlflow.sh, start_ray.sh. Stop with scripts/stack/down.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

trap 'log "start-up failed; stopping what was started"; "$STACK_SCRIPTS/down.sh"' ERR

S3_ENDPOINT="$("$STACK_SCRIPTS/start_s3.sh")"
TRACKING_URI="$("$STACK_SCRIPTS/start_mlflow.sh")"
RAY_DASHBOARD="$("$STACK_SCRIPTS/start_ray.sh")"
trap - ERR
load_s3_credentials

ENV_FILE="$STACK_DIR/env.sh"
(
    umask 077
    cat > "$ENV_FILE" <<ENVEOF
# Written by scripts/stack/up.sh: clients of the local bpiml stack. Holds the key pair of the local
# S3 endpoint (nothing else accepts it); the Ray token stays in its own file (RAY_AUTH_TOKEN_PATH).
export BPIML_STACK_DIR='$STACK_DIR'
export RAY_ADDRESS='$(cat "$STACK_DIR/ray.gcs")'
export RAY_API_SERVER_ADDRESS='$RAY_DASHBOARD'
unset RAY_AUTH_TOKEN  # it would take precedence over RAY_AUTH_TOKEN_PATH
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH='$STACK_DIR/ray_auth_token'
export MLFLOW_TRACKING_URI='$TRACKING_URI'
export AWS_ENDPOINT_URL='$S3_ENDPOINT'
export AWS_ENDPOINT_URL_S3='$S3_ENDPOINT'
export MLFLOW_S3_ENDPOINT_URL='$S3_ENDPOINT'
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
export AWS_DEFAULT_REGION='$LOCAL_AWS_REGION'
ENVEOF
if [[ -f "$STACK_DIR/mlflow.auth" ]]; then  # BPIML_STACK_MLFLOW_AUTH=1: MLflow clients log in
    load_mlflow_credentials
    echo "export MLFLOW_TRACKING_USERNAME='$MLFLOW_TRACKING_USERNAME'" >> "$ENV_FILE"
    echo "export MLFLOW_TRACKING_PASSWORD='$MLFLOW_TRACKING_PASSWORD'" >> "$ENV_FILE"
fi
if [[ "$(cat "$STACK_DIR/ray.workers")" == 0 ]]; then
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep this client on 127.0.0.1 like the head" >> "$ENV_FILE"
fi
)
chmod 600 "$ENV_FILE"
cat >&2 <<MSG
[stack] up:
  S3 endpoint   $S3_ENDPOINT (SeaweedFS, data in $STACK_DIR/s3data; bucket s3://${BPIML_MLFLOW_BUCKET:-bpiml-mlflow} holds MLflow artifacts)
  MLflow        $TRACKING_URI
  Ray dashboard $RAY_DASHBOARD (token file $STACK_DIR/ray_auth_token)
  client env    source $ENV_FILE
MSG
echo "$ENV_FILE"
