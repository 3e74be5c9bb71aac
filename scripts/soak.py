#!/usr/bin/env python3
"""Soak harness: random workloads under random faults on a real local cluster.

    .venv/bin/python scripts/soak.py --trials 200 --seed 1 --out soak.jsonl

The cluster is `tests/support/cluster.py`'s `LocalCluster` — redis-server with AOF `appendfsync
always`, the SeaweedFS S3 server behind a switchable TCP proxy, one control worker and
`--attempt-workers` attempt workers as real `celery worker` processes, and a supervisor that
restarts workers that exit. This script puts `tests/` on `sys.path` to reuse it (it does not
duplicate it), and the workers load `tests/support/soak_ops.py` (the `soak_demo` workload) and
`tests/support/dist_ops.py` (its `DIST_OPS_FAULTS` lease-then-death hook) through `MFM_OPERATIONS`.

Every trial is planned from `(seed, trial)` alone (`plan_trial`), so a trial is reproduced
with `--seed S --first-trial K --trials 1` (and the same `--workload-kinds`); only the timing
varies between runs. A trial is a *run trial* or a *backfill trial* (below): with both kinds
selected (the default, `--workload-kinds run,backfill`) about 15 % are backfill trials, the
kind drawn from a stream of its own, so a run trial's plan does not depend on the selection;
`--workload-kinds backfill` makes every trial a backfill trial. A run trial has

* a workload: `soak_demo` (chains, diamonds, wide fan-outs, random DAGs, with slow states,
  flaky retryable states with a fixed or exponential backoff, and states that fail on
  purpose — not retryable, or retryable on every attempt until the policy gives up — so the
  run is meant to end `Failed`) or a shipped example (`fanout_demo`, `chain_demo`,
  `etl_demo`), in `Sequential` or `FanOutJoin` mode;
* 1–3 faults, each fired once the run's log reaches a chosen length (plus a jitter):
  duplicated `execute_attempt` / `advance` deliveries sent through Celery, SIGKILL of an
  attempt pool child (preferably one holding a lease of the run), of a whole attempt worker,
  of the control worker, kill -9 and restart of redis-server, the S3 server frozen (SIGSTOP
  then SIGCONT) or unreachable (its proxy disabled) for a few seconds, concurrent
  `mfm resume --cluster --wait` processes next to a `wake` + `wait_for_run`, a submission
  delivered twice (the same `submission_id`, at once or one after the other), and a
  lease-then-death (`DIST_OPS_FAULTS`: the next process to take a lease is SIGKILLed right
  after, alone or with its whole worker), and a cancel request (`mfm cancel --cluster`'s
  `cancel_run`) racing the run's own progress. Whatever is killed is restarted: workers by the
  supervisor, redis by `restart_redis`; a fault counts as *healed* once everything is back
  (every worker alive and logged ready, S3 resumed).

A backfill trial has

* a small cluster backfill (docs/backfills.md, "Cluster"): 3–8 partitions of `soak_demo`
  (small chains, diamonds, wide fan-outs and DAGs with slow and flaky states, all meant to
  complete), one per line of a JSON Lines file, the partition value being the line's `seed`,
  created by the CLI in a subprocess exactly as a user does — `mfm backfill create soak_demo
  --file F.jsonl --field seed --max-active 2–4 --max-attempts 2–3 --backoff-ms B
  [--fan-out 2|4] --backend celery` — after which the control worker drives it alone;
* 1–3 faults, each fired once the partition runs together have a chosen number of events
  (0: the moment `create` returned, before or during the first tick; `pause` and `retry`
  aim at the first half): `bf_kill_control` (SIGKILL of the control worker, which runs
  `mfm.backfill_tick`), `bf_redis_kill`, `bf_kill_attempt_worker` (preferably one holding a
  lease of a partition run) — each healed as above —, `bf_dup_tick` (1–3 more
  `mfm.backfill_tick` deliveries through Celery and, half the time, one more tick at the same
  moment in this process, as a second control worker would), `bf_pause` (`mfm backfill
  pause`, 0–2.5 s, `mfm backfill resume`; healed once `resumed` is recorded) and `bf_retry`
  (`mfm backfill retry NAME --failed` racing the driver: a new issue of the plan, which
  attaches the running partitions and skips the completed ones — or, landing after the end,
  issues the finished backfill again; healed once `issued` is recorded).

Checks per run trial: the designed phase (and, for failing workloads, the designed failed state
and error code); `mfm verify RUN` (the CLI, in a subprocess) exits 0; the final snapshot id
equals the embedded run of the same input and config (always) and the embedded Sequential
run (when the workload is meant to complete: its plans are conflict-free, see README
"Execution modes"), with the same set of completed states; no state completed twice; gapless
attempt numbers per state; exactly one `RunCompleted`, last; a duplicated submission started
one run; concurrent resumes returned the run's result; and the recovery time is within the
bound. A trial whose cancel request landed before the run ended must end `Cancelled` instead
(the designed outcome and the embedded references then do not apply), with nothing entered
after the request and `RunCompleted` within the bound of the request; one refused because the
run had finished keeps every usual check.

Checks per backfill trial: its journal says finished, outcome `completed`, within
`--trial-timeout`, and within the bound of its last fault's heal (`finished_within_bound`);
the stored plan has the trial's partitions and run config; the run index (`mfm runs
--backfill NAME --json`, the CLI) lists exactly one run per partition, each with the run id
its idempotency key gives (`partition_run_id`); every partition's run ended `Completed`,
passes `mfm verify` (the CLI, exit 0), has exactly one `RunCompleted`, last, no state
completed twice and gapless attempt numbers, and its final snapshot id and completed states
equal the embedded run of the same input and config (and of the Sequential config); the
counts of `mfm backfill status NAME --json` equal the runs' phases (every partition
completed, none pending, running, failed, rejected or not started) and so do the counts its
`finished` record holds.

Recovery time of a fault: from its heal to the later of (a) the next `StateCompleted` or
`RunCompleted` and (b) the final event of every state that had an open attempt at the heal.
The trial's recovery is that of its last fault healed before `RunCompleted`; the bound is
`lease TTL + watchdog + coordinator step + designed work + slack`, where *designed work* is
what the workload itself may still have to do (every state's sleeps and backoffs, plus
`--per-state` seconds per state) and the slack allows for the 2 shared cores. Both are
printed with the summary. In a backfill trial the progress is that of any partition run or
of the driver (the journal's `claimed`, `settled` and `finished` records), the open attempts
those of every partition run, the end the journal's last `finished`, and the designed work
that of every partition (run one after the other) plus `--per-partition` seconds each.

Output: one JSON line per trial (`--out`, and a one-line digest per trial on stderr) and a
summary line at the end (trials, failures, trial kinds, recovery p50/p90/max per fault kind,
the `bf_` kinds included). A backfill trial's line also names the backfill, its partition
runs, their final snapshot ids and the backfill's counts. A failing trial also leaves
`failures/trial-NNNN.txt` (events, `mfm status`, the run's worker log lines; for a backfill:
its journal, `mfm backfill status`, every partition run's events, the worker log lines
naming them) in the cluster directory, which is then kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
for _path in (str(REPO), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Imported before the cluster's environment (DIST_OPS_FAULTS) reaches this process: the
# lease-then-death hook must only ever be installed in workers.
from mfm_dist.canonical import JsonValue  # noqa: E402
from mfm_dist.config import (  # noqa: E402
    Duration,
    ExponentialBackoff,
    FanOutJoin,
    FixedBackoff,
    RetryPolicy,
    RunConfig,
)
from mfm_dist.engine.lifecycle import prepare_run, store_manifest  # noqa: E402
from mfm_dist.engine.local import LocalEngine  # noqa: E402
from mfm_dist.events import (  # noqa: E402
    EventEnvelope,
    RunCompleted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import RunId  # noqa: E402
from mfm_dist.operations import OperationRegistry  # noqa: E402
from mfm_dist.results import RunPhase, RunResult  # noqa: E402
from mfm_dist.stores.memory import InMemoryArtifactStore, InMemoryEventStore  # noqa: E402
from support import dist_ops, soak_ops  # noqa: E402
from support.cluster import LocalCluster  # noqa: E402

OPERATIONS = "support.dist_ops,support.soak_ops"
FAULT_KINDS: dict[str, float] = {
    "dup_attempt": 1.0,
    "dup_advance": 1.0,
    "kill_child": 1.0,
    "kill_attempt_worker": 1.0,
    "kill_control": 1.0,
    "redis_kill": 1.0,
    "s3_freeze": 0.6,
    "s3_outage": 0.6,
    "concurrent_resume": 0.8,
    "dup_submit": 0.7,
    "lease_death": 1.0,
    "cancel": 0.6,
}
BACKFILL_FAULT_KINDS: dict[str, float] = {
    "bf_kill_control": 1.0,
    "bf_redis_kill": 1.0,
    "bf_kill_attempt_worker": 1.0,
    "bf_dup_tick": 1.0,
    "bf_pause": 0.6,
    "bf_retry": 0.5,
}
WORKLOAD_KINDS = ("run", "backfill")
BACKFILL_SHARE = 0.15
"""Of the trials, when both workload kinds are selected: how many are backfill trials."""
BACKFILL_OP = "soak_demo"
BACKFILL_FIELD = "seed"
EXAMPLES = ("fanout_demo", "chain_demo", "etl_demo")
ETL_STATES = 4
LEASE_DEATH_WAIT_S = 20.0
RESULT_WAIT_S = 5.0
REDIS_GRACE_S = 1.0


# --- the plan of a trial (pure: a function of seed and trial number) -------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    target: str
    run_input: JsonValue
    max_concurrency: int | None
    """None: Sequential."""
    max_attempts: int = 1
    backoff: str = "none"
    """`none`, `fixed:<ms>` or `exp:<base ms>:<max ms>`."""
    n_states: int = 1
    est_events: int = 4
    expect_phase: str = RunPhase.COMPLETED.value
    expect_failed_state: str | None = None
    expect_code: str | None = None
    work_max_s: float = 0.0
    work_total_s: float = 0.0

    @property
    def mode(self) -> str:
        return (
            "Sequential" if self.max_concurrency is None else f"FanOutJoin({self.max_concurrency})"
        )

    def config(self, *, sequential: bool = False) -> RunConfig:
        if self.backoff.startswith("fixed:"):
            delay = Duration.from_millis(int(self.backoff.split(":")[1]))
            backoff: FixedBackoff | ExponentialBackoff = FixedBackoff(delay=delay)
        elif self.backoff.startswith("exp:"):
            _, base, top = self.backoff.split(":")
            backoff = ExponentialBackoff(
                base=Duration.from_millis(int(base)), max=Duration.from_millis(int(top))
            )
        else:
            backoff = FixedBackoff(delay=Duration(secs=0))
        policy = RetryPolicy(max_attempts=self.max_attempts, backoff=backoff)
        if sequential or self.max_concurrency is None:
            return RunConfig(retry_policy=policy)
        return RunConfig(
            retry_policy=policy, execution_mode=FanOutJoin(max_concurrency=self.max_concurrency)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "input": self.run_input,
            "mode": self.mode,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "states": self.n_states,
            "expect": {
                "phase": self.expect_phase,
                "failed_state": self.expect_failed_state,
                "code": self.expect_code,
            },
        }


@dataclass(frozen=True)
class FaultPlan:
    kind: str
    trigger_seq: int
    """Fired once the run's log has this many events (or at once if the run ended)."""
    jitter_ms: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "trigger_seq": self.trigger_seq, "jitter_ms": self.jitter_ms,
                **self.params}  # fmt: skip


