#!/usr/bin/env bash
# Start worker node K of the local cluster (after start_ray.sh in cluster mode, BPIML_RAY_WORKERS > 0).
#
#   scripts/stack/start_ray_worker.sh 1
#
# The node is 127.0.0.<2+K> with BPIML_RAY_WORKER_CPUS CPUs (default 1) and its own ports. Like a
# machine of its own, it has a private disk: as root, where `unshare` works, its raylet runs in a
# private mount namespace with an empty tmpfs mounted on /tmp, so whatever a task writes to a local
# path under /tmp stays invisible to the head and to the other nodes (and what the head has there is
# invisible to it). Elsewhere it gets a temp dir of its own and a warning. Its jobs see the same
# S3 endpoint and MLflow server as the head's; their caches (BPIML_CACHE) are private too.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

K="${1:?usage: start_ray_worker.sh K (1, 2, ...)}"
NAME="ray-worker-$K"
if alive "$NAME"; then
    log "$NAME: already running (process group $(cat "$STACK_DIR/$NAME.pid"))"
    exit 0
fi
[[ -f "$STACK_DIR/ray.gcs" ]] || die "$NAME: no head (start scripts/stack/start_ray.sh with BPIML_RAY_WORKERS > 0 first)"
NODE_IP="127.0.0.$((2 + K))"
CPUS="${BPIML_RAY_WORKER_CPUS:-1}"
OBJECT_STORE="${BPIML_RAY_OBJECT_STORE_BYTES:-200000000}"

export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STACK_DIR/ray_auth_token"
unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
export_services
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" BPIML_CACHE=/tmp/bpiml-cache

read -r -a ports <<< "$(free_ports 7)"
# Worker processes get 1000 ports of their own: above the head's (Ray's default 10002-19999) and
# below the kernel's ephemeral range, where free_port (and every outgoing connection) picks ports.
MIN_WORKER_PORT=$((19000 + 1000 * K))
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
(( MIN_WORKER_PORT + 999 < EPHEMERAL_LOW )) || die "$NAME: worker ports $MIN_WORKER_PORT+ reach the ephemeral range ($EPHEMERAL_LOW+)"
args=(start --address "$(cat "$STACK_DIR/ray.gcs")" --node-ip-address "$NODE_IP" --num-cpus "$CPUS" --num-gpus 0
      --object-store-memory "$OBJECT_STORE" --node-manager-port "${ports[0]}" --object-manager-port "${ports[1]}"
      --dashboard-agent-listen-port "${ports[2]}" --dashboard-agent-grpc-port "${ports[3]}"
      --runtime-env-agent-port "${ports[4]}" --metrics-export-port "${ports[5]}"
      --min-worker-port "$MIN_WORKER_PORT" --max-worker-port $((MIN_WORKER_PORT + 999))
      --labels "{\"bpiml-node\": \"worker-$K\"}" --disable-usage-stats)

start=$SECONDS
# A checkout or venv under /tmp (a fresh clone in /tmp/x) stays visible through the tmpfs: its top folder
# below /tmp is bound aside first, then back in place (the rest of /tmp is the node's own).
KEEP=()
for path in "$REPO_ROOT" "$VENV"; do
    real="$(realpath "$path")"
    top="/tmp/$(cut -d/ -f3 <<< "$real")"
    [[ "$real" == /tmp/* && " ${KEEP[*]} " != *" $top "* ]] && KEEP+=("$top")
done
if [[ "$(id -u)" == 0 ]] && unshare --mount --propagation private true 2>/dev/null; then
    SCRATCH="private tmpfs on /tmp${KEEP:+ (keeping ${KEEP[*]})}"
    start_group "$NAME" unshare --mount --propagation private bash -c '
        aside="$0"; keep=()
        while [[ "$1" != -- ]]; do keep+=("$1"); shift; done; shift
        for k in "${keep[@]}"; do mkdir -p "$aside$k" && mount --bind "$k" "$aside$k" || exit 1; done
        mount -t tmpfs -o size=4g bpiml-scratch /tmp || exit 1
        for k in "${keep[@]}"; do mkdir -p "$k" && mount --bind "$aside$k" "$k" || exit 1; done
        exec "$@" --temp-dir /tmp/ray' "$STACK_DIR/$NAME-aside" "${KEEP[@]}" -- "$VENV/bin/ray" "${args[@]}"
else
    SCRATCH="$STACK_DIR/$NAME (no private mount namespace here: local paths stay shared, see docs/deployment.md)"
    log "$NAME: WARNING: cannot unshare a mount namespace; the node shares the head's disk"
    mkdir -p "$STACK_DIR/$NAME"
    start_group "$NAME" "$VENV/bin/ray" "${args[@]}" --temp-dir "$(mktemp -d /tmp/bpiml-w-XXXXXX)"
fi
echo "$NODE_IP" > "$STACK_DIR/$NAME.ip"
"$PY" - "$NODE_IP" 120 <<'PYEOF' || { tail -n 30 "$STACK_DIR/$NAME.log" >&2; die "$NAME did not join the head within 120s (log: $STACK_DIR/$NAME.log)"; }
import json, os, subprocess, sys, time
node_ip, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    out = subprocess.run([os.environ["VIRTUAL_ENV"] + "/bin/ray", "list", "nodes", "--format", "json",
                          "--address", open(os.path.join(os.environ["BPIML_STACK_DIR_RESOLVED"], "ray.dashboard")).read().strip()],
                         capture_output=True, text=True)
    try:  # the state API may answer with a log line or nothing while the head is still starting
        nodes = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    except ValueError:
        nodes = []
    if any(n.get("node_ip") == node_ip and n.get("state") == "ALIVE" for n in nodes if isinstance(n, dict)):
        sys.exit(0)
    time.sleep(1)
sys.exit(1)
PYEOF
log "$NAME: up in $((SECONDS - start))s at $NODE_IP with $CPUS CPU(s), scratch: $SCRATCH"
