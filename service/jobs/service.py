"""POST /specialize logic: dedup by request hash, answers from cache or the Pareto front, else a queued job."""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ofa_core.search import METRICS, InfeasibleError, within_limit
from ofa_core.spec import SubnetConfig
from service.db.base import utcnow
from service.db.models import Job
from service.devices import repository as device_repo
from service.engine.adapter import SupernetEngine
from service.errors import (DeviceNotFound, Forbidden, InfeasibleConstraints, JobNotFound, ServiceUnavailable,
                            Unauthorized, ValidationFailed)
from service.settings import Settings
from service.calibration import service as calibration
from service.subnets import repository as subnet_repo
from service.supernets.store import SupernetStore
from . import queue as Q
from . import repository as repo
from .schemas import DEFAULT_VERIFY_TOP_K, JobOut, SpecializeRequest, SubnetResult

log = logging.getLogger("ofa.jobs")


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def subnet_result(subnet_id: str, supernet: str, config: dict, accuracy: float | None, metrics: dict
                  ) -> dict[str, Any]:
    """A job's result: the sub-network with its predicted accuracy and every metric (None where unknown)."""
    num = lambda k, cast: None if metrics.get(k) is None else cast(metrics[k])  # noqa: E731
    return {"subnet_id": subnet_id, "supernet": supernet, "config": config,
            "predicted_accuracy": None if accuracy is None else float(accuracy),
            "predicted_latency_ms": num("latency_ms", float), "macs": num("macs", int), "params": num("params", int),
            "peak_memory_bytes": num("peak_memory_bytes", int),
            "links": {"self": f"/subnets/{subnet_id}", "checkpoint": f"/subnets/{subnet_id}/checkpoint",
                      "net_config": f"/subnets/{subnet_id}/net.config"}}


def job_out(job: Job) -> JobOut:
    req = job.request
    return JobOut(id=job.id, status=job.status, supernet=job.supernet.name, supernet_version=job.supernet_version,
                  device=job.device.name, table_version=job.table.version, source=job.source,
                  progress=job.progress, generation=job.generation,
                  generations=int(req.get("options", {}).get("generations") or 0), request=req,
                  best_so_far=job.best if job.status == "running" else None,
                  result=SubnetResult(**job.result) if job.result else None, error=job.error,
                  created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                  links={"self": f"/jobs/{job.id}", "events": f"/jobs/{job.id}/events"})


def front_answer(points: list[dict[str, Any]], constraints: dict[str, float], floor: float | None
                 ) -> dict[str, Any] | None:
    """The stored front's answer with the search's semantics: the most accurate point within the constraints or,
    with an accuracy floor, the fastest point within them whose accuracy reaches the floor. A latency budget alone
    on an indexed front (the engine's `FrontPoints`) is answered by bisection."""
    if floor is None and set(constraints) == {"latency_ms"} and getattr(points, "indexed", False):
        return points.best_within(within_limit(constraints["latency_ms"]))
    ok = [p for p in points if all(p.get(k) is not None and p[k] <= within_limit(v) for k, v in constraints.items())
          and (floor is None or p["accuracy"] >= floor)]
    if not ok:
        return None
    if floor is None:
        return max(ok, key=lambda p: p["accuracy"])
    return min(ok, key=lambda p: (p["latency_ms"], -p["accuracy"]))


def infeasible(minima: dict[str, float], constraints: dict[str, float], error: InfeasibleError | None = None
               ) -> InfeasibleConstraints:
    """422 body for a request no sub-network meets: what was asked and what is achievable (the smallest value of
    every metric; for an accuracy floor, the best predicted accuracy found within the constraints)."""
    mins = {k: (float(minima[k]) if k == "latency_ms" else int(minima[k])) for k in METRICS}
    if error is not None and "min_accuracy" in error.minima:
        best, floor = float(error.minima["min_accuracy"]), float(error.limits["min_accuracy"])
        return InfeasibleConstraints(
            f"no sub-network within the constraints reaches accuracy_floor {floor:g}; best achievable predicted "
            f"accuracy: {best:.4f}", mins, violated=["accuracy_floor"], best_accuracy=best)
    smallest = "; smallest achievable: " + ", ".join(f"{k} = {minima[k]:g}" for k in METRICS)
    violated = [k for k, v in constraints.items() if minima[k] > within_limit(v)]
    if violated:
        return InfeasibleConstraints("no sub-network meets " + ", ".join(f"{k} <= {constraints[k]:g}" for k in violated)
                                     + smallest, mins, violated=violated)
    violated = sorted(constraints)        # each is achievable alone, not all of them at once
    return InfeasibleConstraints(
        "no sub-network meets all of " + ", ".join(f"{k} <= {constraints[k]:g}" for k in violated)
        + " together (each alone is achievable)" + smallest, mins, violated=violated, jointly=True)


