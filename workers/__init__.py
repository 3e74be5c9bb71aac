"""Distributed execution of mfm-dist runs on Celery workers (docs/cluster.md).

Everything Celery- and Redis-specific lives here; the engine core (`mfm_dist`)
stays free of both. Entry points: `workers.app` (the worker boot: reads the settings and
builds the Celery app for `celery -A workers.app worker`), `workers.factory.create_app`
(an app from explicit `ClusterSettings`), `workers.submit` (`submit_run`, `wait_for_run`).
"""
