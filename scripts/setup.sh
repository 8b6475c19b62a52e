#!/usr/bin/env bash
# Create (or update) the project virtualenv .venv with everything bpiml needs.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    + test dependencies (pytest, moto server) and, as root with apt, Chromium
# Torch is installed first and pinned through constraints.txt so nothing re-resolves it.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: bpiml needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

stamp=.venv/.bpiml-installed
[ $dev = 1 ] && stamp=$stamp-dev
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then
  echo "setup.sh: .venv is up to date"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
  echo "setup.sh: installing torch (a few minutes on a new machine)"
  "${pip[@]}" -c constraints.txt torch torchvision
  echo "setup.sh: installing bpiml and its dependencies"
  if [ $dev = 1 ]; then "${pip[@]}" -c constraints.txt -e '.[dev]'; else "${pip[@]}" -c constraints.txt -e .; fi
  # label-studio-sdk pins opencv-python-headless < 4.13 (bpiml uses 5.x): installed without its dependencies,
  # for the one module bpiml uses, its brush RLE (numpy + Pillow only; bpiml/review/rle.py)
  "${pip[@]}" -c constraints.txt --no-deps label-studio-sdk
  touch "$stamp"
fi

if [ $dev = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  # The HTML report test renders the report in headless Chromium; it skips (saying why) without it.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing Chromium for the report test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup.sh: could not install Chromium; the report rendering test will be skipped" >&2
  else
    echo "setup.sh: Chromium not found; the report rendering test will be skipped (install 'chromium' to run it)" >&2
  fi
fi
if [ $dev = 1 ]; then
  # The Label Studio round-trip test runs a real server from a venv of its own (its pins clash with ours):
  # ~1 GB, ~75 s to install; `init` migrates a template database once (~2 min), so each test start takes ~20 s.
  ls_venv=.venv-labelstudio
  if [ ! -f "$ls_venv/.bpiml-installed" ] || ! grep -qx 1.23.2 "$ls_venv/.bpiml-installed"; then
    echo "setup.sh: installing Label Studio into $ls_venv (for the review round-trip test)"
    if rm -rf "$ls_venv" && "$PYTHON" -m venv "$ls_venv" \
      && "$ls_venv/bin/python" -m pip install --quiet --disable-pip-version-check label-studio==1.23.2 \
      && LABEL_STUDIO_BASE_DATA_DIR="$ls_venv/template" "$ls_venv/bin/label-studio" init --data-dir "$ls_venv/template" \
        --username review@bpiml.test --password bpiml-review --user-token bpimlreviewtoken0123456789abcdef01234567 \
        --enable-legacy-api-token >"$ls_venv/init.log" 2>&1; then
      printf '{"username": "review@bpiml.test", "token": "bpimlreviewtoken0123456789abcdef01234567"}\n' \
        >"$ls_venv/template/credentials.json"
      echo 1.23.2 >"$ls_venv/.bpiml-installed"
    else
      echo "setup.sh: could not install Label Studio; the review round-trip test fails under CI=true" >&2
    fi
  fi
fi
echo "setup.sh: done (.venv/bin/python $(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
