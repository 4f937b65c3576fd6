"""Verified answers (`"verify": true`): after the search, its best k distinct candidates are BN-recalibrated and
scored on the supernet's evaluation images (service/calibration: stored once per sub-network, so their downloads
are served calibrated) and, on a device profiled on this host, timed end to end with the profiler's protocol
(ofa_core.profiler.time_subnets: interleaved rounds, the fastest run, the table's thread count). The answer is the
best measured accuracy among the candidates that meet every constraint, latency as measured (elsewhere as the
table predicts). None meets the budget as measured: the job fails (`verified_budget_not_met`), naming them all.

Durable across a worker kill: the candidates are written into the job (`best`, phase "verify") before the first
is measured, so a redelivered job resumes from them without searching again; each candidate's calibration row is
unique per (sub-network, supernet version, calibration set) and reused, and the job is finished once.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ofa_core.search import METRICS
from ofa_core.spec import SubnetConfig
from service.calibration import service as calibration
from service.jobs import repository as job_repo
from service.jobs.service import subnet_result
from service.subnets import repository as subnet_repo

log = logging.getLogger("ofa.worker")
TIMING_ROUNDS = 40          # the profiler's default rounds (ofa profile-host / --check)
PHASE = "verify"


def stored_candidates(db, job_id: str) -> list[dict[str, Any]] | None:
    """The candidates a previous delivery of this job stored before it stopped (None: search first)."""
    with db.session() as s:
        job = job_repo.get(s, job_id)
        best = job.best if job is not None else None
    if isinstance(best, dict) and best.get("phase") == PHASE and best.get("list"):
        return [dict(c) for c in best["list"]]
    return None


def candidates_of(r) -> list[dict[str, Any]]:
    """A search result's distinct candidates (best first) as stored rows."""
    out = []
    for c in (r.candidates or [r]):
        m = {k: getattr(c, k) for k in METRICS}
        out.append({"subnet_id": c.config.content_id(), "config": c.config.to_dict(),
                    "predicted_accuracy": float(c.predicted_acc),
                    "predicted_latency_ms": None if m["latency_ms"] is None else float(m["latency_ms"]),
                    **{k: None if m[k] is None else int(m[k]) for k in ("macs", "params", "peak_memory_bytes")}})
    return out


def _record(db, job_id: str, token: str, req: dict, cands: list, seq: int, step: str, **info: Any) -> bool:
    """A progress event of the verify phase (and the candidates so far, durably); False if cancelled/taken over."""
    gens = int(req["options"]["generations"])
    best = {"phase": PHASE, "seq": seq, "step": step, "candidates": len(cands), **info, "list": cands,
            "predicted_accuracy": cands[0]["predicted_accuracy"]}
    with db.session() as s:
        return job_repo.progress(s, job_id, token, gens, gens, best)


def host_timing(db, job_id: str) -> dict[str, Any] | None:
    """How to time candidates when the job's device is this host (kind "profiled", a batch-1 table profiled on
    this CPU model): the table's thread count and statistic. None: latency stays the table's prediction."""
    from ofa_core.profiler import host_environment
    with db.session() as s:
        job = job_repo.get(s, job_id)
        kind, batch, prov = job.device.kind, int(job.table.batch_size), dict(job.table.provenance or {})
    env = prov.get("environment") or {}
    cpu = env.get("cpu_model")
    if kind != "profiled" or batch != 1 or (cpu and cpu != host_environment(1)["cpu_model"]):
        return None
    return {"threads": int(env.get("threads") or 1), "statistic": env.get("statistic") or "min",
            "rounds": TIMING_ROUNDS}


def _stopped(db, job_id: str, token: str, state: dict) -> str | None:
    if not state.get("cancel"):
        return None
    if state.get("why") == "lost":
        return "superseded"
    with db.session() as s:
        done = job_repo.finish(s, job_id, token, "cancelled", error={"code": "cancelled",
                                                                     "message": "cancelled by request"})
    return "cancelled" if done else "superseded"


def run(db, eng, settings, job_id: str, token: str, supernet_id: int, req: dict, cands: list, state: dict) -> str:
    """Measure the stored candidates, choose, finish the job. Transient errors give the lease back and raise
    (the task retries); others fail the job with the reason."""
    from workers.tasks import TRANSIENT
    try:
        return _verify(db, eng, job_id, token, supernet_id, req, cands, state)
    except TRANSIENT:
        with db.session() as s:
            job_repo.release(s, job_id, token)
        raise
    except Exception as e:
        log.exception("verification failed", extra={"job": job_id})
        with db.session() as s:
            job_repo.finish(s, job_id, token, "failed", error={"code": "verify_error", "message": str(e)[:500]})
        return "failed"


