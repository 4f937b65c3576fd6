"""What the tasks do, independent of Celery (also used by the CLI)."""
from __future__ import annotations

import logging
import os
import time
import uuid

from sqlalchemy.exc import IntegrityError

from ofa_core.search import METRICS, InfeasibleError, SearchCancelled
from service.calibration import service as calibration
from service.devices import repository as device_repo
from service.jobs import repository as job_repo
from service.jobs.service import infeasible, subnet_result
from service.subnets import repository as subnet_repo
from service.supernets import repository as supernet_repo
from workers.lease import Heartbeat, LeaseHeld, heartbeat_period

log = logging.getLogger("ofa.worker")


def _claim(db, settings, job_id: str) -> tuple[str, tuple] | str:
    """Claim the job: (token, (supernet, table_id, request, supernet_id)), or the outcome for this delivery when
    it cannot run the job now. Raises LeaseHeld when a live worker holds it (the delivery is retried, never
    dropped: if that worker dies, its lease expires and a retry or the sweeper takes the job over)."""
    lease = settings.job_lease_s
    with db.session() as s:
        job = job_repo.get(s, job_id)
        if job is None:
            log.warning("job not found", extra={"job": job_id})
            return "missing"
        if job.status in job_repo.TERMINAL:
            return job.status                       # duplicate delivery of a finished job
        token = f"{os.getpid()}-{uuid.uuid4().hex[:24]}"   # names the process that holds the lease
        if job_repo.claim(s, job_id, token, lease, settings.job_max_attempts):
            return token, (job.supernet.name, job.table_id, dict(job.request), job.supernet_id)
        s.rollback()
        s.refresh(job)
        if job.status in job_repo.TERMINAL:
            return job.status
        if job.status == "running" and job_repo.lease_left_s(job, lease) > 0:
            if job.cancel_requested:
                return "cancelling"                 # its live worker stops at the next generation
            raise LeaseHeld(job_id, job_repo.lease_left_s(job, lease) + 1.0)
        if job.cancel_requested:
            job_repo.finish_expired(s, job_id, lease, "cancelled", {"code": "cancelled", "message": "cancelled by request"})
            return "cancelled"
        if job.attempts >= settings.job_max_attempts:
            job_repo.finish(s, job_id, None, "failed", lease_token=None, error={
                "code": "worker_lost", "attempts": job.attempts,
                "message": f"the job's worker stopped {job.attempts} times (killed or out of memory); giving up "
                           f"after job_max_attempts={settings.job_max_attempts}"})
            return "failed"
        return "not-claimed"


def run_search(db, store, settings, job_id: str) -> str:
    claimed = _claim(db, settings, job_id)
    if isinstance(claimed, str):
        return claimed
    token, (supernet, table_id, req, supernet_id) = claimed
    eng = store.get(supernet)
    state = {"cancel": False, "last": 0.0}
    with Heartbeat(db, job_id, token, heartbeat_period(settings), state):
        if req.get("verify"):          # workers/verify.py: measure the best candidates, then answer
            from workers import verify
            cands = verify.stored_candidates(db, job_id)    # a redelivery resumes from them, not searching again
            if cands is not None:
                return verify.run(db, eng, settings, job_id, token, supernet_id, req, cands, state)
            return _search(db, eng, settings, job_id, token, supernet, table_id, req, supernet_id, state,
                           finish=lambda r: verify.run(db, eng, settings, job_id, token, supernet_id, req,
                                                       verify.candidates_of(r), state))
        return _search(db, eng, settings, job_id, token, supernet, table_id, req, supernet_id, state)


