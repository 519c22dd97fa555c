#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, on a loopback port, in a temporary directory.
#
#   eval "$(bash scripts/postgres.sh start)"   # prints: export MMRAG_TEST_POSTGRES_URL=postgresql+psycopg://...
#   bash scripts/postgres.sh stop               # stops it and deletes its files
#
# Installs Debian's `postgresql` package when no server binaries are found and we are root (CI). Postgres
# refuses to run as root, so as root the cluster belongs to the `postgres` user the package creates.
# The server is tuned for tests (fsync off): never point it at data you want to keep.
# Exit codes: 0 ok, 3 PostgreSQL is not installed and cannot be installed here (not root).
set -euo pipefail

ACTION=${1:-start}
STATE_DIR=${MMRAG_PG_DIR:-${TMPDIR:-/tmp}/mmrag-postgres-$(id -u)}
DB_USER=mmrag

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    echo "$dir"
  elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  fi
}

# Runs a server command as the cluster's owner: postgres when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

print_env() {
  echo "export MMRAG_TEST_POSTGRES_URL=$(cat "$STATE_DIR/url")"
}

start() {
  local bindir
  bindir=$(find_bindir)
  if [ -z "$bindir" ]; then
    if [ "$(id -u)" != 0 ]; then
      log "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
      exit 3
    fi
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    bindir=$(find_bindir)
    [ -n "$bindir" ] || { log "postgresql installed, but no initdb found"; exit 3; }
  fi

  if [ -f "$STATE_DIR/url" ] && as_owner "$bindir/pg_ctl" -D "$STATE_DIR/data" status >/dev/null 2>&1; then
    log "already running ($STATE_DIR)"
    print_env
    return
  fi
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR"
  chmod 700 "$STATE_DIR"
  local password port
  password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  port=$(free_port)
  printf '%s\n' "$password" >"$STATE_DIR/pwfile"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$STATE_DIR" --shell /bin/sh postgres
    chown -R postgres: "$STATE_DIR"
  fi
  # C.UTF-8 exists on every Debian; UTF8 like the postgres image, so any Unicode path round-trips.
  as_owner "$bindir/initdb" -D "$STATE_DIR/data" -U "$DB_USER" --pwfile="$STATE_DIR/pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$STATE_DIR/initdb.log" 2>&1 \
    || { cat "$STATE_DIR/initdb.log" >&2; exit 1; }
  as_owner "$bindir/pg_ctl" -D "$STATE_DIR/data" -l "$STATE_DIR/server.log" -w -t 60 start -o \
    "-p $port -c listen_addresses=127.0.0.1 -k $STATE_DIR -c max_connections=200 -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off" >&2 \
    || { cat "$STATE_DIR/server.log" >&2; exit 1; }
  echo "postgresql+psycopg://$DB_USER:$password@127.0.0.1:$port/postgres" >"$STATE_DIR/url"
  log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($STATE_DIR)"
  print_env
}

stop() {
  local bindir
  bindir=$(find_bindir)
  if [ -n "$bindir" ] && [ -d "$STATE_DIR/data" ]; then
    as_owner "$bindir/pg_ctl" -D "$STATE_DIR/data" -m fast -w stop >&2 || true
  fi
  rm -rf "$STATE_DIR"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  *) log "usage: $0 start|stop"; exit 2 ;;
esac
