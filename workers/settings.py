"""Typed settings of the distributed backend, read once from the environment.

* `MFM_BROKER_URL` (default `redis://127.0.0.1:6379/0`): the Celery broker.
* `MFM_RESULT_BACKEND` (default: the broker URL): Celery result backend (chords need one).
* `MFM_EVENTS_URL` (default `redis://127.0.0.1:6379/0`): the event store; leases, locks
  and reservations live in the same Redis.
* `MFM_ARTIFACTS_URL` (required by workers): `s3://bucket/prefix?endpoint=…`.
* `MFM_CONTROL_QUEUE` / `MFM_ATTEMPT_QUEUE` / `MFM_SUBMIT_QUEUE` (`mfm.control` /
  `mfm.attempts` / `mfm.submit`): coordination, state attempts, submissions.
* `MFM_DEFAULT_QUEUE` (`celery`): Celery's default queue, where a client's plain
  `send_task("mfm.submit", ...)` lands; submission workers consume it (empty: don't).
* `MFM_VISIBILITY_TIMEOUT_S` (3600): broker redelivery of unacked messages; must exceed
  the longest attempt. Liveness never waits for it: a lost message is re-sent from the
  run's Redis timer (see below).
* `MFM_LEASE_TTL_S` (10): attempt lease TTL, renewed every TTL/3 while the attempt runs;
  an open attempt without a lease is an orphan, and a dispatched attempt whose worker took
  its lease and died is dispatched again once the lease is gone.
* `MFM_DISPATCH_TIMEOUT_S` (60): a dispatched attempt not seen in the log by then may be
  dispatched again (the guards make that harmless) — unless the attempt queue still holds a
  backlog (a wave wider than the workers drain in that time): then its message is most
  likely still queued, and it is given up only once the queue is empty. Sooner, one lease
  TTL after it was sent, when the attempt queue is empty and no worker claimed it (the
  message was lost).
* `MFM_LOCK_TTL_S` (lease TTL): the per-run coordinator lock TTL (renewed while it works;
  a dead holder on the same host is taken over at once).
* `MFM_WATCHDOG_S` (lease TTL + 1): the longest a running run goes without its coordinator
  looking at it (its timer in `mfm:timers`; sooner when a backoff or reservation ends).
* `MFM_INLINE_COORDINATION` (on): the attempt that ends, and the submission that starts a
  run, take the run's next coordination step in their own process instead of waiting for
  the chord's join (`0`: joins and timers only).
* `MFM_TIMER_POLL_S` (0.25): how often every control worker polls the due timers.
* `MFM_MAX_STATE_TIMEOUT_S` (3600; `0`: no cap): the deployment's cap on any state's
  timeout, and the timeout of states that declare none — so no handler can hold a run
  forever.
* `MFM_ARTIFACT_CACHE_TTL_S` (120): small artifacts (snapshots, ≤ 256 KiB) written by
  workers are also kept this long in Redis (`mfm:art:<id>`, hash-verified on read) so
  coordinators skip an S3 GET; `0` turns the cache off. Memory trade-off: the cache costs
  about (snapshot bytes written per second × TTL) of Redis memory, in the same Redis as
  the event log; with `maxmemory` + `noeviction` a full cache makes *event appends* fail
  (OOM), so keep the TTL short (the coordinator reads a snapshot within seconds of its
  write) and size `maxmemory` with that headroom. Cache writes are skipped while Redis
  reports `used_memory` above 90% of `maxmemory`.
* `MFM_WORKER_MAX_TASKS_PER_CHILD` (1000): a prefork child is replaced after that many
  tasks, bounding whatever a long-lived process accumulates (`0`: never). Not applied to
  a worker that consumes only the control queue: its caches are bounded by size, and a
  fresh child would rebuild every run it coordinates from the log.
* `MFM_TIMING` (off): `1` makes processes accumulate per-phase timings in `mfm:timing`.
* `MFM_TASK_EVENTS` (off): `1` turns on Celery task events (`worker_send_task_events`,
  `task_send_sent_event`), so `celery -A workers.app events` and Flower show the tasks;
  each task then costs a few more broker messages.
* `MFM_METRICS_PORT` (unset: off) / `MFM_METRICS_ADDR` (`127.0.0.1`): the worker's main
  process serves Prometheus metrics at `http://ADDR:PORT/metrics`, added up over its pool
  processes (`PROMETHEUS_MULTIPROC_DIR`; see `workers.metrics`, docs/dashboard.md).

Credentials belong in the URLs' environment (`MFM_REDIS_PASSWORD` or a file named by
`MFM_REDIS_PASSWORD_FILE`, `MFM_REDIS_USERNAME`,
`MFM_S3_ACCESS_KEY`, …): the Redis ones are applied to every `redis://`/`rediss://` URL
without credentials (events, broker, result backend); every URL that is printed is redacted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _float(name: str, default: float, *, zero_ok: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = float(raw)
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'non-negative' if zero_ok else 'positive'}")
    return value


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


def with_redis_credentials(url: str) -> str:
    """`url` with `MFM_REDIS_USERNAME`/`MFM_REDIS_PASSWORD` applied, if it is a Redis URL
    without credentials of its own. The result holds a secret: never print or log it
    (use `mfm_dist.secrets.redact_url`)."""
    password = os.environ.get("MFM_REDIS_PASSWORD")
    parts = urlsplit(url)
    if not password or parts.scheme not in ("redis", "rediss") or "@" in parts.netloc:
        return url
    user = quote(os.environ.get("MFM_REDIS_USERNAME", ""), safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def load_password_file() -> None:
    """`MFM_REDIS_PASSWORD_FILE` (e.g. a compose secret) sets `MFM_REDIS_PASSWORD` for
    this process, so the password need not sit in the container's environment."""
    path = os.environ.get("MFM_REDIS_PASSWORD_FILE")
    if path and not os.environ.get("MFM_REDIS_PASSWORD"):
        with open(path, encoding="utf-8") as fh:
            os.environ["MFM_REDIS_PASSWORD"] = fh.read().strip("\r\n")