def _search(db, eng, settings, job_id, token, supernet, table_id, req, supernet_id, state, finish=None) -> str:
    """Search, then `_save` the answer (or hand the result to `finish`, e.g. the verify phase)."""
    opts = req["options"]
    eff = eng.efficiency(table_id, lambda: _entries(db, table_id))
    log.info("search started", extra={"job": job_id, "supernet": supernet, "constraints": req["constraints"]})

    def progress(gen, total, best_acc):
        now = time.monotonic()
        if gen < total and now - state["last"] < 0.05:
            return
        state["last"] = now
        with db.session() as s:
            ok = job_repo.progress(s, job_id, token, gen, total, {"predicted_accuracy": float(best_acc)})
        if not ok:
            state["cancel"] = True

    t0 = time.monotonic()
    try:
        r = eng.search(eff, req["constraints"], req.get("accuracy_floor"), opts["population"], opts["generations"],
                       opts["seed"], progress=progress, should_cancel=lambda: state["cancel"],
                       top_k=int(opts.get("verify_top_k") or 1))
    except SearchCancelled:
        with db.session() as s:
            done = job_repo.finish(s, job_id, token, "cancelled",
                                   error={"code": "cancelled", "message": "cancelled by request"})
        log.info("search cancelled" if done else "search superseded", extra={"job": job_id})
        return "cancelled" if done else "superseded"
    except InfeasibleError as e:
        err = infeasible(eng.minima(eff), req["constraints"], e)
        with db.session() as s:
            job_repo.finish(s, job_id, token, "failed", progress=1.0, error=err.body()["error"])
        return "failed"
    except Exception as e:
        from workers.tasks import TRANSIENT
        if isinstance(e, TRANSIENT):
            with db.session() as s:   # give the lease back so the retry can claim it
                job_repo.release(s, job_id, token)
            raise
        log.exception("search failed", extra={"job": job_id})
        with db.session() as s:
            job_repo.finish(s, job_id, token, "failed", error={"code": "search_error", "message": str(e)[:500]})
        return "failed"
    if finish is not None:
        return finish(r)
    return _save(db, job_id, token, supernet, supernet_id, opts, r, t0, eng)


def _save(db, job_id: str, token: str, supernet: str, supernet_id: int, opts: dict, r, t0: float, eng=None) -> str:
    cfg = r.config
    metrics = {k: getattr(r, k) for k in METRICS}
    sid = cfg.content_id()
    result = subnet_result(sid, supernet, cfg.to_dict(), r.predicted_acc, metrics)
    if eng is not None:   # BN statistics + measured accuracy, stored before the job succeeds
        result.update(calibration.for_search(db, eng, supernet_id, sid, cfg, metrics))
    with db.session() as s:
        subnet_repo.get_or_create(s, sid, supernet_id, cfg.to_dict(),
                                  {k: int(metrics[k]) for k in ("macs", "params", "peak_memory_bytes")})
        done = job_repo.finish(s, job_id, token, "succeeded", subnet_id=sid, result=result, progress=1.0,
                               generation=opts["generations"])
        if not done:
            s.rollback()
            return "superseded"
    log.info("search finished", extra={"job": job_id, "subnet": sid, "seconds": round(time.monotonic() - t0, 3),
                                       "accuracy": r.predicted_acc, "latency_ms": r.latency_ms})
    return "succeeded"


def _entries(db, table_id: int):
    with db.session() as s:
        return device_repo.load_entries(s, table_id)


def compute_front(db, store, settings, device_id: int, table_id: int, supernet: str) -> str:
    eng = store.get(supernet)
    with db.session() as s:
        sn = supernet_repo.get_by_name(s, supernet)
        if device_repo.front_for(s, sn.id, table_id, eng.version) is not None:
            return "exists"
        sn_id = sn.id
    if not eng.search_ready:
        return "no-predictor"
    eff = eng.efficiency(table_id, lambda: _entries(db, table_id))
    t0 = time.monotonic()
    points = eng.pareto(eff, settings.pareto_points, settings.pareto_population, settings.pareto_generations,
                        refine=settings.pareto_refine_budgets, refine_population=settings.pareto_refine_population,
                        refine_generations=settings.pareto_refine_generations)
    try:
        with db.session() as s:
            if device_repo.delete_stale_front(s, sn_id, table_id, eng.version):
                log.info("stale pareto front replaced", extra={"table_id": table_id, "version": eng.version})
            device_repo.save_front(s, sn_id, eng.version, device_id, table_id, points)
    except IntegrityError:
        return "exists"
    log.info("pareto front stored", extra={"device_id": device_id, "table_id": table_id, "points": len(points),
                                           "seconds": round(time.monotonic() - t0, 2)})
    return "stored"


def profile_host(db, store, settings, device_name: str, supernet: str, repeats: int | None = None,
                 check: int = 0) -> str:
    """Measure this host's latency table with ofa_core.profiler and register/update it as a device (with `check`,
    the table's end-to-end agreement on that many random sub-networks is stored in its provenance)."""
    from service.devices import service as device_service
    from service.engine.profile import profile_table
    eng = store.get(supernet)
    table, prov = profile_table(eng.spec, repeats=repeats, check=check, supernet=eng.supernet)
    with db.session() as s:
        d = device_repo.get_by_name(s, device_name)
        if d is None:
            d, t = device_service.create_device(s, store, device_name, supernet, "this host's CPU, measured by the profiler",
                                                table, kind="profiled", source="profiled", provenance=prov)
        else:
            t = device_service.add_version(s, d, table, "profiled", prov)
        ids = (d.id, t.id)
    compute_front(db, store, settings, ids[0], ids[1], supernet)
    return "profiled"
