# Shared helpers for the local service scripts (sourced, never run).
#
# State layout (BPIML_STACK_DIR, default <repo>/.bpiml/stack):
#   <service>.pid     process-group leader started by us (setsid), the only thing stop_* kills
#   <service>.port    port it listens on
#   ports.reserved    every port this stack picked (free_ports), never handed out twice
#   <service>.log     its stdout/stderr
#   s3.env            the S3 endpoint's access key and secret (generated once, mode 600)
#   mlflow-auth.env   MLflow basic auth (BPIML_STACK_MLFLOW_AUTH=1): admin user, password, CSRF key (mode 600);
#   mlflow.auth       present while the MLflow server runs with it; mlflow-auth.ini/.db: its config and users
#   s3data/           SeaweedFS data (kept across restarts)
#   env.sh            exports for clients (written by up.sh), chmod 600
# shellcheck shell=bash

set -euo pipefail

STACK_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$STACK_SCRIPTS/../.." && pwd)"
STACK_DIR="${BPIML_STACK_DIR:-$REPO_ROOT/.bpiml/stack}"
export BPIML_STACK_DIR_RESOLVED="$STACK_DIR"
VENV="${BPIML_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
HOST=127.0.0.1

LOCAL_AWS_REGION=us-east-1

# load_s3_credentials: export the local S3 endpoint's key pair (made by start_s3.sh) as AWS_* variables.
load_s3_credentials() {
    [[ -f "$STACK_DIR/s3.env" ]] || die "no $STACK_DIR/s3.env: start scripts/stack/start_s3.sh first"
    # shellcheck disable=SC1091
    source "$STACK_DIR/s3.env"
    export AWS_ACCESS_KEY_ID="$BPIML_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BPIML_S3_SECRET_KEY"
    export AWS_DEFAULT_REGION="$LOCAL_AWS_REGION" AWS_REGION="$LOCAL_AWS_REGION"
    unset AWS_SESSION_TOKEN AWS_PROFILE
}

