"""What the cluster accepted and refused: counters and the recent rejections (docs:
submission). Never a payload: a rejection is its code, the time and the delivery id, so an
operator can see what went wrong without the store ever holding what a client sent.

Keys: `mfm:submissions:counts` (hash: `created`, `existing`, `rejected:<code>` → count) and
`mfm:submissions:rejected` (list of JSON rows, newest first, the last `KEEP` only).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from mfm_dist.stores.redis_keys import SUBMISSION_COUNTS_KEY as COUNTS_KEY
from mfm_dist.stores.redis_keys import SUBMISSION_REJECTED_KEY as REJECTED_KEY

KEEP = 1000


class Rejection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ts_ms: int
    code: str
    delivery_id: str | None = None


def record(
    client: Any, outcomes: Iterable[str], rejections: Iterable[tuple[str, str | None]]
) -> None:
    """Count `outcomes` (`created`/`existing`) and log `(code, delivery_id)` rejections, in
    one round trip."""
    now = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for outcome in outcomes:
        pipe.hincrby(COUNTS_KEY, outcome, 1)
    rows = [Rejection(ts_ms=now, code=c, delivery_id=d) for c, d in rejections]
    for row in rows:
        pipe.hincrby(COUNTS_KEY, f"rejected:{row.code}", 1)
        pipe.lpush(REJECTED_KEY, row.model_dump_json())
    if rows:
        pipe.ltrim(REJECTED_KEY, 0, KEEP - 1)
    pipe.execute()


def recent_rejections(client: Any, limit: int = 50) -> list[Rejection]:
    raw = client.lrange(REJECTED_KEY, 0, max(0, limit - 1))
    return [Rejection.model_validate(orjson.loads(r)) for r in raw]


def counts(client: Any) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(COUNTS_KEY).items()}
