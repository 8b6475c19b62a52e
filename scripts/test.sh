#!/usr/bin/env bash
# Set up the dev environment and run the whole test suite (CPU only, offline, no ../shared needed).
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
