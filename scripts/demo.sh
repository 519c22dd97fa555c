#!/usr/bin/env bash
# The main job on a fresh machine, offline, on the embedded defaults (SQLite, CPU FAISS):
# set up, build a small real collection (photos, their docstrings, a PDF with figures), index it through the
# caption road (the offline profile: MiniLM text space, EfficientNet-Lite0 labels, RapidOCR), query it,
# answer a question with cited sources (SmolLM2-135M, text-only), score retrieval on its labelled queries, then
# serve the web page on it (search, ask, add files; Ctrl-C stops it; DEMO_SERVE=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DEMO=${DEMO_DIR:-demo}
mmrag make-eval-set photos "$DEMO/library" >/dev/null
mv "$DEMO/library/qrels-photos.jsonl" "$DEMO/qrels-photos.jsonl"  # the labels are not part of the library
run() { mmrag --data-dir "$DEMO/data" "$@"; }
step() { printf '\n== %s\n' "$*" >&2; }
step "index the library with the offline profile (the collection remembers it)"
run --config offline index "$DEMO/library"
step 'query: "a cat"'
run query "a cat" -k 5
step 'query: "an astronaut in a space suit"'
run query "an astronaut in a space suit" -k 5
step "query by image: photos/coffee.jpg"
run query --image "$DEMO/library/photos/coffee.jpg" -k 3
step 'ask: "What is the rocket photo about?" (SmolLM2-135M: tiny, so judge the wiring, not the prose)'
run ask "What is the rocket photo about?" -k 4
step "evaluation on the library's 25 labelled queries"
run eval "$DEMO/qrels-photos.jsonl"
if [ "${DEMO_SERVE:-1}" != 0 ]; then
  echo "Now the web page: open the address below in a browser (Ctrl-C stops the server)." >&2
  run serve --port "${DEMO_PORT:-8080}"
fi
