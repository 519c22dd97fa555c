#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on SQLite, then the end-to-end tests with Milvus Lite as the
# vector store, then the database-facing tests again on a real PostgreSQL server. Extra arguments go to pytest; they replace the PostgreSQL run's file list, and that run
# happens with arguments only when MMRAG_TEST_POSTGRES=1. MMRAG_TEST_POSTGRES=0 skips it; CI (CI=true)
# always runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check mmrag tests

# ---- Debian's chromium for the browser tests (tests/test_web.py): Playwright drives it, no browser download
CHROMIUM=${MMRAG_CHROMIUM:-/usr/bin/chromium}
if [ $# -eq 0 ] || [[ "$*" == *test_web* ]]; then
  if [ ! -x "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
  fi
  if [ ! -x "$CHROMIUM" ]; then
    if [ "${CI:-}" = true ]; then
      echo "error: CI must run the browser tests, and Debian's chromium could not be installed" >&2
      exit 1
    fi
    printf '\n%s\n%s\n\n' "!!!!!!!! BROWSER TESTS WILL BE SKIPPED: no $CHROMIUM here" \
      "!!!!!!!! (apt-get install chromium, or run this script as root). CI runs them." >&2
  fi
fi
unset MMRAG_DATABASE_URL MMRAG_TEST_POSTGRES_URL MMRAG_TEST_BACKEND  # never the developer's own database
.venv/bin/python -m pytest -q --durations=15 "$@"

# ---- the end-to-end tests again with their vectors in Milvus Lite (the conformance suite,
# tests/test_vector_store.py, ran on FAISS and Milvus Lite above). MMRAG_TEST_MILVUS=0 skips it; with
# arguments it runs them on Milvus only when MMRAG_TEST_MILVUS=1; CI always runs it.
# The CLI tests whose outcome does not depend on the store (a missing folder, an unknown model, SIGTERM)
# are not repeated, nor the move between stores: above, it moved a collection into Milvus and queried it.
if [ "${MMRAG_TEST_MILVUS:-}" != 0 ] && { [ $# -eq 0 ] || [ "${MMRAG_TEST_MILVUS:-}" = 1 ]; }; then
  if [ $# -eq 0 ]; then
    milvus_tests=(tests/test_cli_e2e.py::test_index_query_reindex_prune_delete tests/test_api.py tests/test_crash.py
      tests/test_pipeline.py)
  else
    milvus_tests=("$@")
  fi
  echo "---- on Milvus Lite: ${milvus_tests[*]}" >&2
  MMRAG_TEST_BACKEND=milvus .venv/bin/python -m pytest -q --durations=10 "${milvus_tests[@]}"
fi

# ---- the same again on PostgreSQL (scripts/postgres.sh: a throwaway server; each test its own database)
if [ "${CI:-}" != true ]; then
  if [ "${MMRAG_TEST_POSTGRES:-}" = 0 ]; then
    echo "PostgreSQL run skipped (MMRAG_TEST_POSTGRES=0)" >&2
    exit 0
  elif [ $# -gt 0 ] && [ "${MMRAG_TEST_POSTGRES:-}" != 1 ]; then
    echo "PostgreSQL run skipped: arguments were given (MMRAG_TEST_POSTGRES=1 runs them on PostgreSQL too)" >&2
    exit 0
  fi
fi
if ! PG_ENV=$(bash scripts/postgres.sh start); then
  if [ "${CI:-}" = true ]; then
    echo "error: CI must run the suite on PostgreSQL, and scripts/postgres.sh could not start it" >&2
    exit 1
  fi
  printf '\n%s\n%s\n%s\n\n' "!!!!!!!! PostgreSQL RUN SKIPPED: no PostgreSQL server could be started here" \
    "!!!!!!!! (apt-get install postgresql, or run as root). Only SQLite was tested." \
    "!!!!!!!! CI runs both; set MMRAG_TEST_POSTGRES=0 to silence this." >&2
  exit 0
fi
trap 'bash scripts/postgres.sh stop >/dev/null 2>&1' EXIT  # quiet: pytest's summary stays the last line
eval "$PG_ENV"
if [ $# -eq 0 ]; then
  # How the CLI handles SIGTERM does not depend on the database; kill -9 (test_crash.py) does. Moving a
  # collection between vector stores reads and writes through the same SQL as indexing it.
  shopt -s nullglob
  set -- tests/test_postgres.py tests/test_collection.py tests/test_lexical.py tests/test_pipeline.py \
    tests/test_cli_e2e.py tests/test_writers.py tests/test_crash.py tests/test_api*.py tests/test_job_queue.py \
    tests/test_replicas.py \
    --deselect "tests/test_cli_e2e.py::test_terminated_run_leaves_a_consistent_collection_and_rerun_finishes" \
    --deselect "tests/test_cli_e2e.py::test_query_filters_and_moving_the_collection_to_another_store"
fi
echo "---- on PostgreSQL: $*" >&2
status=0
.venv/bin/python -m pytest -q --durations=10 "$@" || status=$?
[ "$status" = 5 ] && status=0  # the selection had no database tests in it
exit "$status"
