#!/usr/bin/env bash
# Stop the Ray head started by start_ray.sh: only its own process group (recorded in ray.pid),
# never `ray stop`, which would stop every Ray instance on this machine.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# gcs_server and raylet wait on each other after SIGTERM (over 10 s); nothing of a local head
# needs a clean shutdown, so they get 3 s before SIGKILL.
stop_group ray 3
