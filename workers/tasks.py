"""Celery tasks. Each takes ids, reloads its rows, and is idempotent: a job delivered twice yields one result.

Declared with their queue, late acks and retries with backoff on transient errors (database / broker).
"""
from __future__ import annotations

import logging
import os

from celery.signals import worker_ready, worker_shutdown

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
_sweeper = None


@worker_ready.connect
def _start_sweeper(sender=None, **_):
    """Every worker's main process runs the sweeper (workers/sweeper.py) and, when started by `ofa serve`
    (OFA_PARENT_PID), stops itself if that parent is gone."""
    global _sweeper
    # every module a task imports, imported here in the main thread before the sweeper thread starts: two
    # threads importing the same modules in different orders can see a partially initialised one (ImportError)
    import ofa_core.profiler  # noqa: F401
    import service.calibration.service  # noqa: F401
    import service.db.session  # noqa: F401
    import service.devices.service  # noqa: F401
    import service.engine.profile  # noqa: F401
    import service.predictors.service  # noqa: F401
    import workers.runner  # noqa: F401
    import workers.verify  # noqa: F401
    from workers.sweeper import Sweeper
    parent = os.environ.get("OFA_PARENT_PID")
    _sweeper = Sweeper(get_settings(), celery_app, int(parent) if parent and parent.isdigit() else None).start()


@worker_shutdown.connect
def _stop_sweeper(sender=None, **_):
    if _sweeper is not None:
        _sweeper.stop()


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


# a delivery of a job that another live worker holds is retried this many times (a lease apart), never dropped
LEASE_RETRIES = 20


@celery_app.task(name="ofa.run_search", bind=True, **COMMON)
def run_search(self, job_id: str) -> None:
    """A search job (and, with verify, its verify phase: workers/verify.py), under a heartbeated lease; late acks
    + reject_on_worker_lost redeliver it if the worker dies, and the redelivery resumes a started verify phase
    from the candidates stored in the job."""
    from workers import runner
    from workers.lease import LeaseHeld
    settings, db, store = context()
    try:
        runner.run_search(db, store, settings, job_id)
    except LeaseHeld as e:
        if self.request.retries >= LEASE_RETRIES:   # the sweeper still recovers the job if that worker dies
            log.warning("lease still held; leaving the job to its worker", extra={"job": job_id})
            return
        raise self.retry(countdown=e.retry_in, max_retries=LEASE_RETRIES) from None


@celery_app.task(name="ofa.compute_pareto_front", **COMMON)
def compute_pareto_front(device_id: int, table_id: int, supernet: str) -> None:
    from workers import runner
    settings, db, store = context()
    runner.compute_front(db, store, settings, device_id, table_id, supernet)


@celery_app.task(name="ofa.calibrate_subnet", **COMMON)
def calibrate_subnet(subnet_id: str) -> None:
    """BN recalibration (and measured accuracy) of one sub-network, once per calibration set; idempotent."""
    from service.calibration.service import calibrate_by_id
    settings, db, store = context()
    calibrate_by_id(db, store, subnet_id)


@celery_app.task(name="ofa.train_predictor", **{**COMMON, "max_retries": 3})
def train_predictor(training_id: str) -> None:
    """Train, save and register the accuracy predictor of one stored training (service/predictors); a finished
    training delivered again is left alone."""
    from service.predictors.service import train_by_id
    settings, db, store = context()
    train_by_id(db, settings, training_id)


@celery_app.task(name="ofa.profile_host", **{**COMMON, "max_retries": 1})
def profile_host(device_name: str | None = None, supernet: str | None = None) -> None:
    from workers import runner
    settings, db, store = context()
    runner.profile_host(db, store, settings, device_name or settings.host_device_name,
                        supernet or settings.default_supernet)
