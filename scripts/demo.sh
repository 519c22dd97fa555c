#!/usr/bin/env bash
# The main job on a fresh machine, offline, on the embedded defaults (SQLite, CPU FAISS):
# set up, build a small real collection (photos, their docstrings, a PDF with figures), index it through the
# caption road (configs/offline.yaml: MiniLM text space, EfficientNet-Lite0 labels, RapidOCR), query it,
# answer a question with cited sources (SmolLM2-135M, text-only), score retrieval on its labelled queries, then
# serve the web page on it (search, ask, add files; Ctrl-C stops it; DEMO_SERVE=0 skips it).
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
if [ "${DEMO_SERVE:-1}" != 0 ]; then
  echo "Now the web page: open the address below in a browser (Ctrl-C stops the server)." >&2
  run serve --port "${DEMO_PORT:-8080}"
fi
