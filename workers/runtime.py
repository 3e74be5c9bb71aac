"""Per-process runtime of a worker: stores, registry, Redis coordination and caches.

Built lazily on first use *in the process that uses it* (Celery's prefork pool forks
children; connections must not cross a fork). Caches are safe by construction:
manifests and snapshots are content-addressed and immutable, a plan is a pure
function of (manifest, code), and fact bindings are single-assignment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mfm_dist.artifacts import ArtifactStore, ArtifactStoreWrapper, KindLike, get_json
from mfm_dist.canonical import JsonValue, artifact_id_of_bytes
from mfm_dist.engine.deadlines import effective_timeout_ms
from mfm_dist.engine.lru import Lru
from mfm_dist.engine.snapshot_links import is_link_key
from mfm_dist.engine.snapshots import PreparedSnapshot, SnapshotStore
from mfm_dist.errors import Corruption, InvalidInput
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.io.base import FactIndex, IoFactory
from mfm_dist.manifest import RunManifest
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import ExecutionPlan, gc_paused
from mfm_dist.settings import RedisCredentials
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.redis_events import is_auth_failure
from mfm_dist.stores.redis_keys import artifact_cache_key
from mfm_dist.stores.urls import open_artifact_store, open_event_store
from workers.leases import Coordination, LeaseKeeper
from workers.settings import ClusterSettings
from workers.timing import Timings

if TYPE_CHECKING:
    from workers.messages import Dispatcher

log = logging.getLogger("mfm.worker")
T = TypeVar("T")


class _AuthRefused(Exception):
    """Carries an auth failure past `Retry` (which only retries its supported errors)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _RetryButAuth(Retry):
    """Retries connection faults, except refused credentials or permissions, which fail at
    once: redis-py's `AuthenticationError` is a `ConnectionError`, which `Retry` retries."""

    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except Exception as exc:
                if is_auth_failure(exc):
                    raise _AuthRefused(exc) from exc
                raise

        try:
            result: T = super().call_with_retry(attempt, fail, *args, **kwargs)
        except _AuthRefused as refused:
            raise refused.error from None
        return result


def _retry_policy() -> Retry:
    """redis-py 6's default (10 retries, exponential backoff 10 ms … 1 s), minus auth."""
    return _RetryButAuth(ExponentialBackoff(cap=1.0, base=0.01), 10)


def redis_client(url: str, credentials: RedisCredentials | None = None) -> redis.Redis:
    """A client for the Redis behind an events URL (its own query options stripped), with
    `credentials` when the URL has none of its own.

    Connection faults are retried (redis-py's default policy); refused credentials are not."""
    parts = urlsplit(url)
    plain = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    kwargs: dict[str, Any] = dict(credentials.client_kwargs(url)) if credentials else {}
    return redis.Redis.from_url(
        plain,
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
        retry_on_timeout=True,
        retry=_retry_policy(),
        health_check_interval=30,
        **kwargs,
    )


class TimedArtifacts(ArtifactStoreWrapper):
    """Delegates to a backend, timing raw reads and writes (`snapshot_get`/`artifact_put`)."""

    def __init__(self, inner: ArtifactStore, timings: Timings) -> None:
        super().__init__(inner)
        self._timings = timings

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        with self._timings.phase("artifact_put"):
            return self.inner.put_raw(artifact_id, kind, data)

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        with self._timings.phase("artifact_get"):
            return self.inner.get_raw(artifact_id)


class TimedSnapshots(SnapshotStore):
    """A snapshot store that reports `snapshot_load` / `snapshot_save` timings."""

    def __init__(self, artifacts: ArtifactStore, timings: Timings) -> None:
        super().__init__(artifacts)
        self._timings = timings

    def load(self, snapshot_id: str) -> dict[str, JsonValue]:
        with self._timings.phase("snapshot_load"):
            return super().load(snapshot_id)

    def save(self, content: Mapping[str, JsonValue], where: str = "context snapshot") -> ArtifactId:
        with self._timings.phase("snapshot_save"):
            return super().save(content, where)

    def commit(self, prepared: PreparedSnapshot) -> ArtifactId:
        with self._timings.phase("snapshot_save"):
            return super().commit(prepared)


