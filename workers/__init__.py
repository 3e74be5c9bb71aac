"""Distributed execution of mfm-dist runs on Celery workers (docs/cluster.md).

Everything Celery- and Redis-specific lives here; the engine core (`mfm_dist`)
stays free of both. Entry points: `workers.app` (the Celery app, for
`celery -A workers.app worker`), `workers.submit` (`submit_run`, `wait_for_run`).
"""
