#!/usr/bin/env bash
# A local mfm-dist cluster: redis-server (AOF on, noeviction), the moto S3 server, one
# control worker (-Q mfm.control -c 1) and N attempt workers (-Q mfm.attempts).
#
#   scripts/cluster.sh start [N]   # N attempt-worker processes (default 2)
#   scripts/cluster.sh status
#   scripts/cluster.sh env         # print the settings to `eval` in a shell
#   scripts/cluster.sh stop
#
# State, pid files and logs live in $MFM_CLUSTER_DIR (default ./.mfm-cluster). Ports:
# MFM_REDIS_PORT (6390), MFM_S3_PORT (9010). Extra operations modules: MFM_OPERATIONS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${MFM_CLUSTER_DIR:-$ROOT/.mfm-cluster}"
PY="${MFM_PYTHON:-$ROOT/.venv/bin/python}"
REDIS_PORT="${MFM_REDIS_PORT:-6390}"
S3_PORT="${MFM_S3_PORT:-9010}"
BUCKET="${MFM_BUCKET:-mfm}"
ACCESS="${MFM_S3_ACCESS_KEY:-mfm-local}"
SECRET_VALUE="${MFM_S3_SECRET_KEY:-mfm-local}"

cluster_env() {
  cat <<ENV
export MFM_EVENTS_URL=redis://127.0.0.1:$REDIS_PORT/0
export MFM_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/1
export MFM_RESULT_BACKEND=redis://127.0.0.1:$REDIS_PORT/2
export MFM_ARTIFACTS_URL='s3://$BUCKET/artifacts?endpoint=http://127.0.0.1:$S3_PORT'
export MFM_S3_ACCESS_KEY=$ACCESS
export MFM_S3_SECRET_KEY=$SECRET_VALUE
ENV
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <what> <command...>
  local what="$1"; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$what did not come up; see $DIR/*.log" >&2
  return 1
}

start_worker() {  # start_worker <name> <queue> <concurrency>
  local name="$1" queue="$2" conc="$3"
  if alive "$DIR/$name.pid"; then return 0; fi
  (
    eval "$(cluster_env)"
    cd "$ROOT"
    setsid "$PY" -m celery -A workers.app worker -Q "$queue" -c "$conc" -P prefork \
      -n "$name@%h" --loglevel INFO --logfile "$DIR/$name.log" \
      --pidfile "$DIR/$name.pid" --without-gossip --without-mingle >/dev/null 2>&1 &
  )
  wait_for "worker $name" test -s "$DIR/$name.pid"
}

start() {
  local n="${1:-2}"
  mkdir -p "$DIR/redis"
  if ! alive "$DIR/redis.pid"; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" \
      --appendonly yes --appendfsync always --maxmemory-policy noeviction --save "" \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    wait_for redis-server redis-cli -p "$REDIS_PORT" ping
  fi
  if ! alive "$DIR/s3.pid"; then
    AWS_ACCESS_KEY_ID="$ACCESS" AWS_SECRET_ACCESS_KEY="$SECRET_VALUE" \
      setsid "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$DIR/s3.log" 2>&1 &
    echo $! >"$DIR/s3.pid"
    wait_for "moto S3 server" curl -sf "http://127.0.0.1:$S3_PORT/moto-api/"
    "$PY" - "$S3_PORT" "$BUCKET" "$ACCESS" "$SECRET_VALUE" <<'PYEOF'
import sys
from minio import Minio
port, bucket, access, secret = sys.argv[1:]
client = Minio(f"127.0.0.1:{port}", access_key=access, secret_key=secret, secure=False,
               region="us-east-1")
if not client.bucket_exists(bucket):
    client.make_bucket(bucket)
PYEOF
  fi
  start_worker control mfm.control 1
  for i in $(seq 1 "$n"); do start_worker "attempts$i" mfm.attempts 1; done
  echo "cluster up in $DIR ($n attempt workers). Use it with:"
  cluster_env
}

stop_pidfile() {  # stop_pidfile <file>: SIGTERM the process group, then SIGKILL
  local file="$1"
  [[ -f "$file" ]] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  for f in "$DIR"/attempts*.pid "$DIR"/control.pid "$DIR"/s3.pid; do
    [[ -e "$f" ]] && stop_pidfile "$f"
  done
  if alive "$DIR/redis.pid"; then
    redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || stop_pidfile "$DIR/redis.pid"
  fi
  rm -f "$DIR/redis.pid"
  echo "cluster stopped"
}

status() {
  for f in "$DIR"/redis.pid "$DIR"/s3.pid "$DIR"/control.pid "$DIR"/attempts*.pid; do
    [[ -e "$f" ]] || continue
    local name; name="$(basename "$f" .pid)"
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start "${2:-2}" ;;
  stop) stop ;;
  status) status ;;
  env) cluster_env ;;
  *) echo "usage: $0 start [N]|stop|status|env" >&2; exit 2 ;;
esac