@dataclass(frozen=True)
class BackfillWorkload:
    """A small cluster backfill of `soak_demo`: one partition per line of a JSON Lines
    file, its value the partition's `seed` (every partition is meant to complete)."""

    backfill: str
    """The backfill's name."""
    partitions: tuple[Workload, ...]
    max_active: int
    max_concurrency: int | None
    """The runs' `--fan-out` (None: Sequential)."""
    max_attempts: int
    backoff_ms: int
    expect_phase: str = RunPhase.COMPLETED.value

    name = f"backfill/{BACKFILL_OP}"
    target = BACKFILL_OP

    @property
    def mode(self) -> str:
        return (
            "Sequential" if self.max_concurrency is None else f"FanOutJoin({self.max_concurrency})"
        )

    @property
    def n_states(self) -> int:
        return sum(p.n_states for p in self.partitions)

    @property
    def est_events(self) -> int:
        return sum(p.est_events for p in self.partitions)

    @property
    def work_total_s(self) -> float:
        return sum(p.work_total_s for p in self.partitions)

    def values(self) -> list[str]:
        """The partition values, in plan order."""
        out = []
        for p in self.partitions:
            assert isinstance(p.run_input, dict)
            out.append(str(p.run_input[BACKFILL_FIELD]))
        return out

    def jsonl(self) -> str:
        return "".join(json.dumps(p.run_input, sort_keys=True) + "\n" for p in self.partitions)

    def cli_args(self) -> list[str]:
        """The run options of `mfm backfill create` (the runs' config)."""
        args = ["--max-active", str(self.max_active), "--max-attempts", str(self.max_attempts),
                "--backoff-ms", str(self.backoff_ms)]  # fmt: skip
        if self.max_concurrency is not None:
            args += ["--fan-out", str(self.max_concurrency)]
        return args

    def config(self, *, sequential: bool = False) -> RunConfig:
        """The runs' config, as `mfm backfill create` builds it from `cli_args`."""
        from mfm_dist.cli.options import build_run_config

        fan_out = None if sequential else self.max_concurrency
        return build_run_config(
            fan_out=fan_out, max_attempts=self.max_attempts, backoff_ms=self.backoff_ms
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "backfill": self.backfill,
            "mode": self.mode,
            "max_active": self.max_active,
            "max_attempts": self.max_attempts,
            "backoff": f"fixed:{self.backoff_ms}",
            "states": self.n_states,
            "partitions": [p.run_input for p in self.partitions],
            "expect": {"phase": self.expect_phase, "backfill": "completed", "runs_each": 1},
        }


@dataclass(frozen=True)
class TrialPlan:
    seed: int
    trial: int
    workload: Workload | BackfillWorkload
    faults: tuple[FaultPlan, ...]

    @property
    def kind(self) -> str:
        return "backfill" if isinstance(self.workload, BackfillWorkload) else "run"


def _backoff_ms(backoff: str) -> int:
    """The longest single backoff wait of a policy (ms)."""
    if backoff.startswith("fixed:"):
        return int(backoff.split(":")[1])
    if backoff.startswith("exp:"):
        return int(backoff.split(":")[2])
    return 0


def _soak_workload(rng: random.Random, max_concurrency: int | None) -> Workload:
    shape = rng.choice(soak_ops.SHAPES)
    size = {"chain": rng.randint(3, 7), "diamond": rng.randint(2, 5),
            "wide": rng.randint(3, 10), "dag": rng.randint(4, 9)}[shape]  # fmt: skip
    flaky = rng.choice([0, 0, 1, 2])
    flaky_failures = rng.choice([1, 2])
    fail = rng.choices(list(soak_ops.FAILS), weights=[70, 15, 15])[0]
    run_input: dict[str, JsonValue] = {
        "shape": shape,
        "size": size,
        "seed": rng.randrange(2**31),
        "slow": rng.choice([1, 2, 2, 3]),
        "sleep_ms": rng.choice([300, 500, 800, 1200]),
        "blocking": rng.random() < 0.3,
        "flaky": flaky,
        "flaky_failures": flaky_failures,
        "fail": fail,
    }
    needed = flaky_failures + 1 if flaky else 1
    if fail == "exhaust":
        needed = max(needed, 2)  # it fails retryably: let it be retried before it gives up
    max_attempts = max(needed, rng.choice([1, 2, 3]))
    backoff = rng.choice(
        [
            f"fixed:{rng.choice([50, 150, 300])}",
            f"exp:{rng.choice([50, 100])}:{rng.choice([200, 400])}",
        ]
    )
    plan = soak_ops.design(run_input)
    work_max, work_total = _designed_work(plan, max_attempts, _backoff_ms(backoff))
    failing = plan.failing
    events = 2 + sum(2 * (1 + s.flaky_failures) for s in plan.states) + len(plan.states) // 3
    return Workload(
        name=f"soak_demo/{shape}" + ("" if fail == "none" else f"/{fail}"),
        target="soak_demo",
        run_input=run_input,
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        backoff=backoff,
        n_states=len(plan.states),
        est_events=events,
        expect_phase=RunPhase.FAILED.value if failing else RunPhase.COMPLETED.value,
        expect_failed_state=f"soak_demo.main.{failing[0]}" if failing else None,
        expect_code=plan.expected_code(),
        work_max_s=work_max,
        work_total_s=work_total,
    )


def _designed_work(
    plan: soak_ops.SoakDesign, max_attempts: int, backoff_ms: int
) -> tuple[float, float]:
    """(longest state, all states) designed seconds: sleeps of every attempt a state is
    meant to make, and the backoffs between them. A state failing on purpose makes one
    attempt (`fatal`) or `max_attempts` (`exhaust`)."""
    per = []
    for s in plan.states:
        tries = {"fatal": 1, "exhaust": max_attempts}.get(s.fail, 1 + s.flaky_failures)
        per.append((tries * s.sleep_ms + (tries - 1) * backoff_ms) / 1000.0)
    return max(per, default=0.0), sum(per)


def _example_workload(rng: random.Random, target: str, max_concurrency: int | None) -> Workload:
    if target == "fanout_demo":
        items = rng.randint(8, 48)
        return Workload(target, target, {"items": items}, max_concurrency,
                        n_states=items + 1, est_events=2 * items + 5)  # fmt: skip
    if target == "chain_demo":
        states = rng.randint(6, 24)
        return Workload(target, target, {"states": states}, max_concurrency,
                        n_states=states, est_events=2 * states + 2)  # fmt: skip
    return Workload(target, target, None, max_concurrency,
                    n_states=ETL_STATES, est_events=2 * ETL_STATES + 3)  # fmt: skip


