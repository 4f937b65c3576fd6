"""BN recalibration of served sub-networks: once per (sub-network, supernet version, calibration set), in a
worker; the statistics (active channels only) and the measured accuracy are stored in `subnet_calibrations`.

* A search's answer is recalibrated and measured by the worker that searched it, before the job succeeds, so its
  result carries `measured_accuracy` at once.
* An answer given at once from the Pareto front, or a download of a sub-network not calibrated yet, publishes the
  `ofa.calibrate_subnet` task; the job's result lists the fields still `pending`, and the worker fills them in.
* A download while the statistics are pending answers 503 with Retry-After (never the uncalibrated statistics);
  a supernet without calibration data serves the supernet's sliced statistics and says `bn_calibrated: false`.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session

from ofa_core.bn import bn_stats_to_bytes
from ofa_core.spec import SubnetConfig
from service.db.base import utcnow
from service.engine.calibration import CALIB_SETTING, EVAL_SETTING, ServedBN
from service.errors import CalibrationFailed, CalibrationPending, VerifyUnavailable
from service.subnets import repository as subnet_repo
from service.supernets import repository as supernet_repo
from . import repository as repo

log = logging.getLogger("ofa.calibration")
TASK = "ofa.calibrate_subnet"
RETRY_AFTER_S = 3


def _sets(eng):
    sets = getattr(eng, "image_sets", None)
    return sets if sets is not None and sets.configured and eng.has_weights else None


def _accuracy_ready(sets, row) -> bool:
    return row is not None and row.status == "ready" and (sets.eval_key is None or row.eval_key == sets.eval_key)


def _broken(eng) -> str | None:
    sets = getattr(eng, "image_sets", None)
    return getattr(sets, "error", None) if sets is not None else None


def fields(eng, row) -> dict[str, Any]:
    """The calibration part of a result / sub-network: bn_calibrated, measured_accuracy (+ images) and the fields
    still pending."""
    sets = _sets(eng)
    if _broken(eng):
        return {"bn_calibrated": False, "measured_accuracy": None, "measured_images": None, "pending": [],
                "bn_calibration": {"status": "unavailable", "error": _broken(eng), "setting": CALIB_SETTING}}
    if sets is None:
        return {"bn_calibrated": False, "measured_accuracy": None, "measured_images": None, "pending": [],
                "bn_calibration": {"status": "not_configured", "setting": CALIB_SETTING}}
    status = "pending" if row is None else row.status
    out = {"bn_calibrated": status == "ready", "measured_accuracy": None, "measured_images": None,
           "bn_calibration": {"status": status, "calibration_images": row.n_images if row else None,
                              "seconds": row.seconds if row else None}}
    if status == "failed":
        out["bn_calibration"]["error"] = row.error
    pending = [] if status in ("ready", "failed") else ["bn_calibration"]
    if sets.eval_key is None:
        out["bn_calibration"]["evaluation"] = {"status": "not_configured", "setting": EVAL_SETTING}
    elif _accuracy_ready(sets, row) and row.measured_accuracy is not None:
        out["measured_accuracy"], out["measured_images"] = float(row.measured_accuracy), int(row.eval_images)
    elif status != "failed":
        pending.append("measured_accuracy")
    out["pending"] = pending
    return out


def check_verifiable(eng) -> None:
    """A verified answer recalibrates and scores its candidates: VerifyUnavailable (409, naming the setting)
    unless the supernet has weights and readable calibration and evaluation images."""
    name = eng.spec.name
    if not eng.has_weights:
        raise VerifyUnavailable(name, "has no weights loaded to measure candidates with", "OFA_WEIGHTS")
    if _broken(eng):
        raise VerifyUnavailable(name, f"has calibration images that could not be loaded ({_broken(eng)})",
                                CALIB_SETTING)
    sets = _sets(eng)
    if sets is None:
        raise VerifyUnavailable(name, "has no BN-calibration images configured", CALIB_SETTING)
    if sets.eval_key is None:
        raise VerifyUnavailable(name, "has no evaluation images configured to measure accuracy on", EVAL_SETTING)


def lookup(s: Session, eng, subnet_id: str):
    sets = _sets(eng)
    return None if sets is None else repo.get(s, subnet_id, eng.version, sets.calib_key)


def request(s: Session, eng, settings, celery, subnet_id: str, row=None) -> bool:
    """Make sure a worker will calibrate the sub-network (its row must exist and be committed): insert the
    pending row and publish the task, or publish again when the pending request is older than
    `calibration_retry_s`. Commits. True when this call published."""
    from service.jobs import queue as Q
    sets = _sets(eng)
    if sets is None:
        return False
    if row is None:
        publish = repo.request(s, subnet_id, eng.version, sets.calib_key)
        row = repo.get(s, subnet_id, eng.version, sets.calib_key) if not publish else None
    else:
        publish = False
    if row is not None and row.status != "failed" and not _accuracy_ready(sets, row):   # pending, or a stale eval
        publish = repo.touch(s, row.id, utcnow() - dt.timedelta(seconds=settings.calibration_retry_s))
    s.commit()
    if publish:
        Q.publish(celery, settings.task_queue, TASK, [subnet_id], settings.broker_publish_timeout_s)
    return publish


def answer_fields(s: Session, eng, settings, subnet_id: str) -> tuple[dict[str, Any], bool]:
    """(`fields`, publish) for an answer given at once. Where the measurement is missing, the pending row goes
    into the answer's own transaction, and publish is True once per sub-network (again after
    `calibration_retry_s`): then call `publish_in_background` after the commit."""
    sets = _sets(eng)
    row = None if sets is None else repo.get(s, subnet_id, eng.version, sets.calib_key)
    out, publish = fields(eng, row), False
    if sets is not None and out["pending"]:
        if row is None:
            publish = repo.request(s, subnet_id, eng.version, sets.calib_key)
        elif row.status != "failed":
            publish = repo.touch(s, row.id, utcnow() - dt.timedelta(seconds=settings.calibration_retry_s))
    return out, publish


_background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ofa-calib-publish")
_slots = threading.BoundedSemaphore(256)      # at most this many publishes waiting; beyond, a download asks again


def publish_in_background(settings, celery, subnet_id: str) -> None:
    """Publish the calibration task for an answer already given (its pending row committed with it), off the
    answer's path; broker errors are logged: a download or a later answer asks again."""
    from service.jobs import queue as Q
    if not _slots.acquire(blocking=False):
        log.warning("calibration publish dropped: too many waiting", extra={"subnet": subnet_id})
        return

    def run() -> None:
        try:
            Q.publish(celery, settings.task_queue, TASK, [subnet_id], settings.broker_publish_timeout_s)
        except Exception as e:
            log.warning("calibration not queued", extra={"subnet": subnet_id, "error": f"{type(e).__name__}: {e}"[:300]})
        finally:
            _slots.release()

    _background.submit(run)