class RedisCachedArtifacts(ArtifactStoreWrapper):
    """Write-through cache of small artifacts in Redis, in front of the durable store.

    Every put goes to the durable store first; then the bytes are kept in Redis for
    `ttl_s` (`mfm:art:<id>`), so the coordinator reads the snapshots workers just wrote
    with one Redis round trip instead of an S3 GET. Content addressing makes the cache
    always safe: `ArtifactStore.get` verifies every byte it returns, cached or not.
    Cache faults are ignored (the durable store answers).
    """

    MEMORY_HEADROOM = 0.9
    MEMORY_CHECK_S = 5.0

    def __init__(
        self,
        inner: ArtifactStore,
        client: redis.Redis,
        *,
        ttl_s: int = 120,
        max_bytes: int = 256 * 1024,
    ) -> None:
        super().__init__(inner)
        self._client: Any = client
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._roomy = True
        self._checked_at = float("-inf")

    def _has_room(self) -> bool:
        """False while Redis is close to `maxmemory`: the event log needs that memory more
        than the cache does (checked at most every few seconds)."""
        now = time.monotonic()
        if now - self._checked_at >= self.MEMORY_CHECK_S:
            self._checked_at = now
            with contextlib.suppress(redis.RedisError, ValueError, TypeError):
                info = self._client.info("memory")
                limit = int(info.get("maxmemory", 0))
                used = int(info.get("used_memory", 0))
                self._roomy = limit <= 0 or used < self.MEMORY_HEADROOM * limit
        return self._roomy

    @staticmethod
    def _key(artifact_id: str) -> str:
        return artifact_cache_key(artifact_id)

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        stored = self.inner.put_raw(artifact_id, kind, data)
        if len(data) <= self._max_bytes and self._has_room():
            with contextlib.suppress(redis.RedisError):
                self._client.set(self._key(artifact_id), data, ex=self._ttl_s)
        return stored

    PEEK_CHUNK = 512

    def peek_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The cached bytes of `keys`, one `MGET` per `PEEK_CHUNK` keys (a join reads its
        members' snapshots this way: no S3 request, not even the 404 of a snapshot stored
        in full when its link is asked for first). Faults answer nothing."""
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), self.PEEK_CHUNK):
            chunk = keys[start : start + self.PEEK_CHUNK]
            try:
                values = self._client.mget([self._key(k) for k in chunk])
            except redis.RedisError:
                return found
            found.update((k, v) for k, v in zip(chunk, values, strict=True) if v is not None)
        return found

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        data: bytes | None = None
        with contextlib.suppress(redis.RedisError):
            data = self._client.get(self._key(artifact_id))
        # A cached object must hash to its id, except a snapshot link, whose reader checks
        # the snapshot it rebuilds (docs/storage.md#snapshot-links).
        if data is not None and (
            artifact_id_of_bytes(data) == artifact_id or is_link_key(artifact_id)
        ):
            return data
        return self.inner.get_raw(artifact_id)


@dataclass
class RunContext:
    """What a worker derives from a run's manifest (cached by manifest id)."""

    manifest: RunManifest
    plan: ExecutionPlan
    fingerprint: str

    def timeout_ms(self, state_id: str, max_timeout_ms: int | None) -> int | None:
        """The effective timeout of one of the plan's states (see `engine.deadlines`)."""
        compiled = self.plan.compiled
        state = compiled.states[compiled.position[state_id]]
        return effective_timeout_ms(state.meta(), self.manifest.run_config, max_timeout_ms)


CONTEXT_CACHE_SIZE = 64
CONTEXT_CACHE_STATES = 250_000
"""The run contexts a worker keeps hold at most this many plan states in all (the most
recently used one is always kept): a plan costs a few hundred bytes to a few KB per state,
so 64 plans of 100,000 states would not fit, while 64 small ones do."""
FACT_CACHE_SIZE = 256