def _fault(rng: random.Random, kind: str, workload: Workload) -> FaultPlan:
    top = max(2, workload.est_events * 3 // 4)
    trigger = 0 if kind == "dup_submit" else rng.randint(2, top)
    params: dict[str, Any] = {}
    if kind == "dup_attempt":
        params = {"copies": rng.randint(1, 3), "pick": round(rng.random(), 3)}
    elif kind == "dup_advance":
        params = {"copies": rng.randint(2, 4)}
    elif kind in ("kill_child", "kill_attempt_worker"):
        params = {"pick": round(rng.random(), 3)}
    elif kind in ("s3_freeze", "s3_outage"):
        params = {"seconds": rng.choice([1.5, 3.0, 5.0])}
    elif kind == "concurrent_resume":
        params = {"resumes": rng.randint(1, 2)}
    elif kind == "dup_submit":
        params = {"concurrent": rng.random() < 0.5}
    elif kind == "lease_death":
        params = {"mode": rng.choice(["child", "worker"])}
    elif kind == "cancel":
        params = {"reason": "soak"}
    return FaultPlan(kind, trigger, rng.randint(0, 300), params)


def workload_kind(seed: int, trial: int, workload_kinds: tuple[str, ...] = WORKLOAD_KINDS) -> str:
    """`run` or `backfill`: drawn from its own stream, so a run trial's plan is the same
    whether backfill trials are selected or not."""
    if len(workload_kinds) == 1:
        return workload_kinds[0]
    rng = random.Random(f"mfm-soak-kind:{seed}:{trial}")
    return "backfill" if rng.random() < BACKFILL_SHARE else "run"


def plan_trial(
    seed: int,
    trial: int,
    kinds: dict[str, float] | None = None,
    *,
    backfill_kinds: dict[str, float] | None = None,
    workload_kinds: tuple[str, ...] = WORKLOAD_KINDS,
) -> TrialPlan:
    """Everything a trial will do, from `(seed, trial)` (and the selected workload kinds)
    alone."""
    if workload_kind(seed, trial, workload_kinds) == "backfill":
        return plan_backfill_trial(seed, trial, backfill_kinds)
    rng = random.Random(f"mfm-soak:{seed}:{trial}")
    kinds = kinds or FAULT_KINDS
    max_concurrency = rng.choice([None, None, 2, 4, 8])
    family = rng.choices(["soak", *EXAMPLES], weights=[6, 2, 1.5, 1])[0]
    if family == "soak":
        workload = _soak_workload(rng, max_concurrency)
    else:
        workload = _example_workload(rng, family, max_concurrency)
    names, weights = list(kinds), list(kinds.values())
    chosen: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        kind = rng.choices(names, weights=weights)[0]
        if kind == "dup_submit" and kind in chosen:
            continue
        chosen.append(kind)
    faults = sorted((_fault(rng, k, workload) for k in chosen), key=lambda f: f.trigger_seq)
    return TrialPlan(seed, trial, workload, tuple(faults))


def _partition_workload(
    rng: random.Random, seed: int, max_attempts: int, backoff_ms: int
) -> Workload:
    """One backfill partition: a small `soak_demo` meant to complete (`seed` is its value)."""
    shape = rng.choice(soak_ops.SHAPES)
    size = {"chain": rng.randint(2, 4), "diamond": rng.randint(2, 3),
            "wide": rng.randint(2, 4), "dag": rng.randint(3, 5)}[shape]  # fmt: skip
    run_input: dict[str, JsonValue] = {
        "shape": shape,
        "size": size,
        "seed": seed,
        "slow": rng.choice([0, 1, 1, 2]),
        "sleep_ms": rng.choice([100, 200, 400]),
        "blocking": rng.random() < 0.3,
        "flaky": rng.choice([0, 0, 1]),
        "flaky_failures": 1,
        "fail": "none",
    }
    plan = soak_ops.design(run_input)
    work_max, work_total = _designed_work(plan, max_attempts, backoff_ms)
    events = 2 + sum(2 * (1 + s.flaky_failures) for s in plan.states) + len(plan.states) // 3
    return Workload(
        name=f"{BACKFILL_OP}/{shape}",
        target=BACKFILL_OP,
        run_input=run_input,
        max_concurrency=None,
        max_attempts=max_attempts,
        backoff=f"fixed:{backoff_ms}",
        n_states=len(plan.states),
        est_events=events,
        work_max_s=work_max,
        work_total_s=work_total,
    )


def _backfill_fault(rng: random.Random, kind: str, workload: BackfillWorkload) -> FaultPlan:
    """`trigger_seq` counts the events of every partition run together (0: at once, the
    moment `create` returned — before or during the first tick). A `pause` or `retry` is
    a CLI command that takes a second to start: aimed at the first half, so that it
    mostly lands while the backfill is going."""
    quarters = 2 if kind in ("bf_pause", "bf_retry") else 3
    top = max(2, workload.est_events * quarters // 4)
    trigger = 0 if rng.random() < 0.2 else rng.randint(1, top)
    params: dict[str, Any] = {}
    if kind == "bf_kill_attempt_worker":
        params = {"pick": round(rng.random(), 3)}
    elif kind == "bf_dup_tick":
        params = {"copies": rng.randint(1, 3), "local": rng.random() < 0.5}
    elif kind == "bf_pause":
        params = {"hold_s": rng.choice([0.0, 0.3, 1.0, 2.5])}
    return FaultPlan(kind, trigger, rng.randint(0, 300), params)


def plan_backfill_trial(seed: int, trial: int, kinds: dict[str, float] | None = None) -> TrialPlan:
    """A backfill trial: 3–8 partitions, 1–3 faults (a function of seed and trial)."""
    rng = random.Random(f"mfm-soak-backfill:{seed}:{trial}")
    kinds = kinds or BACKFILL_FAULT_KINDS
    n = rng.randint(3, 8)
    max_attempts = rng.choice([2, 2, 3])
    backoff_ms = rng.choice([50, 100, 200])
    seeds = rng.sample(range(1000, 2**31), n)
    workload = BackfillWorkload(
        backfill=f"soak-{seed}-{trial}",
        partitions=tuple(_partition_workload(rng, s, max_attempts, backoff_ms) for s in seeds),
        max_active=rng.randint(2, 4),
        max_concurrency=rng.choice([None, None, 2, 4]),
        max_attempts=max_attempts,
        backoff_ms=backoff_ms,
    )
    names, weights = list(kinds), list(kinds.values())
    chosen: list[str] = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        kind = rng.choices(names, weights=weights)[0]
        if kind in ("bf_pause", "bf_retry") and kind in chosen:
            continue
        chosen.append(kind)
    faults = sorted(
        (_backfill_fault(rng, k, workload) for k in chosen), key=lambda f: f.trigger_seq
    )
    return TrialPlan(seed, trial, workload, tuple(faults))


# --- helpers ---------------------------------------------------------------------------------


def registry() -> OperationRegistry:
    reg = OperationRegistry.default()
    dist_ops.register_operations(reg)
    soak_ops.register_operations(reg)
    return reg


@dataclass
class Reference:
    phase: str
    final: str | None
    failed_state: str | None
    code: str | None
    completed: list[str]


def embedded_run(reg: OperationRegistry, workload: Workload, config: RunConfig) -> Reference:
    """The same input and config on the embedded engine, in memory (sleeps off here:
    they write nothing)."""
    events, artifacts = InMemoryEventStore(), InMemoryArtifactStore()
    prepared = prepare_run(reg, workload.target, workload.run_input, config)
    manifest_id = store_manifest(artifacts, prepared.manifest)
    result = LocalEngine(events, artifacts, reg).start(
        plan=prepared.plan,
        run_config=config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
    )
    completed = sorted(
        str(e.event.state_id)
        for e in events.read_range(result.run_id)
        if isinstance(e.event, StateCompleted)
    )
    return Reference(
        phase=result.phase.value,
        final=None if result.final_snapshot_id is None else str(result.final_snapshot_id),
        failed_state=None if result.failed_state is None else str(result.failed_state),
        code=None if result.error is None else result.error.code,
        completed=completed,
    )


def recovery_records(
    records: list[dict[str, Any]],
    progress_ms: list[int],
    histories: list[list[EventEnvelope]],
    end_ms: int | None,
) -> list[dict[str, Any]]:
    """Each fault's recovery time (module docstring), written into its record: from its
    heal to the later of the next progress (`progress_ms`) and the final event of every
    state that had an open attempt at the heal (in any of `histories`: one per run)."""
    progress = sorted(progress_ms)
    ordered = sorted(records, key=lambda r: r["_healed"])
    for k, rec in enumerate(ordered):
        heal_ms = int(rec["_healed"] * 1000)
        rec["recovery_s"] = None
        if end_ms is None or heal_ms >= end_ms:
            rec["after_end"] = end_ms is not None
            # Injected while the run was going, which finished before the fault healed.
            rec["ridden_through"] = end_ms is not None and rec["_at"] * 1000 < end_ms
            continue
        rec["after_end"] = False
        settle = next((t for t in progress if t > heal_ms), end_ms)
        for envelopes in histories:
            open_at: set[str] = set()
            last_event: dict[str, int] = {}
            for e in envelopes:
                sid = str(e.state_id) if e.state_id is not None else None
                if sid is None:
                    continue
                if isinstance(e.event, StateEntered) and e.ts_millis <= heal_ms:
                    open_at.add(sid)
                elif isinstance(e.event, StateCompleted | StateFailed) and e.ts_millis <= heal_ms:
                    open_at.discard(sid)
                if isinstance(e.event, StateCompleted | StateFailed):
                    last_event[sid] = e.ts_millis
            for sid in open_at:
                settle = max(settle, last_event.get(sid, end_ms))
        rec["recovery_s"] = round(max(0, settle - heal_ms) / 1000.0, 3)
        later = ordered[k + 1 :]
        rec["overlapped"] = any(float(r["_at"]) * 1000 < settle for r in later)
    return ordered


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return round(ordered[rank - 1], 3)


def _now() -> float:
    return time.time()


def _cli_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """`exit N: <the last line the CLI said>`."""
    said = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    return f"exit {proc.returncode}: {said[-1][-300:] if said else ''}"


# --- the harness -----------------------------------------------------------------------------


@dataclass
class Options:
    trials: int
    seed: int
    first_trial: int
    out: Path | None
    attempt_workers: int
    attempt_concurrency: int
    lease_ttl_s: float
    watchdog_s: float
    step_s: float
    per_state_s: float
    slack_s: float
    trial_timeout_s: float
    max_minutes: float | None
    cluster_dir: Path | None
    keep: bool
    kinds: dict[str, float]
    backfill_kinds: dict[str, float] = field(default_factory=lambda: dict(BACKFILL_FAULT_KINDS))
    workload_kinds: tuple[str, ...] = WORKLOAD_KINDS
    per_partition_s: float = 0.5


@dataclass
class TrialState:
    """What one trial's injector and checks share."""

    plan: TrialPlan
    run_id: str
    t0: float
    fingerprint: str
    done: threading.Event = field(default_factory=threading.Event)
    records: list[dict[str, Any]] = field(default_factory=list)
    async_results: list[tuple[str, Any]] = field(default_factory=list)
    resumes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    waiters: list[threading.Thread] = field(default_factory=list)
    waiter_results: list[str] = field(default_factory=list)
    backfill: str | None = None
    """A backfill trial: the backfill's name (`run_id` is then empty)."""
    run_ids: list[str] = field(default_factory=list)
    """A backfill trial: the run of every partition (computed from its key)."""


class Soak:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.root = opts.cluster_dir or Path(tempfile.mkdtemp(prefix="mfm-soak-"))
        self.faults_dir = self.root / "faults"
        self.faults_dir.mkdir(parents=True, exist_ok=True)
        self.reg = registry()
        env = {
            "DIST_OPS_FAULTS": str(self.faults_dir),
            "MFM_WATCHDOG_S": str(opts.watchdog_s),
        }
        self.cluster = LocalCluster(
            self.root / "cluster",
            attempt_workers=opts.attempt_workers,
            attempt_concurrency=opts.attempt_concurrency,
            lease_ttl_s=opts.lease_ttl_s,
            visibility_timeout_s=3600.0,  # production default: nothing may wait for redelivery
            operations=OPERATIONS,
            extra_env=env,
        )
        self.mfm = str(Path(sys.executable).with_name("mfm"))
        self.failed_trials: list[int] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Soak:
        soak_ops.set_sleeps(False)  # embedded references only; workers are other processes
        self.cluster.start()
        self.cluster.activate()
        from workers.runtime import Runtime, get_runtime

        self.rt = get_runtime()
        self.rt2 = Runtime.from_env()  # a second "process" for duplicated submissions
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()
        if not self.failed_trials and not self.opts.keep and self.opts.cluster_dir is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def bound_s(self, workload: Workload | BackfillWorkload) -> float:
        o = self.opts
        work = workload.work_total_s + o.per_state_s * workload.n_states
        if isinstance(workload, BackfillWorkload):
            work += o.per_partition_s * len(workload.partitions)
        return round(o.lease_ttl_s + o.watchdog_s + o.step_s + work + o.slack_s, 3)

    def cli_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cluster.env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
        env["MFM_OPERATIONS"] = OPERATIONS
        env.pop("DIST_OPS_FAULTS", None)
        return env

    # -- one trial ------------------------------------------------------------------------------
    def run_trial(self, plan: TrialPlan) -> dict[str, Any]:
        from mfm_dist.waiting import RunWaitTimeout
        from workers.submit import wait_for_run

        w = plan.workload
        if isinstance(w, BackfillWorkload):
            return self.run_backfill_trial(plan, w)
        config = w.config()
        references: dict[str, Reference | str] = {}

        def compute_references() -> None:
            try:
                references["same"] = embedded_run(self.reg, w, config)
                if w.max_concurrency is not None and w.expect_phase == RunPhase.COMPLETED.value:
                    references["sequential"] = embedded_run(self.reg, w, w.config(sequential=True))
                else:
                    references["sequential"] = references["same"]
            except Exception as exc:
                references["error"] = f"{type(exc).__name__}: {exc}"

        ref_thread = threading.Thread(target=compute_references, daemon=True)
        ref_thread.start()
        fingerprint = prepare_run(self.reg, w.target, w.run_input, config).plan.fingerprint()
        self._disarm()
        runs_before = self._run_count()
        t0 = _now()
        submit_faults = [f for f in plan.faults if f.kind == "dup_submit"]
        run_id, submit_record = self._submit(
            plan, config, submit_faults[0] if submit_faults else None
        )
        st = TrialState(plan, run_id, t0, fingerprint)
        if submit_record is not None:
            st.records.append(submit_record)
        injector = threading.Thread(
            target=self._inject_all,
            args=(st, [f for f in plan.faults if f.kind != "dup_submit"]),
            daemon=True,
        )
        injector.start()
        result: RunResult | None = None
        timeout_error: str | None = None
        try:
            result = wait_for_run(run_id, self.opts.trial_timeout_s, runtime=self.rt)
        except RunWaitTimeout as exc:
            timeout_error = exc.info.message
        st.done.set()
        injector.join(timeout=180)
        self._settle()
        ref_thread.join(timeout=120)
        line = self._check(st, result, timeout_error, references, runs_before)
        if not line["ok"]:
            self.failed_trials.append(plan.trial)
            self._diagnose(st, line)
        return line

    def _submit(
        self, plan: TrialPlan, config: RunConfig, dup: FaultPlan | None
    ) -> tuple[str, dict[str, Any] | None]:
        from workers.submit import submit_run

        w = plan.workload
        assert isinstance(w, Workload)
        if dup is None:
            return str(submit_run(w.target, w.run_input, config, runtime=self.rt)), None
        submission = f"soak-{plan.seed}-{plan.trial}"
        ids: list[str] = []
        errors: list[str] = []
        t_start = _now()

        def deliver(rt: Any) -> None:
            try:
                ids.append(str(submit_run(w.target, w.run_input, config, runtime=rt,
                                          submission_id=submission)))  # fmt: skip
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        if dup.params.get("concurrent"):
            threads = [threading.Thread(target=deliver, args=(rt,)) for rt in (self.rt, self.rt2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        else:
            deliver(self.rt)
            time.sleep(dup.jitter_ms / 1000.0)
            deliver(self.rt2)
        healed = _now()
        record: dict[str, Any] = {
            **dup.as_json(),
            "at_s": 0.0,
            "_at": t_start,
            "healed_s": round(healed - t_start, 3),
            "_healed": healed,
            "run_ids": ids,
            "errors": errors,
        }
        if not ids:
            raise RuntimeError(f"duplicated submission started nothing: {errors}")
        return ids[0], record

    # -- a backfill trial -------------------------------------------------------------------
    def _mfm(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        """The CLI, in a subprocess, on the cluster's stores."""
        return subprocess.run(
            [self.mfm, *args], env=self.cli_env(), capture_output=True, timeout=timeout_s
        )

    def run_backfill_trial(self, plan: TrialPlan, bw: BackfillWorkload) -> dict[str, Any]:
        """Create the backfill as `mfm backfill create … --backend celery` does (the CLI),
        inject the faults, wait until its journal says finished, then check it."""
        from mfm_dist.backfill.model import partition_run_id

        config = bw.config()
        references: dict[int, tuple[Reference, Reference]] = {}
        ref_errors: list[str] = []

        def compute_references() -> None:
            try:
                for i, part in enumerate(bw.partitions):
                    same = embedded_run(self.reg, part, config)
                    seq = (
                        embedded_run(self.reg, part, bw.config(sequential=True))
                        if bw.max_concurrency is not None
                        else same
                    )
                    references[i] = (same, seq)
            except Exception as exc:
                ref_errors.append(f"{type(exc).__name__}: {exc}")

        ref_thread = threading.Thread(target=compute_references, daemon=True)
        ref_thread.start()
        source = self.root / "backfills" / f"{bw.backfill}.jsonl"
        source.parent.mkdir(exist_ok=True)
        source.write_text(bw.jsonl())
        run_ids = [partition_run_id(bw.backfill, BACKFILL_OP, v, 0) for v in bw.values()]
        self._disarm()
        t0 = _now()
        made = self._mfm(
            "backfill", "create", BACKFILL_OP, "--name", bw.backfill, "--file", str(source),
            "--field", BACKFILL_FIELD, *bw.cli_args(), "--backend", "celery", "--json",
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(
                f"mfm backfill create exited {made.returncode}: "
                + (made.stdout + made.stderr).decode(errors="replace")[-800:]
            )
        st = TrialState(plan, "", t0, "", backfill=bw.backfill, run_ids=run_ids)
        injector = threading.Thread(
            target=self._inject_all, args=(st, list(plan.faults)), daemon=True
        )
        injector.start()
        timeout_error = self._wait_backfill(st, injector)
        st.done.set()
        injector.join(timeout=180)
        self._settle()
        ref_thread.join(timeout=120)
        line = self._check_backfill(st, bw, config, timeout_error, references, ref_errors)
        if not line["ok"]:
            self.failed_trials.append(plan.trial)
            self._diagnose(st, line)
        return line

    def _wait_backfill(self, st: TrialState, injector: threading.Thread) -> str | None:
        """Until the backfill's journal says finished and every fault was injected (a
        `retry` after the end issues it again: then until that issue finished too)."""
        from mfm_dist.backfill.planner import load_state

        assert st.backfill is not None
        deadline = st.t0 + self.opts.trial_timeout_s
        state = None
        while _now() < deadline:
            with contextlib.suppress(Exception):
                state = load_state(self.rt.events, st.backfill)
                if state.finished is not None:
                    st.done.set()  # faults still waiting for their trigger fire now
                    if not injector.is_alive():
                        return None
            time.sleep(0.1)
        said = "unknown" if state is None else f"{state.phase.value} {state.counts()}"
        return f"backfill not finished after {self.opts.trial_timeout_s:g} s ({said})"

    def _dup_tick(self, st: TrialState, f: FaultPlan, rec: dict[str, Any]) -> float:
        """`copies` more `mfm.backfill_tick` deliveries through Celery and, with `local`, one
        more tick at the same time in this process (as a second control worker would)."""
        from workers.backfills import tick
        from workers.factory import BACKFILL_TICK_TASK

        name = st.backfill
        assert name is not None
        local: list[str] = []

        def tick_here() -> None:
            try:
                local.append(tick(self.rt, name))
            except Exception as exc:
                local.append(f"error:{type(exc).__name__}")

        here = threading.Thread(target=tick_here, daemon=True) if f.params["local"] else None
        if here is not None:
            here.start()
        queue = self.rt.settings.control_queue
        for _ in range(int(f.params["copies"])):
            sent = self.rt.app.send_task(BACKFILL_TICK_TASK, args=(name,), queue=queue)
            st.async_results.append(("tick", sent))
        if here is not None:
            here.join(timeout=60)
            rec["local_tick"] = local[0] if local else "no_result"
        return _now()

    def _pause_resume(self, st: TrialState, hold_s: float, rec: dict[str, Any]) -> float:
        """`mfm backfill pause`, `hold_s`, `mfm backfill resume` (refused once finished)."""
        assert st.backfill is not None
        paused = self._mfm("backfill", "pause", st.backfill, "--json")
        rec["pause_rc"] = paused.returncode
        if paused.returncode != 0:
            rec["status"] = _cli_error(paused)
            return _now()
        rec["status"] = "paused"
        time.sleep(hold_s)
        resumed = self._mfm("backfill", "resume", st.backfill, "--json")
        rec["resume_rc"] = resumed.returncode
        if resumed.returncode != 0:
            raise RuntimeError(f"mfm backfill resume: {_cli_error(resumed)}")
        return self._recorded(st.backfill, "resumed")

    def _recorded(self, name: str, kind: str) -> float:
        """When the journal's last `kind` record was appended (epoch seconds): a CLI
        command's fault heals once its record is in (it prints a status after that)."""
        entries = self.rt.events.journal_read(f"backfill/{name}")
        return max((j.ts_millis for j in entries if j.kind == kind), default=0) / 1000.0 or _now()

    def _retry_failed(self, st: TrialState, rec: dict[str, Any]) -> float:
        """`mfm backfill retry NAME --failed` racing the driver: a new issue of the plan
        (running partitions attached, completed ones skipped)."""
        assert st.backfill is not None
        done = self._mfm("backfill", "retry", st.backfill, "--failed", "--json")
        rec["rc"] = done.returncode
        if done.returncode != 0:
            raise RuntimeError(f"mfm backfill retry: {_cli_error(done)}")
        with contextlib.suppress(ValueError, IndexError):
            said = json.loads(done.stderr.decode().strip().splitlines()[-1])
            rec.update(outcome=said.get("outcome"), issue=said.get("issue"),
                       totals=said.get("totals"))  # fmt: skip
        return self._recorded(st.backfill, "issued")

    def _check_backfill(
        self,
        st: TrialState,
        bw: BackfillWorkload,
        config: RunConfig,
        timeout_error: str | None,
        references: dict[int, tuple[Reference, Reference]],
        ref_errors: list[str],
    ) -> dict[str, Any]:
        from mfm_dist.backfill.model import BackfillPlan, partition_run_id
        from mfm_dist.backfill.planner import load_state
        from mfm_dist.backfill.state import Phase
        from mfm_dist.engine.history import RunHistory
        from mfm_dist.engine.lifecycle import result_from_history

        assert st.backfill is not None
        name, values = st.backfill, bw.values()
        checks: dict[str, Any] = {}
        state = None
        for _ in range(50):
            try:
                state = load_state(self.rt.events, name)
                break
            except Exception:
                time.sleep(0.2)
        assert state is not None and state.issue is not None, "the backfill has no journal"
        journal = self.rt.events.journal_read(f"backfill/{name}")
        checks["phase"] = state.phase is Phase.COMPLETED
        stored = BackfillPlan.load(self.rt.artifacts, state.issue.plan_id)
        checks["plan_as_created"] = [
            p.value for p in stored.partitions
        ] == values and stored.config == config
        # Exactly one run per partition, in the run index (the CLI), with the run id the
        # partition's idempotency key gives.
        listed = self._mfm("runs", "--backfill", name, "--limit", "0", "--json")
        rows: list[dict[str, Any]] = json.loads(listed.stdout) if listed.returncode == 0 else []
        per_partition = Counter(str(row["labels"].get("partition")) for row in rows)
        checks["one_run_per_partition"] = (
            per_partition == Counter(values)
            or f"runs per partition: {dict(per_partition)} ({len(rows)} runs)"
        )
        expected = {
            partition_run_id(name, BACKFILL_OP, v, state.parts[i].generation): i
            for i, v in enumerate(values)
        }
        checks["run_ids_from_keys"] = {str(row["run_id"]) for row in rows} == set(expected)
        # Every partition's run: its history, and the same run embedded.
        histories: list[list[EventEnvelope]] = []
        bad: dict[str, list[str]] = {}
        finals: dict[str, str | None] = {}
        for rid, i in sorted(expected.items(), key=lambda kv: kv[1]):
            envelopes = self._read_events(rid)
            histories.append(envelopes)
            try:
                result = result_from_history(RunHistory.load(self.rt.events, RunId(rid)))
            except Exception as exc:
                bad.setdefault("result", []).append(f"{values[i]}: {type(exc).__name__}")
                continue
            final = str(result.final_snapshot_id) if result.final_snapshot_id else None
            finals[values[i]] = final
            completions = Counter(
                str(e.event.state_id) for e in envelopes if isinstance(e.event, StateCompleted)
            )
            attempts: dict[str, list[int]] = {}
            for e in envelopes:
                if isinstance(e.event, StateEntered):
                    attempts.setdefault(str(e.event.state_id), []).append(e.event.attempt)
            n_completed = sum(isinstance(e.event, RunCompleted) for e in envelopes)
            verdicts = {
                "runs_completed": result.phase is RunPhase.COMPLETED,
                "no_double_completion": all(n == 1 for n in completions.values()),
                "gapless_attempts": all(a == list(range(len(a))) for a in attempts.values()),
                "one_run_completed": n_completed == 1
                and isinstance(envelopes[-1].event, RunCompleted),
            }
            refs = references.get(i)
            if refs is not None:
                same, seq = refs
                verdicts["final_eq_embedded_same_mode"] = final == same.final
                verdicts["final_eq_embedded_sequential"] = final == seq.final
                verdicts["completed_states_eq_embedded"] = sorted(completions) == same.completed
            for check, ok in verdicts.items():
                if not ok:
                    bad.setdefault(check, []).append(values[i])
        for check in ("runs_completed", "no_double_completion", "gapless_attempts",
                      "one_run_completed", "final_eq_embedded_same_mode",
                      "final_eq_embedded_sequential", "completed_states_eq_embedded"):  # fmt: skip
            checks[check] = True if check not in bad else f"partitions {bad.pop(check)}"
        if bad:
            checks["run_results"] = bad
        if ref_errors or len(references) != len(values):
            checks["embedded_reference"] = ref_errors or "not computed"
        checks["verify_cli"] = self._verify_all(list(expected))
        # The backfill's counts (`mfm backfill status --json`) against the runs' phases.
        status = self._mfm("backfill", "status", name, "--once", "--json")
        report: dict[str, Any] = json.loads(status.stdout) if status.returncode == 0 else {}
        phases = Counter(str(row["phase"]) for row in rows)
        want = {
            "pending": 0,
            "running": phases["Running"],
            "completed": phases["Completed"],
            "failed": phases["Failed"],
            "cancelled": phases["Cancelled"],
            "rejected": 0,
            "not_started": 0,
        }
        counts = report.get("counts")
        checks["counts_match_runs"] = (
            counts == want and report.get("phase") == "completed"
        ) or f"status {report.get('phase')} {counts}, runs {dict(phases)}"
        checks["finished_counts"] = state.finished is not None and state.finished.counts == counts
        # Recovery: a partition run's progress, or the driver's (claims, settlements, end).
        end_ms = state.finished_ms if state.finished is not None else None
        progress = [
            e.ts_millis
            for envelopes in histories
            for e in envelopes
            if isinstance(e.event, StateCompleted | RunCompleted)
        ] + [j.ts_millis for j in journal if j.kind in ("claimed", "settled", "finished")]
        recoveries = recovery_records(st.records, progress, histories, end_ms)
        bound = self.bound_s(bw)
        trial_recovery = None
        healed_before_end = [r for r in recoveries if r["recovery_s"] is not None]
        if healed_before_end:
            trial_recovery = max(healed_before_end, key=lambda r: r["_healed"])["recovery_s"]
            checks["recovery_within_bound"] = trial_recovery <= bound
        tail_s: float | None = None
        if end_ms is not None:
            heals = [float(r["_healed"]) for r in st.records if r["_healed"] * 1000 < end_ms]
            tail_s = round(end_ms / 1000.0 - max([st.t0, *heals]), 3)
            checks["finished_within_bound"] = tail_s <= bound
        if timeout_error:
            checks["finished"] = timeout_error
        duplicates = self._collect_async(st)
        return {
            "seed": st.plan.seed,
            "trial": st.plan.trial,
            "run_id": None,
            "backfill": name,
            "run_ids": list(expected),
            "workload": bw.as_json(),
            "faults": [{k: v for k, v in r.items() if not k.startswith("_")} for r in recoveries],
            "phase": state.phase.value.capitalize(),
            "issues": state.issue.issue,
            "counts": counts,
            "final_snapshot_id": None,
            "final_snapshot_ids": finals,
            "events": sum(len(h) for h in histories),
            "duration_s": round((end_ms / 1000.0 if end_ms else _now()) - st.t0, 3),
            "finish_after_last_heal_s": tail_s,
            "recovery_s": trial_recovery,
            "bound_s": bound,
            "duplicates": duplicates,
            "resumes": [],
            "checks": checks,
            "ok": all(v is True for v in checks.values()),
        }

    def _read_events(self, run_id: str) -> list[EventEnvelope]:
        for _ in range(50):
            try:
                return self.rt.events.read_range(RunId(run_id))
            except Exception:
                time.sleep(0.2)
        return []

    def _verify_all(self, run_ids: list[str]) -> bool | dict[str, str]:
        """`mfm verify` of every run (two at a time: two cores)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            verdicts = dict(zip(run_ids, pool.map(self._verify_cli, run_ids), strict=True))
        failed = {rid: str(v) for rid, v in verdicts.items() if v is not True}
        return failed or True

    # -- faults -----------------------------------------------------------------------------------
    def _inject_all(self, st: TrialState, faults: list[FaultPlan]) -> None:
        for f in faults:
            self._wait_trigger(st, f.trigger_seq)
            time.sleep(f.jitter_ms / 1000.0)
            at = _now()
            record: dict[str, Any] = {**f.as_json(), "at_s": round(at - st.t0, 3), "_at": at}
            try:
                healed = self._inject(st, f, record)
            except Exception as exc:  # a fault that could not be injected is reported
                record["error"] = f"{type(exc).__name__}: {exc}"
                healed = _now()
                with contextlib.suppress(Exception):
                    self._settle()
            record["healed_s"] = round(healed - st.t0, 3)
            record["_healed"] = healed
            st.records.append(record)

    def _wait_trigger(self, st: TrialState, seq: int) -> None:
        deadline = time.monotonic() + self.opts.trial_timeout_s
        while not st.done.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self._progress(st) >= seq:
                    return
            time.sleep(0.02)

    def _progress(self, st: TrialState) -> int:
        """Events of the run — of a backfill trial: of every partition run together."""
        if st.backfill is None:
            return self.rt.events.head_seq(RunId(st.run_id))
        found = self.rt.events.run_summaries([RunId(r) for r in st.run_ids])
        return sum(summary.head_seq for summary in found.values())

    def _inject(self, st: TrialState, f: FaultPlan, rec: dict[str, Any]) -> float:
        """Inject one fault; returns when it healed (epoch seconds)."""
        kind = f.kind
        if kind in ("bf_kill_control", "bf_redis_kill", "bf_kill_attempt_worker"):
            kind = kind.removeprefix("bf_")  # the same fault, aimed at a backfill trial
        elif kind == "bf_dup_tick":
            return self._dup_tick(st, f, rec)
        elif kind == "bf_pause":
            return self._pause_resume(st, float(f.params["hold_s"]), rec)
        elif kind == "bf_retry":
            return self._retry_failed(st, rec)
        if kind == "dup_advance":
            from workers.factory import ADVANCE_TASK

            queue = self.rt.settings.control_queue
            for _ in range(int(f.params["copies"])):
                sent = self.rt.app.send_task(ADVANCE_TASK, args=(st.run_id,), queue=queue)
                st.async_results.append(("advance", sent))
            return _now()
        if kind == "dup_attempt":
            return self._dup_attempt(st, f, rec)
        if kind == "kill_child":
            pid, held = self._pick_child(st.run_id, float(f.params["pick"]))
            rec.update(pid=pid, held_lease=held)
            if pid is None:
                raise RuntimeError("no attempt pool child to kill")
            os.kill(pid, signal.SIGKILL)
            return _now()
        if kind in ("kill_attempt_worker", "kill_control"):
            name = (
                "control"
                if kind == "kill_control"
                else self._pick_worker(self._running(st), float(f.params["pick"]))
            )
            worker = self.cluster.workers[name]
            rec.update(worker=name, pid=worker.proc.pid)
            before = self._restarts()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
            return self._healed(rec, before)
        if kind == "redis_kill":
            before = self._restarts()
            self.cluster.restart_redis(kill=True)
            back = _now()
            # Workers reconnect by themselves; one that exits instead is restarted by the
            # supervisor, and then the fault lasts until the replacement is ready.
            time.sleep(REDIS_GRACE_S)
            return self._healed(rec, before, back)
        if kind == "s3_freeze":
            self.cluster.freeze_s3()
            try:
                time.sleep(float(f.params["seconds"]))
            finally:
                self.cluster.thaw_s3()
            return _now()
        if kind == "s3_outage":
            proxy = self.cluster.s3_proxy
            assert proxy is not None
            proxy.disable()
            try:
                time.sleep(float(f.params["seconds"]))
            finally:
                proxy.enable()
            return _now()
        if kind == "concurrent_resume":
            return self._concurrent_resume(st, int(f.params["resumes"]))
        if kind == "lease_death":
            return self._lease_death(st, str(f.params["mode"]), rec)
        if kind == "cancel":
            from workers.cancel import cancel_run

            rec["status"] = cancel_run(self.rt, st.run_id, str(f.params["reason"])).status
            return _now()
        raise ValueError(f"unknown fault {kind}")

    def _restarts(self) -> dict[str, int]:
        return {n: w.restarts for n, w in list(self.cluster.workers.items())}

    def _healed(
        self, rec: dict[str, Any], before: dict[str, int], unless_restarted: float | None = None
    ) -> float:
        """When the fault healed: once every worker is back (the supervisor restarts what
        died) — or `unless_restarted`, if given and no worker had to be restarted."""
        if not self.cluster.wait_ready(90):
            rec["error"] = "workers not ready 90 s after the fault"
        after = self._restarts()
        restarted = sorted(n for n, k in after.items() if k != before.get(n, 0))
        rec["restarted"] = restarted
        if unless_restarted is not None and not restarted:
            return unless_restarted
        return _now()

    def _lease_holders(self, run_id: str) -> dict[int, str]:
        """pid → state id of every lease of the run held on this host."""
        import socket

        from mfm_dist.stores.redis_keys import lease_key

        out: dict[int, str] = {}
        client = self.rt.redis
        host = socket.gethostname()
        prefix = lease_key(run_id, "")
        for key in client.scan_iter(match=f"{prefix}*", count=200):
            value = client.get(key)
            if value is None:
                continue
            parts = (value.decode() if isinstance(value, bytes) else str(value)).split(":")
            name = key.decode() if isinstance(key, bytes) else str(key)
            if len(parts) >= 4 and parts[-2] == host and parts[-1].isdigit():
                out[int(parts[-1])] = name[len(prefix) :]
        return out

    def _pick_child(self, run_id: str, pick: float) -> tuple[int | None, bool]:
        holders: dict[int, str] = {}
        with contextlib.suppress(Exception):
            holders = self._lease_holders(run_id)
        children = sorted(
            pid
            for name in self.cluster.attempt_worker_names()
            for pid in self.cluster.workers[name].children()
        )
        held = [p for p in children if p in holders]
        candidates = held or children
        if not candidates:
            return None, False
        pid = candidates[min(len(candidates) - 1, int(pick * len(candidates)))]
        return pid, pid in holders

    def _running(self, st: TrialState) -> list[str]:
        """The trial's runs that may hold leases: its run, or a backfill's running runs."""
        if st.backfill is None:
            return [st.run_id]
        with contextlib.suppress(Exception):
            found = self.rt.events.run_summaries([RunId(r) for r in st.run_ids])
            return [str(r) for r, s in found.items() if s.phase is RunPhase.RUNNING]
        return []

    def _pick_worker(self, run_ids: list[str], pick: float) -> str:
        names = sorted(self.cluster.attempt_worker_names())
        holders: dict[int, str] = {}
        with contextlib.suppress(Exception):
            for run_id in run_ids:
                holders.update(self._lease_holders(run_id))
        busy = [n for n in names if set(self.cluster.workers[n].children()) & set(holders)]
        candidates = busy or names
        return str(candidates[min(len(candidates) - 1, int(pick * len(candidates)))])

    def _dup_attempt(self, st: TrialState, f: FaultPlan, rec: dict[str, Any]) -> float:
        from workers.factory import ATTEMPT_TASK

        envelopes = self.rt.events.read_range(RunId(st.run_id))
        started = envelopes[0].event
        manifest_id = str(started.manifest_id)  # type: ignore[union-attr]
        entered: list[tuple[str, int, str]] = []
        closed: set[tuple[str, int]] = set()
        for e in envelopes:
            ev = e.event
            if isinstance(ev, StateEntered):
                entered.append((str(ev.state_id), ev.attempt, str(ev.base_snapshot_id)))
            elif isinstance(ev, StateCompleted | StateFailed) and e.attempt is not None:
                closed.add((str(ev.state_id), e.attempt))
        if not entered:
            raise RuntimeError("no attempt entered yet")
        open_ = [x for x in entered if (x[0], x[1]) not in closed]
        pool = open_ or entered
        state_id, attempt, base = pool[min(len(pool) - 1, int(float(f.params["pick"]) * len(pool)))]
        rec.update(state=state_id, attempt=attempt, open=bool(open_))
        kwargs = {
            "run_id": st.run_id,
            "manifest_id": manifest_id,
            "state_id": state_id,
            "attempt": attempt,
            "base_snapshot_id": base,
            "plan_fingerprint": st.fingerprint,
        }
        queue = self.rt.settings.attempt_queue
        for _ in range(int(f.params["copies"])):
            st.async_results.append(
                ("attempt", self.rt.app.send_task(ATTEMPT_TASK, kwargs=kwargs, queue=queue))
            )
        return _now()

    def _concurrent_resume(self, st: TrialState, resumes: int) -> float:
        from workers.runtime import Runtime
        from workers.submit import wait_for_run, wake

        env = self.cli_env()
        argv = [self.mfm, "resume", st.run_id, "--cluster", "--wait", "--timeout",
                str(int(self.opts.trial_timeout_s)), "--json"]  # fmt: skip
        for _ in range(resumes):
            st.resumes.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            )

        def waiter() -> None:
            try:
                rt = Runtime.from_env()
                try:
                    wake(rt, st.run_id)
                    res = wait_for_run(st.run_id, self.opts.trial_timeout_s, runtime=rt)
                    st.waiter_results.append(f"{res.phase.value}:{res.final_snapshot_id}")
                finally:
                    rt.close()
            except Exception as exc:
                st.waiter_results.append(f"error:{type(exc).__name__}")

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        st.waiters.append(t)
        return _now()

    def _lease_death(self, st: TrialState, mode: str, rec: dict[str, Any]) -> float:
        """Arm the `DIST_OPS_FAULTS` hook: the next process to take a lease dies right after
        (with `worker`, its whole worker first). Disarmed again if nobody took a lease."""
        from workers.leases import holder_id, holder_is_dead

        for old in self.faults_dir.glob("*"):
            old.unlink(missing_ok=True)
        before = self._restarts()
        workers = [self.cluster.workers[n] for n in self.cluster.attempt_worker_names()]
        (self.faults_dir / "arm").write_text(mode)
        deadline = time.monotonic() + LEASE_DEATH_WAIT_S
        while True:
            died = list(self.faults_dir.glob("died-*"))
            text = died[0].read_text().split("\n") if died else []
            if len(text) >= 2 and text[1]:
                pid = int(died[0].name[len("died-") :])
                rec.update(triggered=True, state=text[1], pid=pid)
                if mode != "worker":
                    return float(text[0])
                # The hook writes its note, SIGKILLs its worker, then itself: wait until
                # both are gone (a signal lands asynchronously: the worker may still look
                # alive for a moment), then until the supervisor's replacement is ready.
                host = holder_id().rpartition(":")[0]
                gone = time.monotonic() + 5
                while time.monotonic() < gone and not (
                    holder_is_dead(f"{host}:{pid}")
                    and any(w.proc.poll() is not None for w in workers)
                ):
                    time.sleep(0.02)
                return self._healed(rec, before)
            if (st.done.is_set() or time.monotonic() > deadline) and self._disarm():
                rec["triggered"] = False
                return _now()
            time.sleep(0.02)

    def _disarm(self) -> bool:
        """Take back an unconsumed lease-then-death arm; True if it was still armed."""
        try:
            (self.faults_dir / "arm").rename(self.faults_dir / "disarmed")
            return True
        except OSError:
            return False

    def _settle(self) -> None:
        """Undo anything a fault may have left behind, and wait for every worker."""
        self.cluster.thaw_s3()
        proxy = self.cluster.s3_proxy
        if proxy is not None and not proxy.enabled:
            proxy.enable()
        self._disarm()
        self.cluster.wait_ready(90)

    def _run_count(self) -> int:
        from mfm_dist.stores.redis_keys import RUN_INDEX_KEY

        for _ in range(50):
            with contextlib.suppress(Exception):
                return int(self.rt.redis.zcard(RUN_INDEX_KEY))
            time.sleep(0.2)
        return -1

    # -- checks ---------------------------------------------------------------------------------
    def _check(
        self,
        st: TrialState,
        result: RunResult | None,
        timeout_error: str | None,
        references: dict[str, Reference | str],
        runs_before: int,
    ) -> dict[str, Any]:
        plan, w = st.plan, st.plan.workload
        assert isinstance(w, Workload)
        checks: dict[str, Any] = {}
        rid = RunId(st.run_id)
        envelopes: list[EventEnvelope] = []
        for _ in range(50):
            try:
                envelopes = self.rt.events.read_range(rid)
                break
            except Exception:
                time.sleep(0.2)
        end_ms = next((e.ts_millis for e in envelopes if isinstance(e.event, RunCompleted)), None)
        phase = result.phase.value if result is not None else "Running"
        cancel = next(
            (r for r in st.records if r["kind"] == "cancel" and r.get("status") == "requested"),
            None,
        )
        if cancel is not None:
            checks.update(self._check_cancelled(phase, envelopes, end_ms, cancel, w))
        else:
            checks["phase"] = phase == w.expect_phase
        if cancel is None and w.expect_phase == RunPhase.FAILED.value and result is not None:
            checks["failed_state"] = str(result.failed_state) == w.expect_failed_state
            checks["error_code"] = (result.error.code if result.error else None) == w.expect_code
        # history shape
        completions = Counter(
            str(e.event.state_id) for e in envelopes if isinstance(e.event, StateCompleted)
        )
        checks["no_double_completion"] = all(n == 1 for n in completions.values())
        attempts: dict[str, list[int]] = {}
        for e in envelopes:
            if isinstance(e.event, StateEntered):
                attempts.setdefault(str(e.event.state_id), []).append(e.event.attempt)
        checks["gapless_attempts"] = all(a == list(range(len(a))) for a in attempts.values())
        n_completed = sum(isinstance(e.event, RunCompleted) for e in envelopes)
        checks["one_run_completed"] = (
            n_completed == 1 and bool(envelopes) and isinstance(envelopes[-1].event, RunCompleted)
        )
        # embedded references
        if "error" in references:
            checks["embedded_reference"] = references["error"]
        same = references.get("same")
        seq = references.get("sequential")
        final = str(result.final_snapshot_id) if result and result.final_snapshot_id else None
        if isinstance(same, Reference) and cancel is None:
            checks["design_matches_embedded"] = (
                same.phase == w.expect_phase
                and same.failed_state == w.expect_failed_state
                and same.code == w.expect_code
            )
            checks["final_eq_embedded_same_mode"] = final == same.final
            checks["completed_states_eq_embedded"] = sorted(completions) == same.completed
        if (
            isinstance(seq, Reference)
            and w.expect_phase == RunPhase.COMPLETED.value
            and cancel is None
        ):
            checks["final_eq_embedded_sequential"] = final == seq.final
        # mfm verify, in a subprocess
        checks["verify_cli"] = self._verify_cli(st.run_id)
        # duplicated submission
        for rec in st.records:
            if rec["kind"] == "dup_submit":
                ids = rec.get("run_ids", [])
                checks["dup_submit_one_run"] = (
                    len(ids) == 2 and len(set(ids)) == 1 and self._run_count() - runs_before == 1
                )
        # concurrent resumes and waiters
        resume_out = self._collect_resumes(st)
        if resume_out:
            expected_rc = 0 if phase == RunPhase.COMPLETED.value else 1
            checks["resumes_agree"] = all(
                rc == expected_rc and out == f"{phase}:{final}" for rc, out in resume_out
            ) and all(r == f"{phase}:{final}" for r in st.waiter_results)
        duplicates = self._collect_async(st)
        # recovery
        recoveries = self._recoveries(st, envelopes, end_ms)
        bound = self.bound_s(w)
        trial_recovery = None
        healed_before_end = [r for r in recoveries if r["recovery_s"] is not None]
        if healed_before_end:
            trial_recovery = max(healed_before_end, key=lambda r: r["_healed"])["recovery_s"]
            checks["recovery_within_bound"] = trial_recovery <= bound
        if timeout_error:
            checks["finished"] = timeout_error
        ok = all(v is True for v in checks.values())
        faults_out = []
        for rec in st.records:
            faults_out.append({k: v for k, v in rec.items() if not k.startswith("_")})
        return {
            "seed": plan.seed,
            "trial": plan.trial,
            "run_id": st.run_id,
            "workload": w.as_json(),
            "faults": faults_out,
            "phase": phase,
            "failed_state": str(result.failed_state) if result and result.failed_state else None,
            "error_code": result.error.code if result and result.error else None,
            "final_snapshot_id": final,
            "events": len(envelopes),
            "duration_s": round((end_ms / 1000.0 - st.t0) if end_ms else _now() - st.t0, 3),
            "recovery_s": trial_recovery,
            "bound_s": bound,
            "duplicates": duplicates,
            "resumes": [{"rc": rc, "result": out} for rc, out in resume_out],
            "checks": checks,
            "ok": ok,
        }

    def _check_cancelled(
        self,
        phase: str,
        envelopes: list[EventEnvelope],
        end_ms: int | None,
        cancel: dict[str, Any],
        w: Workload,
    ) -> dict[str, Any]:
        """A run whose cancel request was recorded: Cancelled, nothing entered after the
        request, and ended within the bound of the request (docs/cancellation.md)."""
        from mfm_dist.engine.cancellation import request_of

        checks: dict[str, Any] = {"phase": phase == RunPhase.CANCELLED.value}
        at = next((e.seq for e in envelopes if request_of(e) is not None), None)
        checks["cancel_recorded"] = at is not None
        if at is not None:
            checks["nothing_entered_after_cancel"] = not any(
                isinstance(e.event, StateEntered) for e in envelopes[at:]
            )
        if end_ms is not None:
            cancel["cancel_to_end_s"] = round(max(0.0, end_ms / 1000.0 - cancel["_at"]), 3)
            checks["cancel_within_bound"] = cancel["cancel_to_end_s"] <= self.bound_s(w)
        return checks

    def _verify_cli(self, run_id: str) -> bool | str:
        try:
            proc = subprocess.run(
                [self.mfm, "verify", run_id, "--json"],
                env=self.cli_env(),
                capture_output=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            return "mfm verify timed out"
        if proc.returncode == 0:
            return True
        return (
            f"exit {proc.returncode}: {(proc.stdout + proc.stderr).decode(errors='replace')[-800:]}"
        )

    def _collect_resumes(self, st: TrialState) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for proc in st.resumes:
            try:
                stdout, stderr = proc.communicate(timeout=self.opts.trial_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            text = stdout.decode(errors="replace").strip()
            try:
                res = RunResult.model_validate_json(text.splitlines()[-1])
                out.append((proc.returncode, f"{res.phase.value}:{res.final_snapshot_id}"))
            except Exception:
                out.append((proc.returncode, (text + stderr.decode(errors="replace"))[-300:]))
        for t in st.waiters:
            t.join(timeout=self.opts.trial_timeout_s)
        return out

    def _collect_async(self, st: TrialState) -> dict[str, int]:
        """What the duplicated deliveries returned (status → count; `no_result` if they
        did not answer within a few seconds, e.g. the worker holding one was killed)."""
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + RESULT_WAIT_S
        for what, res in st.async_results:
            try:
                value = res.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
                status = str(value).split(":", 1)[0]
            except Exception:
                status = "no_result"
            counts[f"{what}:{status}"] += 1
            with contextlib.suppress(Exception):
                res.forget()
        return dict(counts)

    def _recoveries(
        self, st: TrialState, envelopes: list[EventEnvelope], end_ms: int | None
    ) -> list[dict[str, Any]]:
        """Each fault's recovery time (module docstring), written into its record."""
        progress = [
            e.ts_millis for e in envelopes if isinstance(e.event, StateCompleted | RunCompleted)
        ]
        return recovery_records(st.records, progress, [envelopes], end_ms)

    # -- diagnostics ----------------------------------------------------------------------------
    def harness_failure(self, plan: TrialPlan, exc: Exception) -> dict[str, Any]:
        """The line of a trial the harness could not carry out (counted as a failure)."""
        import traceback

        self.failed_trials.append(plan.trial)
        with contextlib.suppress(Exception):
            self._settle()
        out_dir = self.root / "failures"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"trial-{plan.trial:04d}.txt").write_text(traceback.format_exc())
        return {
            "seed": plan.seed,
            "trial": plan.trial,
            "run_id": None,
            "backfill": w.backfill if isinstance(w := plan.workload, BackfillWorkload) else None,
            "workload": plan.workload.as_json(),
            "faults": [f.as_json() for f in plan.faults],
            "phase": "Unknown",
            "final_snapshot_id": None,
            "duration_s": 0.0,
            "recovery_s": None,
            "bound_s": self.bound_s(plan.workload),
            "checks": {"harness": f"{type(exc).__name__}: {exc}"},
            "ok": False,
        }

    def _diagnose(self, st: TrialState, line: dict[str, Any]) -> None:
        out_dir = self.root / "failures"
        out_dir.mkdir(exist_ok=True)
        o = self.opts
        parts = [
            f"reproduce: scripts/soak.py --seed {o.seed} --first-trial {st.plan.trial} --trials 1"
            f" --lease-ttl {o.lease_ttl_s} --attempt-workers {o.attempt_workers}"
            f" --workload-kinds {','.join(o.workload_kinds)}",
            json.dumps(line, indent=1, default=str),
        ]
        if st.backfill is not None:
            parts += self._diagnose_backfill(st)
            (out_dir / f"trial-{st.plan.trial:04d}.txt").write_text("\n\n".join(parts))
            return
        with contextlib.suppress(Exception):
            status = subprocess.run(
                [self.mfm, "status", st.run_id], env=self.cli_env(), capture_output=True,
                timeout=60,
            )  # fmt: skip
            parts.append(
                "== mfm status\n" + (status.stdout + status.stderr).decode(errors="replace")
            )
        with contextlib.suppress(Exception):
            rows = []
            for e in self.rt.events.read_range(RunId(st.run_id)):
                ev = e.event
                code = getattr(getattr(ev, "error", None), "code", "")
                rows.append(
                    f"{e.seq:4d} {e.ts_millis / 1000.0 - st.t0:8.3f}s {type(ev).__name__:16s} "
                    f"{e.state_id or '':32s} {'' if e.attempt is None else e.attempt} {code}"
                )
            parts.append("== events (time since submit)\n" + "\n".join(rows))
        for path in sorted((self.root / "cluster").glob("worker-*.log")):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                mine = [ln for ln in lines if st.run_id in ln]
                parts.append(f"== {path.name}: lines naming the run\n" + "\n".join(mine[-200:]))
        (out_dir / f"trial-{st.plan.trial:04d}.txt").write_text("\n\n".join(parts))

    def _diagnose_backfill(self, st: TrialState) -> list[str]:
        """The journal, `mfm backfill status`, every partition run's events, and the worker
        log lines naming the backfill or one of its runs."""
        assert st.backfill is not None
        parts: list[str] = []
        with contextlib.suppress(Exception):
            rows = [
                f"{j.seq:4d} {j.ts_millis / 1000.0 - st.t0:8.3f}s {j.kind:16s} "
                + json.dumps(j.body, default=str)[:300]
                for j in self.rt.events.journal_read(f"backfill/{st.backfill}")
            ]
            parts.append("== journal (time since create)\n" + "\n".join(rows))
        with contextlib.suppress(Exception):
            status = self._mfm("backfill", "status", st.backfill, "--once", timeout_s=60)
            said = (status.stdout + status.stderr).decode(errors="replace")
            parts.append("== mfm backfill status\n" + said)
        for run_id in st.run_ids:
            with contextlib.suppress(Exception):
                rows = []
                for e in self.rt.events.read_range(RunId(run_id)):
                    ev = e.event
                    code = getattr(getattr(ev, "error", None), "code", "")
                    rows.append(
                        f"{e.seq:4d} {e.ts_millis / 1000.0 - st.t0:8.3f}s "
                        f"{type(ev).__name__:16s} {e.state_id or '':32s} "
                        f"{'' if e.attempt is None else e.attempt} {code}"
                    )
                parts.append(f"== events of {run_id} (time since create)\n" + "\n".join(rows))
        names = [st.backfill, *st.run_ids]
        for path in sorted((self.root / "cluster").glob("worker-*.log")):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                mine = [ln for ln in lines if any(n in ln for n in names)]
                parts.append(
                    f"== {path.name}: lines naming the backfill\n" + "\n".join(mine[-300:])
                )
        return parts


# --- summary ---------------------------------------------------------------------------------


def summarize(lines: list[dict[str, Any]], soak: Soak, wall_s: float) -> dict[str, Any]:
    per_kind: dict[str, list[float]] = {}
    injected: Counter[str] = Counter()
    after_end: Counter[str] = Counter()
    overlapped: Counter[str] = Counter()
    not_injected: Counter[str] = Counter()
    ridden: Counter[str] = Counter()
    for line in lines:
        for f in line["faults"]:
            kind = f["kind"] + (f":{f['mode']}" if f["kind"] == "lease_death" else "")
            injected[kind] += 1
            if f.get("error") or f.get("triggered") is False:
                not_injected[kind] += 1
            elif f.get("after_end"):
                after_end[kind] += 1
                if f.get("ridden_through"):
                    ridden[kind] += 1
            elif f.get("overlapped"):
                overlapped[kind] += 1
            elif f.get("recovery_s") is not None:
                per_kind.setdefault(kind, []).append(float(f["recovery_s"]))
    trial_rec = [float(x["recovery_s"]) for x in lines if x["recovery_s"] is not None]
    o = soak.opts
    return {
        "summary": {
            "seed": o.seed,
            "trials": len(lines),
            "failures": sum(not x["ok"] for x in lines),
            "failed_trials": [x["trial"] for x in lines if not x["ok"]],
            "wall_s": round(wall_s, 1),
            "phases": dict(Counter(x["phase"] for x in lines)),
            "trial_kinds": dict(Counter("backfill" if x.get("backfill") else "run" for x in lines)),
            "workloads": dict(Counter(x["workload"]["name"] for x in lines)),
            "modes": dict(Counter(x["workload"]["mode"] for x in lines)),
            "bound": {
                "formula": "lease_ttl + watchdog + coordinator_step + designed_work + slack",
                "lease_ttl_s": o.lease_ttl_s,
                "watchdog_s": o.watchdog_s,
                "coordinator_step_s": o.step_s,
                "designed_work": f"the workload's sleeps and backoffs + {o.per_state_s} s/state"
                f" (backfills: of every partition, + {o.per_partition_s} s/partition)",
                "slack_s": o.slack_s,
                "min_s": min((x["bound_s"] for x in lines), default=None),
                "max_s": max((x["bound_s"] for x in lines), default=None),
            },
            "trial_recovery_s": _dist(trial_rec),
            "recovery_s_by_fault": {k: _dist(v) for k, v in sorted(per_kind.items())},
            "faults_injected": dict(sorted(injected.items())),
            "faults_healed_after_run_end": dict(sorted(after_end.items())),
            "of_which_injected_mid_run": dict(sorted(ridden.items())),
            "faults_overlapped": dict(sorted(overlapped.items())),
            "faults_not_injected": dict(sorted(not_injected.items())),
        }
    }


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": round(max(values), 3) if values else None,
    }


def digest(line: dict[str, Any]) -> str:
    faults = ",".join(
        f["kind"] + ("!" if f.get("error") else "") + ("~" if f.get("after_end") else "")
        for f in line["faults"]
    )
    bad = [k for k, v in line["checks"].items() if v is not True]
    rec = "-" if line["recovery_s"] is None else f"{line['recovery_s']:.2f}s"
    return (
        f"trial {line['trial']:4d} {'ok  ' if line['ok'] else 'FAIL'} "
        f"{line['workload']['name']:26s} {line['workload']['mode']:15s} {line['phase']:9s} "
        f"{line['duration_s']:6.2f}s rec {rec:>6s}/{line['bound_s']:.0f}s [{faults}]"
        + (f" failed checks: {bad}" if bad else "")
    )


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-trial", type=int, default=0, help="start at this trial number")
    p.add_argument("--out", type=Path, default=None, help="JSON lines (trials, then a summary)")
    p.add_argument("--attempt-workers", type=int, default=2)
    p.add_argument("--attempt-concurrency", type=int, default=1)
    p.add_argument("--lease-ttl", type=float, default=3.0, help="MFM_LEASE_TTL_S (s)")
    p.add_argument("--watchdog", type=float, default=None, help="MFM_WATCHDOG_S (lease TTL + 1)")
    p.add_argument("--step", type=float, default=1.0, help="coordinator step in the bound (s)")
    p.add_argument("--per-state", type=float, default=0.1, help="bound: seconds per state")
    p.add_argument("--slack", type=float, default=5.0, help="bound: slack for shared cores (s)")
    p.add_argument("--trial-timeout", type=float, default=120.0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop starting trials after")
    p.add_argument("--cluster-dir", type=Path, default=None, help="kept; default: a temp dir")
    p.add_argument("--keep", action="store_true", help="keep the temp cluster dir")
    p.add_argument(
        "--faults",
        default=None,
        help="comma-separated fault kinds to draw from (run and/or backfill trials' kinds)",
    )
    p.add_argument(
        "--workload-kinds",
        default=",".join(WORKLOAD_KINDS),
        help="comma-separated trial kinds: run, backfill (both: about "
        f"{BACKFILL_SHARE:.0%}% of the trials are backfill trials)",
    )
    p.add_argument(
        "--per-partition", type=float, default=0.5, help="bound: seconds per backfill partition"
    )
    a = p.parse_args(argv)
    workload_kinds = tuple(
        k for k in WORKLOAD_KINDS if k in {w.strip() for w in a.workload_kinds.split(",")}
    )
    unknown_kinds = sorted({w.strip() for w in a.workload_kinds.split(",")} - set(WORKLOAD_KINDS))
    if unknown_kinds or not workload_kinds:
        p.error(f"unknown workload kinds {unknown_kinds}; known: {list(WORKLOAD_KINDS)}")
    kinds, backfill_kinds = dict(FAULT_KINDS), dict(BACKFILL_FAULT_KINDS)
    if a.faults:
        wanted = [k.strip() for k in a.faults.split(",") if k.strip()]
        unknown = sorted(set(wanted) - set(FAULT_KINDS) - set(BACKFILL_FAULT_KINDS))
        if unknown:
            known = sorted(FAULT_KINDS) + sorted(BACKFILL_FAULT_KINDS)
            p.error(f"unknown fault kinds {unknown}; known: {known}")
        kinds = {k: FAULT_KINDS[k] for k in wanted if k in FAULT_KINDS}
        backfill_kinds = {k: BACKFILL_FAULT_KINDS[k] for k in wanted if k in BACKFILL_FAULT_KINDS}
        # A trial kind none of whose faults were selected is not drawn.
        workload_kinds = tuple(
            k for k in workload_kinds if (kinds if k == "run" else backfill_kinds)
        )
        if not workload_kinds:
            p.error("none of the selected fault kinds applies to the selected workload kinds")
    return Options(
        trials=a.trials,
        seed=a.seed,
        first_trial=a.first_trial,
        out=a.out,
        attempt_workers=a.attempt_workers,
        attempt_concurrency=a.attempt_concurrency,
        lease_ttl_s=a.lease_ttl,
        watchdog_s=a.watchdog if a.watchdog is not None else a.lease_ttl + 1.0,
        step_s=a.step,
        per_state_s=a.per_state,
        slack_s=a.slack,
        trial_timeout_s=a.trial_timeout,
        max_minutes=a.max_minutes,
        cluster_dir=a.cluster_dir,
        keep=a.keep,
        kinds=kinds,
        backfill_kinds=backfill_kinds,
        workload_kinds=workload_kinds,
        per_partition_s=a.per_partition,
    )


def main(argv: list[str] | None = None, emit: Callable[[str], None] | None = None) -> int:
    opts = parse_args(argv)
    say = emit or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.monotonic()
    lines: list[dict[str, Any]] = []
    out = opts.out.open("w") if opts.out is not None else None
    try:
        with Soak(opts) as soak:
            say(f"soak: cluster at {soak.root} (seed {opts.seed})")
            for trial in range(opts.first_trial, opts.first_trial + opts.trials):
                if (
                    opts.max_minutes is not None
                    and time.monotonic() - started > opts.max_minutes * 60
                ):
                    say(f"soak: time budget of {opts.max_minutes} min used; stopping")
                    break
                plan = plan_trial(
                    opts.seed,
                    trial,
                    opts.kinds,
                    backfill_kinds=opts.backfill_kinds,
                    workload_kinds=opts.workload_kinds,
                )
                try:
                    line = soak.run_trial(plan)
                except Exception as exc:  # the harness itself failed: report it, go on
                    line = soak.harness_failure(plan, exc)
                lines.append(line)
                if out is not None:
                    out.write(json.dumps(line, default=str) + "\n")
                    out.flush()
                say(digest(line))
            summary = summarize(lines, soak, time.monotonic() - started)
            if soak.failed_trials:
                say(f"soak: failure details under {soak.root / 'failures'} (kept)")
        if out is not None:
            out.write(json.dumps(summary) + "\n")
        print(json.dumps(summary, indent=1))
    finally:
        if out is not None:
            out.close()
    return 0 if summary["summary"]["failures"] == 0 and lines else 1


if __name__ == "__main__":
    sys.exit(main())
