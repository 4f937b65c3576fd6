"""POST /specialize logic: dedup by request hash, answers from cache or the Pareto front, else a queued job."""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ofa_core.spec import SubnetConfig
from service.db.models import Job
from service.devices import repository as device_repo
from service.devices.service import get_device
from service.errors import (InfeasibleConstraints, JobNotFound, ServiceUnavailable, ValidationFailed)
from service.engine.adapter import Infeasible
from service.settings import Settings
from service.subnets import repository as subnet_repo
from service.supernets import repository as supernet_repo
from service.supernets.store import SupernetStore
from . import queue as Q
from . import repository as repo
from .schemas import JobOut, SpecializeRequest, SubnetResult

log = logging.getLogger("ofa.jobs")
METRIC_KEYS = ("latency_ms", "macs", "params", "peak_memory_bytes")


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def subnet_result(subnet_id: str, supernet: str, config: dict, accuracy, latency, metrics: dict) -> dict[str, Any]:
    return {"subnet_id": subnet_id, "supernet": supernet, "config": config,
            "predicted_accuracy": None if accuracy is None else float(accuracy),
            "predicted_latency_ms": None if latency is None else float(latency),
            "macs": None if metrics.get("macs") is None else int(metrics["macs"]),
            "params": None if metrics.get("params") is None else int(metrics["params"]),
            "peak_memory_bytes": None if metrics.get("peak_memory_bytes") is None else int(metrics["peak_memory_bytes"]),
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


def _front_answer(points: list[dict[str, Any]], constraints: dict[str, float], floor: float | None):
    ok = [p for p in points if all(p.get(k) is not None and p[k] <= v for k, v in constraints.items())
          and (floor is None or p["accuracy"] >= floor)]
    return max(ok, key=lambda p: p["accuracy"]) if ok else None


def specialize(s: Session, store: SupernetStore, settings: Settings, celery, body: SpecializeRequest
               ) -> tuple[Job, bool]:
    """Returns (job, answered_now). answered_now: the result is in the job (cache or Pareto front)."""
    supernet = body.supernet or settings.default_supernet
    eng = store.get(supernet)
    constraints = body.constraints.as_dict()
    if not constraints:
        raise ValidationFailed("constraints", "give at least one of latency_ms, macs, params, peak_memory_bytes")
    device = get_device(s, body.device)
    if device.supernet.name != supernet:
        raise ValidationFailed("device", f"device {device.name!r} has a latency table for supernet "
                               f"{device.supernet.name!r}, not {supernet!r}")
    if not eng.search_ready:
        raise ServiceUnavailable(f"supernet {supernet!r} has no accuracy predictor; configure "
                                 f"OFA_PREDICTORS='{{\"{supernet}\": \"/path\"}}'", supernet=supernet)
    table = device_repo.current_table(s, device)
    sn_row = supernet_repo.get_by_name(s, supernet)
    lat = eng.latency_model(("table", table.id), lambda: device_repo.load_entries(s, table.id))
    try:
        minima = eng.minima(lat)
    except Infeasible as e:
        raise InfeasibleConstraints(e.violated[0], e.minima) from None
    violated = [k for k, v in constraints.items() if minima[k] > v]
    if violated:
        raise InfeasibleConstraints(
            "no sub-network meets " + ", ".join(f"{k} <= {constraints[k]:g}" for k in violated)
            + "; smallest achievable: " + ", ".join(f"{k} = {minima[k]:g}" for k in METRIC_KEYS),
            {k: (float(minima[k]) if k == "latency_ms" else int(minima[k])) for k in METRIC_KEYS},
            violated=violated)
    options = {"population": body.options.population or settings.default_population,
               "generations": body.options.generations or settings.default_generations,
               "seed": body.options.seed if body.options.seed is not None else 0}
    request = {"supernet": supernet, "device": device.name, "constraints": constraints,
               "accuracy_floor": body.accuracy_floor, "options": options}
    h = request_hash({**request, "supernet_version": eng.version, "table_id": table.id,
                      "pareto": bool(body.use_pareto)})
    existing = repo.find_live(s, h)
    if existing is not None:
        return existing, existing.status == "succeeded"
    job = Job(id=uuid.uuid4().hex, supernet_id=sn_row.id, supernet_version=eng.version, device_id=device.id,
              table_id=table.id, request_hash=h, request=request, status="queued", source="search")
    answered = False
    if body.use_pareto:
        front = device_repo.front_for(s, sn_row.id, table.id)
        point = _front_answer(front.points, constraints, body.accuracy_floor) if front else None
        if point is not None:
            cfg = SubnetConfig.from_dict(eng.spec, point["config"])
            sid = cfg.content_id()
            metrics = {k: point[k] for k in METRIC_KEYS}
            subnet_repo.get_or_create(s, sid, sn_row.id, cfg.to_dict(), metrics)
            job.status, job.source, job.progress, job.subnet_id = "succeeded", "pareto", 1.0, sid
            job.result = subnet_result(sid, supernet, cfg.to_dict(), point["accuracy"], point["latency_ms"], metrics)
            job.generation = options["generations"]
            from service.db.base import utcnow
            job.started_at = job.finished_at = utcnow()
            answered = True
    try:
        repo.add(s, job)
        s.commit()
    except IntegrityError:  # a concurrent identical request won the race: answer with its job
        s.rollback()
        existing = repo.find_live(s, h)
        if existing is None:
            raise
        return existing, existing.status == "succeeded"
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


def get_job(s: Session, job_id: str) -> Job:
    job = repo.get(s, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def cancel(s: Session, job_id: str) -> Job:
    job = get_job(s, job_id)
    repo.request_cancel(s, job_id)
    s.commit()
    s.refresh(job)
    return job
