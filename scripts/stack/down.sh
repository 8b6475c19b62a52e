#!/usr/bin/env bash
# Stop the local stack started by up.sh (Ray nodes, MLflow server, S3 endpoint), each by the
# process group recorded in the state dir, and remove env.sh. The MLflow database and the Ray
# token stay in the state dir, and so does the S3 data (s3data/, SeaweedFS).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$STACK_SCRIPTS/stop_ray.sh"
"$STACK_SCRIPTS/stop_mlflow.sh"
"$STACK_SCRIPTS/stop_s3.sh"
rm -f "$STACK_DIR/env.sh"
