#!/usr/bin/env bash
# Set up OpenLLM in ./.venv from nothing but python3 and pip. Idempotent: a second run installs nothing new.
#   bash scripts/setup.sh          # the package with every extra (app, serve, export, eval)
#   bash scripts/setup.sh --dev    # plus what the tests need (and Chromium for the browser tests, as root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: a bare "torch" would pull a multi-GB CUDA build of a newer release
if ! python -c "import torch" 2>/dev/null; then
  echo "==> installing torch 2.13.0"
  pip install -q "torch==2.13.0"
fi
extras="[all]"
if [ "${1:-}" = "--dev" ]; then extras="[all,dev]"; fi
echo "==> installing openllm${extras} (editable)"
pip install -q -e ".${extras}"
if [ "${1:-}" = "--dev" ]; then
  # Debian's Chromium drives the browser tests (playwright's own browser download cannot work offline)
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium (apt)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "==> ready: . .venv/bin/activate"