@dataclass(frozen=True)
class Settings:
    broker_url: str
    result_backend: str
    events_url: str
    artifacts_url: str | None
    control_queue: str
    attempt_queue: str
    visibility_timeout_s: float
    lease_ttl_s: float
    dispatch_timeout_s: float
    lock_ttl_s: float
    watchdog_s: float
    timing: bool
    artifact_cache_ttl_s: int
    max_tasks_per_child: int = 1000
    submit_queue: str = "mfm.submit"
    default_queue: str = "celery"
    timer_poll_s: float = 0.25
    inline_coordination: bool = True
    max_state_timeout_s: float = 3600.0
    task_events: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        load_password_file()
        env = os.environ
        broker = env.get("MFM_BROKER_URL") or DEFAULT_REDIS
        lease = _float("MFM_LEASE_TTL_S", 10.0)
        return cls(
            broker_url=with_redis_credentials(broker),
            result_backend=with_redis_credentials(env.get("MFM_RESULT_BACKEND") or broker),
            events_url=env.get("MFM_EVENTS_URL") or DEFAULT_REDIS,
            artifacts_url=env.get("MFM_ARTIFACTS_URL") or None,
            control_queue=env.get("MFM_CONTROL_QUEUE") or "mfm.control",
            attempt_queue=env.get("MFM_ATTEMPT_QUEUE") or "mfm.attempts",
            visibility_timeout_s=_float("MFM_VISIBILITY_TIMEOUT_S", 3600.0),
            lease_ttl_s=lease,
            dispatch_timeout_s=_float("MFM_DISPATCH_TIMEOUT_S", 60.0),
            lock_ttl_s=_float("MFM_LOCK_TTL_S", lease),
            watchdog_s=_float("MFM_WATCHDOG_S", lease + 1.0),
            timing=env.get("MFM_TIMING", "").lower() in ("1", "true", "yes", "on"),
            artifact_cache_ttl_s=_int("MFM_ARTIFACT_CACHE_TTL_S", 120),
            max_tasks_per_child=_int("MFM_WORKER_MAX_TASKS_PER_CHILD", 1000),
            submit_queue=env.get("MFM_SUBMIT_QUEUE") or "mfm.submit",
            default_queue=env.get("MFM_DEFAULT_QUEUE", "celery").strip(),
            timer_poll_s=_float("MFM_TIMER_POLL_S", 0.25),
            inline_coordination=env.get("MFM_INLINE_COORDINATION", "1").lower()
            not in ("0", "false", "no", "off"),
            max_state_timeout_s=_float("MFM_MAX_STATE_TIMEOUT_S", 3600.0, zero_ok=True),
            task_events=env.get("MFM_TASK_EVENTS", "").lower() in ("1", "true", "yes", "on"),
        )

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    @property
    def max_state_timeout_ms(self) -> int | None:
        return int(self.max_state_timeout_s * 1000) or None
