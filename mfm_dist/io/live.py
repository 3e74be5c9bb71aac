"""`LiveIo`: the provider for `io_mode = Live` (docs/io-and-replay.md).

A keyed call is recorded once per run: the first response is canonicalized,
stored as a `FactPayload` and bound; every later call with that key (a retry,
a resumed crash, another attempt) is served from the record without touching
the transport. The request itself is never persisted.

Sync transports run in a worker thread (`asyncio.to_thread`), so a slow
program or HTTP call never blocks other attempts that share an event loop;
async transports are awaited directly.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time

from mfm_dist.canonical import JsonValue, canonical_bytes
from mfm_dist.ids import ArtifactId
from mfm_dist.io.base import AttemptScope, IoCall, IoProvider, IoResult
from mfm_dist.io.facts import (
    bind_new,
    check_random_len,
    check_recorded_random,
    check_user_key,
    decode_fact,
    fact_bytes,
    lookup_json,
    read_json_fact,
    read_now_millis,
    read_raw_fact,
    record_or_match,
)
from mfm_dist.io.router import Transport, TransportRegistry, is_async_transport


class LiveIo(IoProvider):
    """Calls transports and records facts for one attempt."""

    def __init__(self, scope: AttemptScope, transports: TransportRegistry) -> None:
        self.scope = scope
        self.transports = transports

    async def call(self, call: IoCall) -> IoResult:
        key = call.fact_key
        if key is None:
            transport = self.transports.resolve(call.namespace)
            self.scope.check_fence()
            return IoResult(response=await _invoke(transport, call.request))
        check_user_key(key)
        recorded = self._recorded(key)
        if recorded is not None:
            return recorded
        transport = self.transports.resolve(call.namespace)
        self.scope.check_fence()
        response = await _invoke(transport, call.request)
        data = fact_bytes(response)
        with self.scope.facts.lock:
            # Another attempt of this run may have bound the key while we were calling:
            # the first binding wins and every caller sees it.
            winner = self._recorded(key)
            if winner is not None:
                return winner
            payload_id = bind_new(self.scope, key, data)
        return IoResult(response=decode_fact(data), fact_key=key, payload_id=payload_id)

    def _recorded(self, key: str) -> IoResult | None:
        payload_id = self.scope.facts.lookup(key)
        if payload_id is None:
            return None
        value = read_json_fact(self.scope, payload_id)
        return IoResult(response=value, fact_key=key, payload_id=payload_id, replayed=True)

    async def record_value(self, key: str, value: JsonValue) -> ArtifactId:
        check_user_key(key)
        return record_or_match(self.scope, key, fact_bytes(value))

    async def get_recorded_fact(self, key: str) -> JsonValue | None:
        return lookup_json(self.scope, key)

    async def now_millis(self) -> int:
        key = self.scope.next_derived_key("now_millis")
        with self.scope.facts.lock:
            payload_id = self.scope.facts.lookup(key)
            if payload_id is not None:
                return read_now_millis(self.scope, payload_id)
            now = time.time_ns() // 1_000_000
            bind_new(self.scope, key, canonical_bytes(now, "now_millis"))
        return now

    async def random_bytes(self, n: int) -> bytes:
        check_random_len(n)
        key = self.scope.next_derived_key("random_bytes")
        with self.scope.facts.lock:
            payload_id = self.scope.facts.lookup(key)
            if payload_id is not None:
                return check_recorded_random(key, read_raw_fact(self.scope, payload_id), n)
            data = os.urandom(n)
            bind_new(self.scope, key, data)
        return data

    async def sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(max(ms, 0) / 1000)


async def _invoke(transport: Transport, request: JsonValue) -> JsonValue:
    if is_async_transport(transport):
        result = transport.call(request)
    else:
        result = await asyncio.to_thread(transport.call, request)
    if inspect.isawaitable(result):
        result = await result
    return result