def _verify(db, eng, job_id, token, supernet_id, req, cands, state) -> str:
    t0 = time.monotonic()
    k = len(cands)
    if not _record(db, job_id, token, req, cands, 0, "start"):
        state["cancel"] = True
    for i, c in enumerate(cands, 1):
        stop = _stopped(db, job_id, token, state)
        if stop:
            return stop
        cfg = SubnetConfig.from_dict(eng.spec, c["config"])
        with db.session() as s:
            subnet_repo.get_or_create(s, c["subnet_id"], supernet_id, cfg.to_dict(),
                                      {m: int(c[m]) for m in ("macs", "params", "peak_memory_bytes")})
        f = calibration.calibrate(db, eng, c["subnet_id"], cfg)      # stored once; reused on redelivery
        c.update(measured_accuracy=f["measured_accuracy"], measured_images=f["measured_images"],
                 bn_calibrated=f["bn_calibrated"])
        if not _record(db, job_id, token, req, cands, i, "accuracy", candidate=i, subnet_id=c["subnet_id"],
                       measured_accuracy=c["measured_accuracy"]):
            state["cancel"] = True
    stop = _stopped(db, job_id, token, state)
    if stop:
        return stop
    timing = host_timing(db, job_id)
    _measure_latency(eng, cands, timing)
    _record(db, job_id, token, req, cands, k + 1, "latency", candidate=k,
            latency="measured" if timing else "predicted")
    return _finish(db, eng, job_id, token, req, cands, timing, time.monotonic() - t0)


def _measure_latency(eng, cands: list, timing: dict | None) -> None:
    if timing is None:
        for c in cands:
            c["measured_latency_ms"] = None
        return
    from ofa_core.profiler import time_subnets
    cfgs = [SubnetConfig.from_dict(eng.spec, c["config"]) for c in cands]
    ms = time_subnets(eng.supernet, cfgs, repeats=timing["rounds"], threads=timing["threads"],
                      statistic=timing["statistic"], seed=0)
    for c, v in zip(cands, ms):
        c["measured_latency_ms"] = float(v)


def choose(cands: list, constraints: dict[str, float], measured: bool) -> tuple[dict | None, str]:
    """Mark each candidate's `met_budget` (latency as measured when `measured`) and pick the best measured
    accuracy among those meeting every constraint (ties: predicted accuracy, then the faster). -> (chosen, why)."""
    for c in cands:
        got = {m: c[f"predicted_{m}" if m == "latency_ms" else m] for m in METRICS}
        if measured:
            got["latency_ms"] = c["measured_latency_ms"]
        c["met_budget"] = all(got.get(m) is not None and got[m] <= v for m, v in constraints.items())
    ok = [c for c in cands if c["met_budget"] and c.get("measured_accuracy") is not None]
    if not ok:
        return None, ""
    best = max(ok, key=lambda c: (c["measured_accuracy"], c["predicted_accuracy"],
                                  -(c["measured_latency_ms"] or c["predicted_latency_ms"] or 0.0)))
    how = "as measured on this host" if measured else "as the device's latency table predicts"
    return best, (f"best measured accuracy ({best['measured_accuracy']:.4f} on {best['measured_images']} images) "
                  f"among the {len(ok)} of {len(cands)} candidates meeting the constraints (latency {how})")


def _finish(db, eng, job_id, token, req, cands, timing, seconds) -> str:
    constraints = req["constraints"]
    chosen, why = choose(cands, constraints, timing is not None)
    block = {"candidates": [{k: v for k, v in c.items() if k != "config"} for c in cands],
             "chosen": chosen["subnet_id"] if chosen else None, "reason": why,
             "latency": ("measured end to end on this host: profiler protocol, "
                         f"{timing['rounds']} interleaved rounds, {timing['statistic']} of the runs, "
                         f"{timing['threads']} thread(s), batch 1") if timing else
                        "predicted by the device's latency table (the device is not this host)",
             "constraints": dict(constraints), "seconds": round(seconds, 3)}
    if chosen is None and not any(c.get("measured_accuracy") is not None for c in cands):
        with db.session() as s:
            job_repo.finish(s, job_id, token, "failed", progress=1.0, error={
                "code": "verify_error", "verification": block,
                "message": f"none of the {len(cands)} candidates could be measured (BN recalibration / evaluation "
                           "failed; see GET /subnets/{id} bn_calibration.error)"})
        return "failed"
    if chosen is None:
        budget = constraints.get("latency_ms")
        lat = ", ".join(f"{c['subnet_id'][:12]}: {c['measured_latency_ms']:.3f} ms" for c in cands
                        if c.get("measured_latency_ms") is not None)
        msg = (f"none of the {len(cands)} candidates meets the constraints when measured"
               + (f" (latency budget {budget:g} ms; measured: {lat})" if budget is not None and lat else ""))
        with db.session() as s:
            job_repo.finish(s, job_id, token, "failed", progress=1.0, error={
                "code": "verified_budget_not_met", "message": msg, "verification": block})
        return "failed"
    metrics = {"latency_ms": chosen["predicted_latency_ms"],
               **{m: chosen[m] for m in ("macs", "params", "peak_memory_bytes")}}
    result = subnet_result(chosen["subnet_id"], req["supernet"], chosen["config"], chosen["predicted_accuracy"],
                           metrics)
    with db.session() as s:
        result.update(calibration.fields(eng, calibration.lookup(s, eng, chosen["subnet_id"])))
    result.update(measured_latency_ms=chosen["measured_latency_ms"], verification=block)
    with db.session() as s:
        done = job_repo.finish(s, job_id, token, "succeeded", subnet_id=chosen["subnet_id"], result=result,
                               progress=1.0, generation=int(req["options"]["generations"]))
    log.info("verified answer", extra={"job": job_id, "subnet": chosen["subnet_id"], "candidates": len(cands)})
    return "succeeded" if done else "superseded"
