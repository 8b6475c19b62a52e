#!/usr/bin/env bash
# Stop the local Ray cluster started by start_ray.sh: the worker nodes, then the head, each only by
# its own process group (recorded in <name>.pid); never `ray stop`, which would stop every Ray
# instance on this machine.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# gcs_server and raylet wait on each other after SIGTERM (over 10 s); nothing of a local cluster
# needs a clean shutdown, so they get 3 s before SIGKILL.
for pidfile in "$STACK_DIR"/ray-worker-*.pid; do
    [[ -e "$pidfile" ]] || continue
    name="$(basename "$pidfile" .pid)"
    stop_group "$name" 3
    rm -f "$STACK_DIR/$name.ip"
done
stop_group ray 3
