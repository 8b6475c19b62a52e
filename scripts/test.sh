#!/usr/bin/env bash
# Set up the dev environment and run the whole test suite (CPU only, offline, no ../shared needed).
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# Two pytest workers: the tests on the local cluster (one group, started first) beside the rest, which
# fills the cluster tests' idle time (job start-up, waits for progress); --durations shows what is slow.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=25 "$@"
