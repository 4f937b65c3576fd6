"""Celery tasks. Each takes ids, reloads its rows, and is idempotent: a job delivered twice yields one result.

Declared with their queue, late acks and retries with backoff on transient errors (database / broker).
"""
from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError as DBOperationalError

from service.settings import get_settings
from workers.celery_app import celery_app

log = logging.getLogger("ofa.worker")
TRANSIENT = (DBOperationalError, KombuOperationalError, ConnectionError, TimeoutError)
QUEUE = get_settings().task_queue
COMMON = dict(queue=QUEUE, acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT,
              retry_backoff=True, retry_backoff_max=60, retry_jitter=True, max_retries=5, ignore_result=True)

_ctx = None


def context():
    """Per-process database + supernet store (loaded once)."""
    global _ctx
    if _ctx is None:
        from service.db.session import Database
        from service.supernets.store import SupernetStore
        settings = get_settings()
        db = Database(settings.database_url)
        store = SupernetStore(settings).load()
        store.sync_db(db)
        _ctx = (settings, db, store)
    return _ctx


@celery_app.task(name="ofa.run_search", **COMMON)
def run_search(job_id: str) -> None:
    from workers import runner
    settings, db, store = context()
    runner.run_search(db, store, settings, job_id)


@celery_app.task(name="ofa.compute_pareto_front", **COMMON)
def compute_pareto_front(device_id: int, table_id: int, supernet: str) -> None:
    from workers import runner
    settings, db, store = context()
    runner.compute_front(db, store, settings, device_id, table_id, supernet)


@celery_app.task(name="ofa.profile_host", **{**COMMON, "max_retries": 1})
def profile_host(device_name: str | None = None, supernet: str | None = None) -> None:
    from workers import runner
    settings, db, store = context()
    runner.profile_host(db, store, settings, device_name or settings.host_device_name,
                        supernet or settings.default_supernet)
