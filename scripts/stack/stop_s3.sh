#!/usr/bin/env bash
# Stop the local S3 endpoint started by start_s3.sh (only the process group it recorded).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
stop_group s3 3
