#!/usr/bin/env bash
# Set up OpenLLM, then run the whole pipeline on the embedded corpus (openllm quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
exec openllm quickstart "$@"