def served_bn(s: Session, eng, settings, celery, subnet_id: str) -> ServedBN | None:
    """The statistics a download must carry: the recalibrated ones, None where no calibration data is configured
    (the supernet's sliced statistics, said so in the file and the headers). Raises CalibrationPending (503,
    after making sure a worker computes them) or CalibrationFailed."""
    if _broken(eng) and eng.has_weights:   # configured but unreadable: refuse rather than serve uncalibrated
        raise CalibrationFailed(subnet_id, f"the calibration images could not be loaded ({_broken(eng)}); fix "
                                f"{CALIB_SETTING}")
    sets = _sets(eng)
    if sets is None:
        return None
    row = repo.get(s, subnet_id, eng.version, sets.calib_key)
    if row is not None and row.status == "ready":
        return sets.served(row.stats, row.n_images)
    if row is not None and row.status == "failed":
        raise CalibrationFailed(subnet_id, row.error or "unknown error")
    request(s, eng, settings, celery, subnet_id, row)
    raise CalibrationPending(subnet_id, RETRY_AFTER_S)


def headers(bn: ServedBN | None) -> dict[str, str]:
    if bn is None:
        return {"X-BN-Calibrated": "false", "X-BN-Calibration-Setting": CALIB_SETTING}
    return {"X-BN-Calibrated": "true", "X-BN-Calibration-Key": bn.key}


# -- worker side ------------------------------------------------------------------------------------------
def calibrate(db, eng, subnet_id: str, cfg: SubnetConfig) -> dict[str, Any]:
    """Recalibrate and measure one sub-network unless stored already (its `subnets` row must exist); fill in the
    results of the jobs waiting for it. Returns `fields(...)` of the stored outcome."""
    sets = _sets(eng)
    if sets is None:
        return fields(eng, None)
    with db.session() as s:
        row = repo.get(s, subnet_id, eng.version, sets.calib_key)
        done = row is not None and (row.status == "failed" or _accuracy_ready(sets, row))
    if not done:
        values = _measure(sets, eng, subnet_id, cfg)
        with db.session() as s:
            repo.save(s, subnet_id, eng.version, sets.calib_key, **values)
    with db.session() as s:
        row = repo.get(s, subnet_id, eng.version, sets.calib_key)
        out = fields(eng, row)
        for job in repo.waiting_jobs(s, subnet_id):
            repo.set_result(s, job, {**job.result, **out})
    return out


def for_search(db, eng, supernet_id: int, subnet_id: str, cfg: SubnetConfig, metrics: dict[str, Any]
               ) -> dict[str, Any]:
    """In the search's worker, before its job succeeds: store the sub-network, recalibrate and measure it."""
    if _sets(eng) is None:
        return fields(eng, None)
    with db.session() as s:
        subnet_repo.get_or_create(s, subnet_id, supernet_id, cfg.to_dict(),
                                  {k: int(metrics[k]) for k in ("macs", "params", "peak_memory_bytes")})
    return calibrate(db, eng, subnet_id, cfg)


def _measure(sets, eng, subnet_id: str, cfg: SubnetConfig) -> dict[str, Any]:
    from workers.tasks import TRANSIENT
    try:
        m = sets.measure(eng.supernet, cfg)
    except TRANSIENT:
        raise
    except Exception as e:   # bad images, out of memory ...: stored, so downloads say why instead of waiting
        log.exception("BN recalibration failed", extra={"subnet": subnet_id})
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    log.info("sub-network recalibrated", extra={"subnet": subnet_id, "seconds": round(m.calib_seconds, 3),
                                                "accuracy": m.accuracy})
    return {"status": "ready", "stats": bn_stats_to_bytes(m.stats), "n_images": m.n_calib,
            "seconds": m.calib_seconds, "eval_key": sets.eval_key if m.n_eval else None,
            "measured_accuracy": m.accuracy, "eval_images": m.n_eval, "eval_seconds": m.eval_seconds, "error": None}


def calibrate_by_id(db, store, subnet_id: str) -> str:
    """The `ofa.calibrate_subnet` task: reload the sub-network by id and calibrate it (idempotent)."""
    with db.session() as s:
        sub = subnet_repo.get(s, subnet_id)
        if sub is None:
            return "missing"
        name, config = supernet_repo.get(s, sub.supernet_id).name, dict(sub.config)
    eng = store.get(name)
    if _sets(eng) is None:
        return "not-configured"
    out = calibrate(db, eng, subnet_id, SubnetConfig.from_dict(eng.spec, config))
    return out["bn_calibration"]["status"]
