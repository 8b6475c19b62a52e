#!/usr/bin/env bash
# Start a local S3 API endpoint (moto in server mode) on 127.0.0.1.
#
#   scripts/stack/start_s3.sh            # port from BPIML_S3_PORT, else a free port
#   BPIML_STACK_DIR=/tmp/x scripts/stack/start_s3.sh
#
# Records s3.pid / s3.port in the state dir, waits until it answers, prints the endpoint URL.
# Data lives in memory: stopping the server drops every bucket.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if alive s3; then
    echo "http://$HOST:$(cat "$STACK_DIR/s3.port")"
    log "s3: already running (pid $(cat "$STACK_DIR/s3.pid"))"
    exit 0
fi

PORT="${BPIML_S3_PORT:-$(free_port)}"
port_busy "$PORT" && die "s3: port $PORT on $HOST is already in use (set BPIML_S3_PORT)"
[[ -x "$VENV/bin/moto_server" ]] || die "s3: $VENV/bin/moto_server not found; install the dev extra (moto[server])"

start=$SECONDS
start_group s3 "$VENV/bin/moto_server" -H "$HOST" -p "$PORT"
echo "$PORT" > "$STACK_DIR/s3.port"
wait_http "http://$HOST:$PORT/moto-api/data.json" 60 s3
log "s3: up in $((SECONDS - start))s (pid $(cat "$STACK_DIR/s3.pid"), log $STACK_DIR/s3.log)"
echo "http://$HOST:$PORT"
