"""Typed settings of the distributed backend, read once where a worker or client starts.

Every variable, its default and who reads it is in docs/configuration.md. The cluster's
settings are the library's (`core`: stores, credentials, operations, transports,
provenance — `mfm_dist.settings`) plus the broker, the queues and the timings, all read
from the same environment mapping by `ClusterSettings.from_env(environ)`: the worker boot
(`workers.app`), the CLI (with its own store options applied to `core`), a script, or a
Python client. Nothing here writes to `os.environ`; a bad value is `settings_invalid`
naming the variable. `repr()` shows no secret: passwords are `SecretStr`, URLs redacted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mfm_dist.settings import Env, RedisCredentials, Settings, redacted_repr

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def with_redis_credentials(url: str, credentials: RedisCredentials | None = None) -> str:
    """`url` with `credentials` applied, if it is a Redis URL without credentials of its
    own (see `RedisCredentials.apply`). The result holds a secret: never print or log it."""
    return url if credentials is None else credentials.apply(url)


@dataclass(frozen=True)
class ClusterSettings:
    """The distributed backend's settings (docs/configuration.md#the-cluster)."""

    core: Settings = field(default_factory=Settings)
    """The library's settings: store URLs, credentials, operations, transports, provenance."""
    broker: str | None = None
    """`MFM_BROKER_URL` as configured; None: `DEFAULT_REDIS`."""
    backend: str | None = None
    """`MFM_RESULT_BACKEND` as configured; None: the broker."""
    control_queue: str = "mfm.control"
    attempt_queue: str = "mfm.attempts"
    submit_queue: str = "mfm.submit"
    default_queue: str = "celery"
    """Celery's default queue (a client's plain `send_task`); empty: not consumed."""
    visibility_timeout_s: float = 3600.0
    lease_ttl_s: float = 10.0
    dispatch_timeout_s: float = 60.0
    lock_ttl_s: float = 10.0
    watchdog_s: float = 11.0
    timer_poll_s: float = 0.25
    inline_coordination: bool = True
    max_state_timeout_s: float = 3600.0
    artifact_cache_ttl_s: int = 120
    max_tasks_per_child: int = 1000
    timing: bool = False
    task_events: bool = False
    metrics_port: int = 0
    """`MFM_METRICS_PORT`; 0: no exporter."""
    metrics_addr: str = "127.0.0.1"
    backfill_poll_s: float = 0.25

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterSettings:
        """Read the settings from `environ` (default: this process's environment), once,
        where the program starts."""
        mapping = os.environ if environ is None else environ
        env = Env(mapping)
        lease = env.number("MFM_LEASE_TTL_S", 10.0)
        default_queue = env.raw("MFM_DEFAULT_QUEUE", "celery").strip()
        return cls(
            core=Settings.from_env(mapping),
            broker=env.text("MFM_BROKER_URL"),
            backend=env.text("MFM_RESULT_BACKEND"),
            control_queue=env.text("MFM_CONTROL_QUEUE") or "mfm.control",
            attempt_queue=env.text("MFM_ATTEMPT_QUEUE") or "mfm.attempts",
            submit_queue=env.text("MFM_SUBMIT_QUEUE") or "mfm.submit",
            default_queue=default_queue,
            visibility_timeout_s=env.number("MFM_VISIBILITY_TIMEOUT_S", 3600.0),
            lease_ttl_s=lease,
            dispatch_timeout_s=env.number("MFM_DISPATCH_TIMEOUT_S", 60.0),
            lock_ttl_s=env.number("MFM_LOCK_TTL_S", lease),
            watchdog_s=env.number("MFM_WATCHDOG_S", lease + 1.0),
            timer_poll_s=env.number("MFM_TIMER_POLL_S", 0.25),
            inline_coordination=env.flag("MFM_INLINE_COORDINATION", True),
            max_state_timeout_s=env.number("MFM_MAX_STATE_TIMEOUT_S", 3600.0, zero_ok=True),
            artifact_cache_ttl_s=env.integer("MFM_ARTIFACT_CACHE_TTL_S", 120),
            max_tasks_per_child=env.integer("MFM_WORKER_MAX_TASKS_PER_CHILD", 1000),
            timing=env.flag("MFM_TIMING", False),
            task_events=env.flag("MFM_TASK_EVENTS", False),
            metrics_port=env.integer("MFM_METRICS_PORT", 0, high=65535),
            metrics_addr=env.text("MFM_METRICS_ADDR") or "127.0.0.1",
            backfill_poll_s=env.number("MFM_BACKFILL_POLL_S", 0.25),
        )

    def with_core(self, core: Settings) -> ClusterSettings:
        """These settings over other library settings (e.g. the CLI's, with its store
        options applied)."""
        return replace(self, core=core)

    @property
    def broker_url(self) -> str:
        """The broker's URL with the Redis credentials applied. Holds a secret: never
        print or log it (`mfm_dist.secrets.redact_url`)."""
        return self.core.redis.apply(self.broker or DEFAULT_REDIS)

    @property
    def result_backend(self) -> str:
        """The result backend's URL with the Redis credentials applied (a secret too)."""
        return self.core.redis.apply(self.backend or self.broker or DEFAULT_REDIS)

    @property
    def events_url(self) -> str:
        """The event store: `MFM_EVENTS_URL`, else `DEFAULT_REDIS` (leases, locks and
        reservations live in the same Redis)."""
        return self.core.events_url or DEFAULT_REDIS

    @property
    def artifacts_url(self) -> str | None:
        """`MFM_ARTIFACTS_URL`; workers refuse to start without it (`artifacts_url_missing`)."""
        return self.core.artifacts_url

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    @property
    def max_state_timeout_ms(self) -> int | None:
        return int(self.max_state_timeout_s * 1000) or None

    def __repr__(self) -> str:
        return redacted_repr(self)