def check_floor(eng: SupernetEngine, eff, constraints: dict[str, float], floor: float, options: dict[str, int],
                settings: Settings) -> None:
    """InfeasibleError now (-> 422 before anything is queued) when a bounded accuracy search within the constraints
    (the check ofa_core's search runs before it minimises latency under a floor) finds nothing reaching the floor."""
    r = eng.search(eff, constraints, None, min(options["population"], settings.floor_check_population),
                   min(options["generations"], settings.floor_check_generations), options["seed"])
    if r.predicted_acc < floor:
        raise InfeasibleError({"min_accuracy": r.predicted_acc}, {**constraints, "min_accuracy": floor})


def check_search_policy(settings: Settings, body: SpecializeRequest, has_key: bool) -> None:
    """`search_auth`: 'all' needs a key for every search; 'beyond_defaults' lets anonymous callers search with
    the default population and generations only; 'none' needs no key."""
    if has_key or settings.search_auth == "none":
        return
    if settings.search_auth == "all":
        raise Unauthorized("POST /specialize needs an API key (X-API-Key) on this service")
    o = body.options
    for name, given, default in (("population", o.population, settings.default_population),
                                 ("generations", o.generations, settings.default_generations)):
        if given is not None and given > default:
            raise Unauthorized(f"options.{name} above the default ({default}) needs an API key (X-API-Key)")


def _republish_if_orphaned(s: Session, settings: Settings, celery, job: Job) -> None:
    """An identical request found a queued job published more than a lease ago (its message may be lost):
    publish it again now rather than wait for the sweeper."""
    if job.status == "queued" and repo.touch_orphan(s, job.id, settings.job_lease_s):
        s.commit()
        try:
            Q.publish(celery, settings.task_queue, Q.RUN_SEARCH, [job.id], settings.broker_publish_timeout_s)
        except Exception:
            log.warning("re-publish failed; the sweeper retries", extra={"job": job.id})


def _target(s: Session, store: SupernetStore, body: SpecializeRequest):
    """(device, latency table, engine) the request names, each checked: 404 / 422 / 503 naming what is wrong."""
    found = device_repo.with_current_table(s, body.device)
    if found is None:
        raise DeviceNotFound(body.device)
    device, table = found
    if body.batch_size is not None and body.batch_size != table.batch_size:
        table = device_repo.table_for_batch(s, device, body.batch_size)
        if table is None:
            raise ValidationFailed("batch_size", f"device {device.name!r} has no latency table for batch size "
                                   f"{body.batch_size} (it has {device_repo.batch_sizes(s, device)})")
    supernet = body.supernet or device.supernet.name      # default: the supernet the device's table is for
    eng = store.get(supernet)
    if device.supernet.name != supernet:
        raise ValidationFailed("device", f"device {device.name!r} has a latency table for supernet "
                               f"{device.supernet.name!r}, not {supernet!r}")
    if not eng.search_ready:
        raise ServiceUnavailable(f"supernet {supernet!r} has no accuracy predictor; configure "
                                 f"OFA_PREDICTORS='{{\"{supernet}\": \"/path\"}}'", supernet=supernet)
    return device, table, eng


def _job_request(body: SpecializeRequest, settings: Settings, eng: SupernetEngine, device, table,
                 constraints: dict[str, float]) -> dict[str, Any]:
    """The stored request: absolute constraints, the effective options, what the job hash covers."""
    options = {"population": body.options.population or settings.default_population,
               "generations": body.options.generations or settings.default_generations,
               "seed": body.options.seed if body.options.seed is not None else 0}
    if body.verify:    # measured by a worker: needs the supernet's calibration and evaluation images
        calibration.check_verifiable(eng)
        options["verify_top_k"] = body.options.verify_top_k or DEFAULT_VERIFY_TOP_K
    request = {"supernet": eng.spec.name, "device": device.name, "constraints": constraints,
               "accuracy_floor": body.accuracy_floor, "options": options, "batch_size": int(table.batch_size)}
    if body.verify:
        request["verify"] = True
    if body.constraints.relative():
        request["relative_constraints"] = body.constraints.relative()
    return request


def _answer_from_front(s: Session, eng: SupernetEngine, settings: Settings, job: Job, point: dict[str, Any]
                       ) -> bool:
    """Fill `job` in as answered by a stored front point; True when its calibration still has to be published."""
    cfg = SubnetConfig.from_dict(eng.spec, point["config"])
    sid = cfg.content_id()
    metrics = {k: point[k] for k in METRICS}
    subnet_repo.ensure(s, sid, job.supernet_id, cfg.to_dict(), metrics)
    job.status, job.source, job.progress, job.subnet_id = "succeeded", "pareto", 1.0, sid
    job.result = subnet_result(sid, eng.spec.name, cfg.to_dict(), point["accuracy"], metrics)
    calib, calib_publish = calibration.answer_fields(s, eng, settings, sid)   # measured, or pending
    job.result.update(calib)
    job.generation = job.request["options"]["generations"]
    job.started_at = job.finished_at = utcnow()
    return calib_publish


