from __future__ import annotations

import asyncio
import json

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.auth.service import CallerDep, KeyedCallerDep
from service.db.session import SessionDep
from service.deps import CeleryDep, SettingsDep, StoreDep
from service.errors import JobNotFound, ServiceUnavailable
from service.metrics import JOBS_CREATED, SPECIALIZE_ANSWERS
from service.openapi import errors
from . import service
from .schemas import JobOut, JobPage, SpecializeRequest

router = APIRouter(tags=["jobs"])
TERMINAL = ("succeeded", "failed", "cancelled")


@router.post("/specialize", response_model=JobOut, status_code=202, summary="Specialize a sub-network for a device",
             responses={200: {"model": JobOut, "description": "answered at once (cache or Pareto front)"},
                        202: {"model": JobOut, "description": "queued; follow Location"},
                        **errors(401, 404, 409, 422, 429, 503, e409={
                            "code": "verify_unavailable", "supernet": "my_supernet", "setting": "OFA_EVALUATION_DATA",
                            "message": "verify: supernet 'my_supernet' has no evaluation images configured to "
                                       "measure accuracy on; set OFA_EVALUATION_DATA='{\"my_supernet\": "
                                       "\"/path/to/images.npz\"}' (or send verify: false)"}, e422={
                            "code": "infeasible_constraints", "violated": ["accuracy_floor"], "best_accuracy": 0.7628,
                            "message": "no sub-network within the constraints reaches accuracy_floor 0.9; best "
                                       "achievable predicted accuracy: 0.7628",
                            "minima": {"latency_ms": 0.633, "macs": 4100000, "params": 360000,
                                       "peak_memory_bytes": 98304}})})
