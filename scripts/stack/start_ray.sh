#!/usr/bin/env bash
# Start a Ray head node on 127.0.0.1 with token authentication, from the project venv.
#
#   scripts/stack/start_ray.sh
#
# Settings (environment):
#   BPIML_RAY_NUM_CPUS        CPUs the head offers (default 2; 0 when BPIML_RAY_WORKERS > 0)
#   BPIML_RAY_WORKERS         worker nodes to start after the head (default 0: a single-node head);
#                             see start_ray_worker.sh
#   BPIML_RAY_PORT            GCS port (default 6379, or a free port when 6379 is taken)
#   BPIML_RAY_DASHBOARD_PORT  dashboard / Jobs API port (default 8265, same fallback)
#   BPIML_RAY_TEMP_DIR        Ray's temp/session dir (default <state>/ray, or /tmp/bpiml-ray-<id>
#                             when that path is too long for Unix sockets)
#   BPIML_RAY_OBJECT_STORE_BYTES  object store size (default 200 MB)
#
# Single-node mode (no workers): the head is 127.0.0.1 and every Ray server listens there only.
# Cluster mode (BPIML_RAY_WORKERS > 0): like cluster.yaml, the head offers no CPUs and runs only
# drivers and the control plane; it is 127.0.0.2 and each worker node 127.0.0.<2+k>, all loopback
# addresses (Ray keeps them, unlike 127.0.0.1, which it swaps for a routable address when nodes join).
#
# Token authentication (Ray >= 2.52): the head runs with RAY_AUTH_MODE=token and
# RAY_AUTH_TOKEN_PATH=<state>/ray_auth_token (a random 256-bit hex token, mode 600, created here
# once). Every client needs the same two variables (or RAY_AUTH_TOKEN=<token>): `ray job submit`
# then sends `Authorization: Bearer <token>`; without it the dashboard answers 401.
# ~/.ray/auth_token is never read or written by these scripts.
#
# Jobs inherit the head's environment: when the local S3 / MLflow of the same state dir run,
# their endpoint, the fake S3 credentials and MLFLOW_TRACKING_URI are put there (not in a job's
# runtime_env, which the dashboard displays).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if alive ray; then
    cat "$STACK_DIR/ray.dashboard"
    log "ray: already running (process group $(cat "$STACK_DIR/ray.pid"))"
    exit 0
fi

WORKERS="${BPIML_RAY_WORKERS:-0}"
if (( WORKERS > 0 )); then NODE_IP=127.0.0.2; NUM_CPUS="${BPIML_RAY_NUM_CPUS:-0}"; else NODE_IP=$HOST; NUM_CPUS="${BPIML_RAY_NUM_CPUS:-2}"; fi
OBJECT_STORE="${BPIML_RAY_OBJECT_STORE_BYTES:-200000000}"
# pick_port VAR DEFAULT: an explicit port must be free; the default falls back to a free one.
pick_port() {
    local var="$1" default="$2" port
    if [[ -n "${!var:-}" ]]; then
        port="${!var}"
        wait_port_free "$port" 10 || die "ray: port $port on $HOST is already in use ($var)"
    else
        port="$default"
        if port_busy "$port"; then
            port="$(free_port)"
            log "ray: port $default is busy, using $port (set $var to choose)"
        fi
    fi
    echo "$port"
}
GCS_PORT="$(pick_port BPIML_RAY_PORT 6379)"
DASH_PORT="$(pick_port BPIML_RAY_DASHBOARD_PORT 8265)"

# Unix socket paths must stay under 108 bytes: <temp>/session_<date>_<pid>/sockets/plasma_store
TEMP_DIR="${BPIML_RAY_TEMP_DIR:-$STACK_DIR/ray}"
if (( ${#TEMP_DIR} > 40 )); then
    [[ -z "${BPIML_RAY_TEMP_DIR:-}" ]] || die "ray: BPIML_RAY_TEMP_DIR is ${#TEMP_DIR} characters; keep it <= 40 (Unix socket path limit)"
    TEMP_DIR="$(mktemp -d /tmp/bpiml-ray-XXXXXX)"
fi
mkdir -p "$TEMP_DIR"
echo "$TEMP_DIR" > "$STACK_DIR/ray.tempdir"

TOKEN_FILE="$STACK_DIR/ray_auth_token"
if [[ ! -s "$TOKEN_FILE" ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN_FILE")
fi
chmod 600 "$TOKEN_FILE"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
unset RAY_AUTH_TOKEN RAY_ADDRESS
# On Linux `ray start` replaces --node-ip-address 127.0.0.1 by the first routable address
# (services.resolve_ip_for_localhost). This switch (meant for single-node macOS/Windows) keeps the
# loopback address, so the GCS, raylet and agents bind and advertise 127.0.0.1 only; it also
# refuses worker nodes joining this head, which a local single-node head never needs.
if (( WORKERS == 0 )); then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi
echo "$WORKERS" > "$STACK_DIR/ray.workers"

# Services of this state dir that jobs should reach.
export_services

# A job's `python` is resolved on the head's PATH: make it the project venv's.
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"

# Fixed ports for the head's helper servers would collide with a second head on this machine.
read -r CLIENT_PORT AGENT_PORT AGENT_GRPC_PORT RUNTIME_ENV_PORT METRICS_PORT <<< "$(free_ports 5)"

start=$SECONDS
start_group ray "$VENV/bin/ray" start --head \
    --node-ip-address "$NODE_IP" --port "$GCS_PORT" \
    --include-dashboard true --dashboard-host "$NODE_IP" --dashboard-port "$DASH_PORT" \
    --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
    --dashboard-agent-grpc-port "$AGENT_GRPC_PORT" --runtime-env-agent-port "$RUNTIME_ENV_PORT" \
    --metrics-export-port "$METRICS_PORT" \
    --num-cpus "$NUM_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE" \
    --temp-dir "$TEMP_DIR" --disable-usage-stats
echo "$DASH_PORT" > "$STACK_DIR/ray.port"
echo "$NODE_IP:$GCS_PORT" > "$STACK_DIR/ray.gcs"
echo "http://$NODE_IP:$DASH_PORT" > "$STACK_DIR/ray.dashboard"
# The Jobs API answers once the dashboard is up; with token auth every route needs the token.
wait_http "http://$NODE_IP:$DASH_PORT/api/version" 180 ray "$TOKEN_FILE"
log "ray: head up in $((SECONDS - start))s (process group $(cat "$STACK_DIR/ray.pid"), GCS $NODE_IP:$GCS_PORT, $NUM_CPUS CPUs, token file $TOKEN_FILE, temp dir $TEMP_DIR)"
for (( k = 1; k <= WORKERS; k++ )); do
    "$STACK_SCRIPTS/start_ray_worker.sh" "$k" >&2
done
echo "http://$NODE_IP:$DASH_PORT"