# export_mlflow_server_auth: for the MLflow server of start_mlflow.sh with BPIML_STACK_MLFLOW_AUTH=1:
# generate once (mode 600) the admin password and the CSRF key into mlflow-auth.env, write the auth
# config mlflow-auth.ini (no secret in it), and export what the basic-auth app reads.
export_mlflow_server_auth() {
    local creds="$STACK_DIR/mlflow-auth.env"
    if [[ ! -s "$creds" ]]; then
        (umask 077 && "$PY" -c 'import secrets
print(f"BPIML_MLFLOW_USERNAME=bpiml-admin\nBPIML_MLFLOW_PASSWORD={secrets.token_hex(24)}\n"
      f"BPIML_MLFLOW_SECRET_KEY={secrets.token_hex(32)}")' > "$creds")
    fi
    chmod 600 "$creds"
    # shellcheck disable=SC1090
    source "$creds"
    cat > "$STACK_DIR/mlflow-auth.ini" <<INIEOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$STACK_DIR/mlflow-auth.db
admin_username = $BPIML_MLFLOW_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INIEOF
    export MLFLOW_AUTH_CONFIG_PATH="$STACK_DIR/mlflow-auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$BPIML_MLFLOW_PASSWORD"
    export MLFLOW_FLASK_SERVER_SECRET_KEY="$BPIML_MLFLOW_SECRET_KEY"
}

# load_mlflow_credentials: when this state dir's MLflow runs with basic auth, export its admin
# credentials as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (what MLflow clients send).
load_mlflow_credentials() {
    [[ -f "$STACK_DIR/mlflow.auth" ]] || return 0
    # shellcheck disable=SC1091
    source "$STACK_DIR/mlflow-auth.env"
    export MLFLOW_TRACKING_USERNAME="$BPIML_MLFLOW_USERNAME" MLFLOW_TRACKING_PASSWORD="$BPIML_MLFLOW_PASSWORD"
}

# export_services: the local S3 endpoint (with its credentials) and MLflow server of this state dir,
# for a Ray node whose jobs and workers must reach them.
export_services() {
    if alive s3; then
        local endpoint="http://$HOST:$(cat "$STACK_DIR/s3.port")"
        export AWS_ENDPOINT_URL_S3="$endpoint" AWS_ENDPOINT_URL="$endpoint" MLFLOW_S3_ENDPOINT_URL="$endpoint"
        load_s3_credentials
    fi
    if alive mlflow; then
        export MLFLOW_TRACKING_URI="http://$HOST:$(cat "$STACK_DIR/mlflow.port")"
        load_mlflow_credentials
    fi
}

mkdir -p "$STACK_DIR"
chmod 700 "$STACK_DIR"

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[stack] $*" >&2; }

# free_ports N: print N distinct TCP ports, free on 127.0.0.1 right now, and reserve them in
# $STACK_DIR/ports.reserved. One kernel pick per port, each socket held until all N are picked:
# picked one at a time, the kernel may hand out a port twice (two components of one Ray node got
# the same port, and the node never started). A port this stack reserved before (picked, perhaps
# not yet bound by its service) is never handed out again. Callers run one at a time.
free_ports() {
    "$PY" - "$1" "$STACK_DIR/ports.reserved" <<'PYEOF'
import socket, sys
from pathlib import Path

n, reserved = int(sys.argv[1]), Path(sys.argv[2])
taken = set(reserved.read_text().split()) if reserved.exists() else set()
held, ports = [], []
while len(ports) < n:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    held.append(sock)
    port = str(sock.getsockname()[1])
    if port not in taken:
        taken.add(port)
        ports.append(port)
with reserved.open("a") as out:
    out.write("".join(f"{port}\n" for port in ports))
print(" ".join(ports))
PYEOF
}

# free_port: one port, as free_ports.
free_port() { free_ports 1; }

# port_busy PORT: true when something accepts connections on 127.0.0.1:PORT.
port_busy() {
    "$PY" -c 'import socket, sys; s = socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# wait_port_free PORT SECONDS: true once nothing accepts connections on 127.0.0.1:PORT (a service
# stopped a moment ago may still hold it while the kernel closes its sockets).
wait_port_free() {
    local port="$1" seconds="${2:-10}"
    for _ in $(seq 1 $((seconds * 4))); do
        port_busy "$port" || return 0
        sleep 0.25
    done
    return 1
}

# alive NAME: true while any process of the process group recorded for NAME still runs.
alive() {
    local pidfile="$STACK_DIR/$1.pid"
    [[ -f "$pidfile" ]] || return 1
    local pgid
    pgid="$(cat "$pidfile")"
    [[ "$pgid" =~ ^[0-9]+$ ]] && (( pgid > 1 )) && group_alive "$pgid"
}

# group_alive SID: true while any live (non-zombie) process of that session runs.
# start_group uses setsid, so the session id is also the process-group id.
group_alive() {
    ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'
}

# wait_http URL SECONDS NAME [TOKEN_FILE]: poll until URL answers 2xx (sending
# `Authorization: Bearer <token>` when TOKEN_FILE is given), or fail showing the log tail.
wait_http() {
    local url="$1" timeout="$2" name="$3" token_file="${4:-}" start=$SECONDS
    until "$PY" - "$url" "$token_file" <<'EOF' 2>/dev/null
import sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    request.add_header("Authorization", "Bearer " + open(sys.argv[2]).read().strip())
urllib.request.urlopen(request, timeout=2).read()
EOF
    do
        if (( SECONDS - start > timeout )); then
            tail -n 30 "$STACK_DIR/$name.log" >&2 || true
            die "$name did not answer $url within ${timeout}s (log: $STACK_DIR/$name.log)"
        fi
        if [[ -f "$STACK_DIR/$name.pid" ]] && ! group_alive "$(cat "$STACK_DIR/$name.pid")"; then
            tail -n 30 "$STACK_DIR/$name.log" >&2 || true
            die "$name exited during start-up (log: $STACK_DIR/$name.log)"
        fi
        sleep 0.3
    done
}

# wait_group_gone PGID SECONDS: true once no process of the group runs, false after SECONDS.
wait_group_gone() {
    for _ in $(seq 1 $(($2 * 5))); do
        group_alive "$1" || return 0
        sleep 0.2
    done
    ! group_alive "$1"
}

# stop_group NAME [GRACE_SECONDS]: TERM, then after GRACE_SECONDS (default 10) KILL, the process
# group recorded in NAME.pid; remove the records. Only a group whose id we wrote ourselves is touched.
stop_group() {
    local name="$1" grace="${2:-10}" pidfile="$STACK_DIR/$1.pid"
    if [[ ! -f "$pidfile" ]]; then
        log "$name: not running (no $pidfile)"
        return 0
    fi
    local pgid
    pgid="$(cat "$pidfile")"
    if [[ "$pgid" =~ ^[0-9]+$ ]] && (( pgid > 1 )) && group_alive "$pgid"; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        if ! wait_group_gone "$pgid" "$grace"; then
            log "$name: still running after ${grace}s, sending KILL to group $pgid"
            kill -KILL -- "-$pgid" 2>/dev/null || true
            wait_group_gone "$pgid" 10 || true  # a killed process holds its ports until it is gone
        fi
        log "$name: stopped (process group $pgid)"
    else
        log "$name: process group ${pgid:-?} already gone"
    fi
    rm -f "$pidfile" "$STACK_DIR/$name.port"
}

# start_group NAME CMD...: run CMD in a new session (its own process group), record the pid.
# `CMD &` in a script starts CMD with SIGINT and SIGQUIT ignored, and everything it starts inherits
# that: Ray workers would then ignore the SIGINT of `ray.cancel` (a running task is not interrupted)
# and Ray's DeferSigint fails with "TypeError: 'Handlers' object is not callable". The exec wrapper
# restores both before CMD starts (same pid).
start_group() {
    local name="$1"; shift
    : > "$STACK_DIR/$name.log"
    setsid "$PY" -c 'import os, signal, sys
for sig in (signal.SIGINT, signal.SIGQUIT):
    signal.signal(sig, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@" >> "$STACK_DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$STACK_DIR/$name.pid"
}