def specialize(body: SpecializeRequest, request: Request, s: SessionDep, store: StoreDep, settings: SettingsDep,
               celery: CeleryDep, caller: CallerDep):
    """The most accurate sub-network within the constraints on a device or, with `accuracy_floor`, the fastest one
    whose predicted accuracy reaches the floor. 422 states the smallest achievable value of every metric (or the
    best achievable accuracy for an unreachable floor).

    With `verify: true` the answer is always a worker's (never the Pareto front's): the search's best
    `options.verify_top_k` candidates are recalibrated, scored and, on the device profiled on this host, timed end
    to end; the best measured one within the budget is returned with `measured_latency_ms` and `verification`
    (409 `verify_unavailable` when the supernet has no calibration / evaluation images).

    Compute policy (`OFA_SEARCH_AUTH`): by default anonymous callers may search with the default options only
    (401 otherwise); `all` needs a key for every search. At most `OFA_RATE_LIMIT_SEARCHES` requests per
    `OFA_RATE_LIMIT_WINDOW_S` per key, or per client address without one (429 with Retry-After)."""
    service.check_search_policy(settings, body, caller.key_id is not None)
    request.app.state.rate_limiter.hit(caller.identity)
    gate = request.app.state.specialize_gate     # a few at a time: a burst waits here without holding the GIL
    if not gate.acquire(timeout=30):
        raise ServiceUnavailable("too many concurrent searches being prepared; retry shortly")
    try:
        job, answered = service.specialize(s, store, settings, celery, body, owner_key_id=caller.key_id)
    finally:
        gate.release()
    out = service.job_out(job)
    if answered:
        SPECIALIZE_ANSWERS.labels(job.source if job.source == "pareto" else "cache").inc()
        return JSONResponse(out.model_dump(mode="json"), status_code=200, headers={"Location": f"/jobs/{job.id}"})
    SPECIALIZE_ANSWERS.labels("queued").inc()
    JOBS_CREATED.inc()
    return JSONResponse(out.model_dump(mode="json"), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs", response_model=JobPage, summary="List jobs", responses=errors(404, 422))
def list_jobs(s: SessionDep, limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0),
              status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              device: str | None = Query(None, description="only this device's jobs")):
    """Jobs, newest first; filtered by status and device; paginated."""
    items, total = service.list_jobs(s, offset, limit, status, device)
    return JobPage(items=[service.job_out(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job", responses=errors(404))
def get_job(job_id: str, s: SessionDep):
    """Status, progress, the best so far while running, and the result or the error."""
    return service.job_out(service.get_job(s, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, status_code=202, summary="Cancel a job",
               responses={200: {"model": JobOut, "description": "already finished or cancelled"},
                          **errors(401, 403, 404)})
def cancel_job(job_id: str, s: SessionDep, settings: SettingsDep, caller: KeyedCallerDep):
    """Cancel (API key required; only the key that created the job, any key for a job created without one): a
    queued job, or one whose worker died, at once; a running one at its next generation. Finished jobs are left
    as they are."""
    job = service.cancel(s, settings, job_id, caller.key_id)
    return JSONResponse(service.job_out(job).model_dump(mode="json"),
                        status_code=200 if job.status in TERMINAL else 202)


def _snapshot(db, job_id: str, after_event: int = 0) -> tuple[dict | None, list[dict]]:
    """The job's current state and its progress records newer than `after_event`."""
    with db.session() as s:
        job = service.repo.get(s, job_id)
        if job is None:
            return None, []
        events = [_event(job_id, e) for e in service.repo.events_after(s, job_id, after_event)]
        return service.job_out(job).model_dump(mode="json"), events


def _event(job_id: str, e) -> dict:
    """One progress record as an SSE `progress` payload: phase "search" (a generation) or "verify" (verified
    answers: `candidate` i of `candidates` measured, `step` start / accuracy / latency; `seq` orders them)."""
    best = e.best if isinstance(e.best, dict) else None
    out = {"event_id": e.id, "id": job_id, "status": "running", "generation": e.generation,
           "generations": e.generations, "progress": e.generation / max(e.generations, 1), "best_so_far": e.best,
           "phase": "search"}
    if best is not None and best.get("phase") == "verify":
        k = int(best.get("candidates") or 1)
        out.update(phase="verify", step=best.get("step"), seq=int(best.get("seq") or 0),
                   candidate=int(best.get("candidate") or 0), candidates=k,
                   best_so_far={x: v for x, v in best.items() if x != "list"})
    return out


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/jobs/{job_id}/events", summary="Stream a job's progress (SSE)", responses={
    200: {"content": {"text/event-stream": {"example": 'event: state\ndata: {"id": "6f1c...", "status": "queued"}\n\n'
                                                       'event: progress\ndata: {"generation": 40, "progress": 0.4}\n\n'
                                                       'event: result\ndata: {"status": "succeeded", "result": {}}\n\n'}}},
    **errors(404)})
async def job_events(job_id: str, request: Request, settings: SettingsDep):
    """Server-sent events: `state` (current state first), then `progress` for every generation the worker
    recorded (at most one per 50 ms, the first and the last always; `phase` "search"), for a verified answer
    then one per verify step (`phase` "verify", `candidate` i of `candidates`), then `result` (or `failed` /
    `cancelled`) and the stream ends. Progress records live in the database (`job_events`), so a slow or late
    client still gets all of them in order, on the embedded default as with PostgreSQL + Redis."""
    db = request.app.state.db
    first = await run_in_threadpool(_snapshot, db, job_id)
    if first[0] is None:
        raise JobNotFound(job_id)

    async def stream():
        snap, events = first
        yield _sse("state", snap)
        last_event, last_gen, idle = 0, (-1, -1), 0.0
        while True:
            for ev in events:                      # every recorded generation (then verify step), in order
                last_event = ev.pop("event_id")
                key = (ev["generation"], ev.get("seq", -1) if ev["phase"] == "verify" else -1)
                if key > last_gen:
                    last_gen = key
                    yield _sse("progress", ev)
                    idle = 0.0
            if snap["status"] in TERMINAL:
                break
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.sse_poll_s)
            idle += settings.sse_poll_s
            if idle >= 15:
                yield b": keep-alive\n\n"
                idle = 0.0
            snap, events = await run_in_threadpool(_snapshot, db, job_id, last_event)
            if snap is None:
                return
        yield _sse({"succeeded": "result", "failed": "failed", "cancelled": "cancelled"}[snap["status"]], snap)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
