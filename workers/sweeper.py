"""The sweeper: recovers jobs nobody works on. It runs as a daemon thread in every worker's main process (started
when the worker is ready; `job_sweep_s` apart, 0 disables it), and `sweep()` can be called directly (tests, CLI).

Each pass, for every job whose timestamp (`heartbeat_at`) is older than `job_lease_s`:
- a running job whose worker stopped heartbeating (killed pool child or whole worker): queued again and
  re-published, or failed (`worker_lost`) once it used `job_max_attempts` attempts, or cancelled if that was asked;
- a queued job published more than a lease ago (the API died between commit and publish, the broker lost its
  data, the embedded SQL broker kept a killed worker's message invisible): re-published, then again after
  doubling intervals (a job merely waiting behind a long queue gets only log2(wait / lease) duplicates).
Every change is one conditional UPDATE, so several sweepers (one per worker) never publish the same job twice in a
period, and a duplicate message is harmless anyway (claim() is atomic; a finished job's task returns at once).
A job is therefore picked up again at most `job_lease_s + job_sweep_s` after its worker died.

Predictor trainings (`sweep_trainings`) are recovered the same way: a queued one last published more than a lease
ago is published again (backing off), and one running past its deadline (its max_seconds after the claim) by
more than a lease is queued and published again, or failed (`worker lost`) after `job_max_attempts` claims.

Each pass also requests the Pareto front of every current table that lacks one of its supernet's version
(`sweep_fronts`): a front whose publish was lost, or one made stale by new weights or a new predictor.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from service.devices import repository as device_repo
from service.jobs import queue as Q
from service.jobs import repository as job_repo
from service.predictors import repository as training_repo
from service.predictors.service import TRAIN_PREDICTOR

log = logging.getLogger("ofa.sweeper")


def sweep(db, celery, settings) -> dict[str, int]:
    """One pass; returns counts of what it did (requeued, republished, failed, cancelled, publish_errors)."""
    lease = settings.job_lease_s
    counts = {"requeued": 0, "republished": 0, "failed": 0, "cancelled": 0, "publish_errors": 0}
    with db.session() as s:
        rows = job_repo.needing_recovery(s, lease)
    for job_id, status, attempts, cancel, created_at in rows:
        with db.session() as s:
            if status == "running" and cancel:
                done = job_repo.finish_expired(s, job_id, lease, "cancelled",
                                               {"code": "cancelled", "message": "cancelled by request"})
                counts["cancelled"] += done
                continue
            if status == "running" and attempts >= settings.job_max_attempts:
                done = job_repo.finish_expired(s, job_id, lease, "failed", {
                    "code": "worker_lost", "attempts": attempts,
                    "message": f"the job's worker stopped {attempts} times (killed or out of memory); giving up "
                               f"after job_max_attempts={settings.job_max_attempts}"})
                counts["failed"] += done
                continue
            took = job_repo.requeue_expired(s, job_id, lease) if status == "running" \
                else job_repo.touch_orphan(s, job_id, lease, created_at)
        if not took:
            continue                   # another sweeper (or a redelivered task) got there first
        try:
            Q.publish(celery, settings.task_queue, Q.RUN_SEARCH, [job_id], settings.broker_publish_timeout_s)
        except Exception:
            counts["publish_errors"] += 1     # stays queued; the next pass after a lease tries again
            continue
        counts["requeued" if status == "running" else "republished"] += 1
        log.warning("job recovered", extra={"job": job_id, "was": status, "attempts": attempts})
    return counts


def sweep_trainings(db, celery, settings) -> dict[str, int]:
    """One pass over predictor trainings nobody works on; returns counts (requeued, republished, failed,
    publish_errors)."""
    lease = settings.job_lease_s
    counts = {"requeued": 0, "republished": 0, "failed": 0, "publish_errors": 0}
    with db.session() as s:
        rows = training_repo.needing_recovery(s, lease)
    for training_id, status, attempts, created_at in rows:
        with db.session() as s:
            if status == "running" and attempts >= settings.job_max_attempts:
                counts["failed"] += training_repo.fail_lost(
                    s, training_id, lease, f"worker lost: the training's worker stopped {attempts} times (killed, "
                    f"out of memory or hung past its deadline); giving up after job_max_attempts="
                    f"{settings.job_max_attempts}")
                continue
            took = training_repo.take_over(s, training_id, status, lease, created_at)
        if not took:
            continue
        try:
            Q.publish(celery, settings.task_queue, TRAIN_PREDICTOR, [training_id], settings.broker_publish_timeout_s)
        except Exception:
            counts["publish_errors"] += 1     # stays queued; a later pass tries again
            continue
        counts["requeued" if status == "running" else "republished"] += 1
        log.warning("predictor training recovered", extra={"training": training_id, "was": status,
                                                           "attempts": attempts})
    return counts


FRONT_REPUBLISH_S = 600.0      # a front requested by this process is not requested again for this long


def sweep_fronts(db, celery, settings, published: dict, now: float | None = None) -> int:
    """Request the Pareto front of every current table that has none of its supernet's version (its publish was
    lost, or new weights / a new predictor made the stored one stale); `published` remembers what this process
    asked for and when, so that a front being computed is not asked for again within FRONT_REPUBLISH_S."""
    now = time.monotonic() if now is None else now
    with db.session() as s:
        missing = device_repo.fronts_missing(s)
    sent = 0
    for device_id, table_id, supernet, version in missing:
        key = (table_id, version)
        if now - published.get(key, -FRONT_REPUBLISH_S) < FRONT_REPUBLISH_S:
            continue
        if not Q.publish_front(celery, settings, device_id, table_id, supernet):
            break                               # broker down: the next pass tries again
        published[key] = now
        sent += 1
        log.info("pareto front requested", extra={"table_id": table_id, "supernet": supernet, "version": version})
    return sent


class Sweeper:
    """The periodic sweep in a daemon thread. With `parent_pid`, it also stops this worker (SIGTERM to itself)
    when that process is gone (the `ofa serve` that started it died without stopping it)."""

    def __init__(self, settings, celery, parent_pid: int | None = None):
        self.settings, self.celery, self.parent_pid = settings, celery, parent_pid
        self._stop = threading.Event()
        self._fronts: dict = {}
        self._thread = threading.Thread(target=self._run, name="ofa-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _run(self) -> None:
        from service.db.session import Database
        db = Database(self.settings.database_url, pooled=False)   # no pooled sockets for forked pool children
        period = self.settings.job_sweep_s
        next_at = time.monotonic()
        try:
            while not self._stop.wait(min(period, 1.0) if period > 0 else 1.0):
                if self._parent_gone():
                    log.warning("parent process gone; stopping this worker", extra={"parent": self.parent_pid})
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                if period <= 0 or time.monotonic() < next_at:
                    continue
                try:
                    sweep(db, self.celery, self.settings)
                    sweep_trainings(db, self.celery, self.settings)
                    sweep_fronts(db, self.celery, self.settings, self._fronts)
                except Exception as e:
                    log.warning("sweep failed", extra={"error": f"{type(e).__name__}: {e}"[:300]})
                next_at = time.monotonic() + period
        finally:
            db.dispose()
