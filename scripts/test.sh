#!/usr/bin/env bash
# Set up everything the tests need, check lint, format and types, then run the whole suite (slow end-to-end tests
# included). Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
. .venv/bin/activate
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
# lint and format (ruff, pyproject's [tool.ruff]) and types (mypy, pyproject's [tool.mypy]: src/openllm) first
ruff check .
ruff format --check .
mypy
exec python -m pytest "$@"