class Runtime:
    """One process's connections and caches, built from explicit settings.

    `app`: the Celery app messages are sent through (a worker passes its own; by default
    one is built from the settings on first send). `dispatcher`: what the coordinator and
    wake-ups send through (default: a `CeleryDispatcher` on `app`; tests pass a recorder)."""

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        app: Any = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.settings = settings
        if not self.settings.artifacts_url:
            raise InvalidInput("artifacts_url_missing", "set MFM_ARTIFACTS_URL for the workers")
        self._app = app
        self._owns_app = False
        self._dispatcher = dispatcher
        core = self.settings.core
        self.timings = Timings(self.settings.timing)
        self.events: EventStore = open_event_store(self.settings.events_url, redis=core.redis)
        self.redis = redis_client(self.settings.events_url, core.redis)
        base = open_artifact_store(self.settings.artifacts_url, s3=core.s3)
        if self.timings.enabled:
            base = TimedArtifacts(base, self.timings)
        self.artifacts: ArtifactStore = (
            RedisCachedArtifacts(base, self.redis, ttl_s=self.settings.artifact_cache_ttl_s)
            if self.settings.artifact_cache_ttl_s > 0
            else base
        )
        self.coord = Coordination(self.redis)
        self.keeper = LeaseKeeper(self.coord, self.settings.lease_ttl_ms)
        self.snapshots: SnapshotStore = (
            TimedSnapshots(self.artifacts, self.timings)
            if self.timings.enabled
            else SnapshotStore(self.artifacts)
        )
        self._registry: OperationRegistry | None = None
        self._io_factory: IoFactory | None = None
        # LRU-bounded: a long-lived worker sees an unbounded number of runs.
        # Contexts weigh their plan's states (the most recently used one is always kept).
        self._contexts: Lru[RunContext] = Lru(CONTEXT_CACHE_SIZE, CONTEXT_CACHE_STATES)
        self._facts: Lru[FactIndex] = Lru(FACT_CACHE_SIZE)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Runtime:
        """A runtime from the environment (`ClusterSettings.from_env`): for a script or a
        test, at its start."""
        return cls(ClusterSettings.from_env(environ))

    @property
    def app(self) -> Any:
        """The Celery app this runtime sends through (built from the settings on first use)."""
        if self._app is None:
            from workers.factory import create_app

            self._app = create_app(self.settings)
            self._owns_app = True
        return self._app

    @property
    def dispatcher(self) -> Dispatcher:
        """Where chords, wake-ups and callbacks go (a `CeleryDispatcher` on `app`)."""
        if self._dispatcher is None:
            from workers.dispatch import CeleryDispatcher

            self._dispatcher = CeleryDispatcher(self.app, self.settings)
        return self._dispatcher

    @property
    def registry(self) -> OperationRegistry:
        if self._registry is None:
            self._registry = OperationRegistry.default(settings=self.settings.core)
        return self._registry

    @property
    def io_factory(self) -> IoFactory:
        if self._io_factory is None:
            # The registry's factory includes transports of `register_transports` hooks.
            self._io_factory = self.registry.io_factory()
        return self._io_factory

    def run_context(self, manifest_id: str) -> RunContext:
        with self._lock:
            hit = self._contexts.get(manifest_id)
        if hit is not None:
            return hit
        manifest = RunManifest.model_validate(get_json(self.artifacts, manifest_id, "manifest"))
        if manifest.manifest_id() != manifest_id:
            raise Corruption("manifest_id_mismatch", "stored manifest does not hash to its id")
        with gc_paused():
            plan = self.registry.plan_from_input_params(manifest.input_params, manifest.run_config)
            ctx = RunContext(manifest, plan, plan.fingerprint())
        with self._lock:
            self._contexts.put(manifest_id, ctx, len(plan.compiled))
        return ctx

    def facts(self, run_id: str) -> FactIndex:
        """The run's fact index; unknown keys are looked up in the event store."""
        with self._lock:
            index = self._facts.get(run_id)
            if index is None:
                rid = RunId(run_id)
                index = FactIndex(fallback=lambda key: self.events.fact_binding(rid, key))
                self._facts.put(run_id, index)
            return index

    def flush_timings(self) -> None:
        if self.timings.enabled:
            with contextlib.suppress(redis.RedisError):
                self.timings.flush(self.redis)

    def close(self) -> None:
        self.events.close()
        self.artifacts.close()
        self.redis.close()
        if self._owns_app:
            self._app.close()  # its broker and result-backend connections


RETIRE_GRACE_S = 2.0
EXIT_STUCK_HANDLER = 75
_pool_child = False


def mark_pool_child() -> None:
    """Called in each prefork pool child: it may be retired (see `retire_if_stuck`)."""
    global _pool_child
    _pool_child = True


def retire_if_stuck(thread: threading.Thread | None) -> None:
    """A timed-out (or cancelled) handler's thread still runs after its attempt ended: the
    only way to stop blocking Python code is to end its process. A prefork pool child exits once the
    handler has had `RETIRE_GRACE_S` more (time for the task's result to reach the parent);
    Celery replaces it. Elsewhere (solo/threads pools, tests) the thread is left behind."""
    if thread is None or not _pool_child:
        if thread is not None:
            log.warning("a timed-out handler is still running in this process (not a pool child)")
        return

    def reaper() -> None:
        thread.join(RETIRE_GRACE_S)
        if thread.is_alive():
            log.warning("retiring this pool process: a timed-out handler is still running")
            logging.shutdown()
            os._exit(EXIT_STUCK_HANDLER)

    threading.Thread(target=reaper, name="mfm-retire", daemon=True).start()


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_bound: tuple[ClusterSettings, Any] | None = None
_runtime_lock = threading.Lock()


def configure(settings: ClusterSettings | None, app: Any = None) -> None:
    """Bind this process's cluster settings (and the Celery app it runs, if any): what
    `get_runtime()` builds from. The worker boot binds the settings of the app it runs
    (`workers.factory`); a test or tool pointing this process at a cluster binds its own;
    None unbinds. The current runtime is dropped (the next use builds a fresh one)."""
    global _bound, _runtime, _runtime_pid
    with _runtime_lock:
        _bound = None if settings is None else (settings, app)
        _runtime, _runtime_pid = None, None


def process_settings() -> ClusterSettings:
    """The settings bound by `configure`; unbound, the environment's — the documented
    default of a Python client that calls `submit_run` / `wait_for_run` without a runtime
    (docs/configuration.md), read when its first runtime is built."""
    bound = _bound
    return bound[0] if bound is not None else ClusterSettings.from_env()


def get_runtime() -> Runtime:
    """This process's runtime, built from its bound settings (see `process_settings`) and
    rebuilt after a fork."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            bound = _bound
            settings, app = bound if bound is not None else (process_settings(), None)
            _runtime = Runtime(settings, app=app)
            _runtime_pid = os.getpid()
        return _runtime


def reset_runtime() -> None:
    """Forget the runtime (a forked child must not reuse its parent's connections); the
    bound settings stay."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        _runtime, _runtime_pid = None, None