def _commit_and_publish(s: Session, settings: Settings, celery, job: Job, answered: bool, calib_publish: bool
                        ) -> tuple[Job, bool]:
    """Store the job, then (only after the commit) hand it to a worker; a concurrent identical request that
    committed first is answered with its job instead."""
    if not answered:
        Q.check_broker(celery)          # the broker failed moments ago: 503 now, no job row to undo
    try:
        repo.add(s, job)
        s.commit()
    except IntegrityError:  # a concurrent identical request won the race: answer with its job
        s.rollback()
        existing = repo.find_live(s, job.request_hash)
        if existing is None:
            raise
        return existing, existing.status == "succeeded"
    if answered and calib_publish:    # a worker recalibrates and measures it, then fills the pending fields in
        calibration.publish_in_background(settings, celery, job.subnet_id)
    if not answered:
        try:
            Q.publish(celery, settings.task_queue, Q.RUN_SEARCH, [job.id], settings.broker_publish_timeout_s)
        except Exception:
            # nothing may stay queued that no worker will ever see
            repo.finish(s, job.id, None, "failed", error={"code": "broker_unavailable",
                                                           "message": "the task broker was unreachable"})
            s.commit()
            raise
    return job, answered


def specialize(s: Session, store: SupernetStore, settings: Settings, celery, body: SpecializeRequest,
               owner_key_id: int | None = None) -> tuple[Job, bool]:
    """Returns (job, answered_now). answered_now: the result is in the job (cache or Pareto front)."""
    if not body.constraints.as_dict():
        raise ValidationFailed("constraints", "give at least one of latency_ms, macs, params, peak_memory_bytes")
    if body.options.verify_top_k is not None and not body.verify:
        raise ValidationFailed("options.verify_top_k", "verify_top_k applies to verified answers: send verify: true")
    device, table, eng = _target(s, store, body)
    sn_row = device.supernet            # checked to be the requested supernet
    eff = eng.efficiency(table.id, lambda: device_repo.load_entries(s, table.id))
    minima = eng.minima(eff)
    constraints = body.constraints.absolute(minima, lambda: eng.maxima(eff))
    if any(minima[k] > within_limit(v) for k, v in constraints.items()):
        raise infeasible(minima, constraints)
    request = _job_request(body, settings, eng, device, table, constraints)
    h = request_hash({**request, "supernet_version": eng.version, "table_id": table.id,
                      "pareto": bool(body.use_pareto)})
    existing = repo.find_live(s, h)
    if existing is not None:
        _republish_if_orphaned(s, settings, celery, existing)
        return existing, existing.status == "succeeded"
    job = Job(id=uuid.uuid4().hex, owner_key_id=owner_key_id, supernet_id=sn_row.id, supernet_version=eng.version,
              device_id=device.id, table_id=table.id, request_hash=h, request=request, status="queued",
              source="search", supernet=sn_row, device=device, table=table)   # job_out reads them without a query
    points = eng.front_points(table.id, lambda: device_repo.front_for(s, sn_row.id, table.id, eng.version)) \
        if body.use_pareto and not body.verify else None
    point = front_answer(points, constraints, body.accuracy_floor) if points else None
    calib_publish = _answer_from_front(s, eng, settings, job, point) if point is not None else False
    if point is None and body.accuracy_floor is not None:
        try:
            check_floor(eng, eff, constraints, body.accuracy_floor, request["options"], settings)
        except InfeasibleError as e:
            raise infeasible(minima, constraints, e) from None
    return _commit_and_publish(s, settings, celery, job, point is not None, calib_publish)


def list_jobs(s: Session, offset: int, limit: int, status: str | None, device: str | None) -> tuple[list[Job], int]:
    device_id = None
    if device:
        d = device_repo.get_by_name(s, device)
        if d is None:
            raise DeviceNotFound(device)
        device_id = d.id
    return repo.list_recent(s, offset, limit, status, device_id)


def get_job(s: Session, job_id: str) -> Job:
    job = repo.get(s, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def cancel(s: Session, settings: Settings, job_id: str, key_id: int) -> Job:
    """Only the key that created a job may cancel it (a job created without a key: any valid key)."""
    job = get_job(s, job_id)
    if job.owner_key_id is not None and job.owner_key_id != key_id:
        raise Forbidden("only the API key that created this job may cancel it", job=job_id)
    repo.request_cancel(s, job_id, settings.job_lease_s)
    s.commit()
    s.refresh(job)
    return job
