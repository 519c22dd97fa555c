#!/usr/bin/env bash
# The main job on a fresh machine, offline, on the embedded defaults (SQLite, CPU FAISS):
# set up, build a small real collection (photos, their docstrings, a PDF with figures), index it through the
# caption road (configs/offline.yaml: MiniLM text space, EfficientNet-Lite0 labels, RapidOCR), query it,
# answer a question with cited sources (SmolLM2-135M, text-only), and score retrieval on its labelled queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DEMO=${DEMO_DIR:-demo}
mmrag make-eval-set photos "$DEMO/library" >/dev/null
run() { mmrag --config configs/offline.yaml --data-dir "$DEMO/data" "$@"; }
run index "$DEMO/library"
run query "a cat" -k 5
run query "an astronaut in a space suit" -k 5
run query --image "$DEMO/library/photos/coffee.jpg" -k 3
run ask "What is the rocket photo about?" -k 4   # SmolLM2-135M: tiny, so judge the wiring, not the prose
run eval "$DEMO/library/qrels-photos.jsonl"
