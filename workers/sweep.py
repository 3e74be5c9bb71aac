"""Find RUNNING runs that nobody is watching and wake them (CONTRACT §11 liveness).

Every unfinished run normally has one pending watchdog `advance`. It can lack one when
the process that should have scheduled it died at the wrong moment (a submitter between
`RunStarted` and its first wake-up, a control worker holding a countdown message). The
sweep pages through the whole run index (`ZSCAN`, never "the newest N") and gives such
runs a watchdog. A control worker that (re)starts takes over every run's watchdog
(overwriting the token, so older pending messages just exit); the periodic sweep only
arms runs without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from mfm_dist.run import RunPhase
from mfm_dist.stores.redis_events import RUN_INDEX_KEY
from workers.leases import run_key

log = logging.getLogger("mfm.sweep")

PAGE = 500
SWEEP_KEY = "mfm:sweep"

SendAdvance = Callable[[str, str], None]
"""`send(run_id, watchdog_token)`: enqueue one watchdog `advance` now."""


def running_runs(client: Any, page: int = PAGE) -> Iterator[str]:
    """Ids of every RUNNING run in the index, in pages (each run at least once)."""
    batch: list[str] = []
    for member in client.zscan_iter(RUN_INDEX_KEY, count=page):
        raw = member[0] if isinstance(member, tuple) else member
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= page:
            yield from _running(client, batch)
            batch = []
    if batch:
        yield from _running(client, batch)


def _running(client: Any, run_ids: list[str]) -> Iterator[str]:
    pipe = client.pipeline(transaction=False)
    for rid in run_ids:
        pipe.hget(run_key(rid, "meta"), "phase")
    for rid, phase in zip(run_ids, pipe.execute(), strict=True):
        if phase is not None and phase.decode() == RunPhase.RUNNING.value:
            yield rid


def wake_unwatched(coord: Any, send: SendAdvance, watchdog_ttl_ms: int, *, take_over: bool) -> int:
    """Give RUNNING runs a watchdog; returns how many were woken.

    `take_over`: overwrite every run's watchdog token (a control worker that restarts:
    the pending messages of the old one may be lost or held). Otherwise only runs with
    no pending watchdog are woken."""
    woken = 0
    for rid in running_runs(coord.client):
        if take_over:
            token: str | None = coord.take_over_watchdog(rid, watchdog_ttl_ms)
        else:
            token = coord.claim_watchdog(rid, watchdog_ttl_ms, None)
        if token is not None:
            send(rid, token)
            woken += 1
    if woken:
        log.info("woke %d unfinished run(s)", woken)
    return woken
