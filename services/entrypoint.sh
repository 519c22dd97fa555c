#!/bin/sh
# Container entrypoint: check the volumes are writable, bring the database schema up to date, then run the
# command (by default `mmrag serve`).
#
# The migration runs under a lock every replica shares (a PostgreSQL advisory lock, or a file lock next to a
# SQLite file; mmrag/store/db.py), so replicas that start together are safe: the first one migrates, the
# others find the schema current. MMRAG_MIGRATE_ON_START=0 skips it here (the service still migrates when it
# opens the database).
set -eu

for dir in "${MMRAG_DATA_DIR:-/data}" "${HF_HOME:-/cache/huggingface}"; do
  mkdir -p "$dir" 2>/dev/null || true
  if [ ! -w "$dir" ]; then
    echo "entrypoint: $dir is not writable by uid $(id -u); mount a volume owned by it there" >&2
    exit 1
  fi
done

if [ "${MMRAG_MIGRATE_ON_START:-1}" != 0 ] && [ "${1:-}" = mmrag ]; then
  python - <<'PY'
import sys

from mmrag.errors import MmragError
from mmrag.settings import load_settings
from mmrag.store.db import Database, safe_url

try:
    settings = load_settings()
    Database(settings.db_url).close()
except MmragError as exc:
    sys.exit(f"entrypoint: {exc}")
print(f"entrypoint: database schema is current ({safe_url(settings.db_url)})", file=sys.stderr)
PY
fi

exec "$@"
