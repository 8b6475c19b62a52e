#!/usr/bin/env bash
# Stop the MLflow server started by start_mlflow.sh (only the process group it recorded).
# The SQLite database (mlflow.db) stays in the state dir.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
stop_group mlflow
rm -f "$STACK_DIR/mlflow.auth"  # clients of a later server without auth send no credentials
