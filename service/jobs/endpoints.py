from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.db.session import SessionDep
from service.deps import CeleryDep, SettingsDep, StoreDep
from service.errors import JobNotFound
from service.metrics import JOBS_CREATED, SPECIALIZE_ANSWERS
from service.openapi import errors
from . import service
from .schemas import JobOut, SpecializeRequest

router = APIRouter(tags=["jobs"])
TERMINAL = ("succeeded", "failed", "cancelled")


@router.post("/specialize", response_model=JobOut, status_code=202, summary="Specialize a sub-network for a device",
             responses={200: {"model": JobOut, "description": "answered at once (cache or Pareto front)"},
                        202: {"model": JobOut, "description": "queued; follow Location"},
                        **errors(404, 422, 503, e422={
                            "code": "infeasible_constraints", "violated": ["accuracy_floor"], "best_accuracy": 0.7628,
                            "message": "no sub-network within the constraints reaches accuracy_floor 0.9; best "
                                       "achievable predicted accuracy: 0.7628",
                            "minima": {"latency_ms": 0.633, "macs": 4100000, "params": 360000,
                                       "peak_memory_bytes": 98304}})})
def specialize(body: SpecializeRequest, s: SessionDep, store: StoreDep, settings: SettingsDep, celery: CeleryDep):
    """The most accurate sub-network within the constraints on a device or, with `accuracy_floor`, the fastest one
    whose predicted accuracy reaches the floor. 422 states the smallest achievable value of every metric (or the
    best achievable accuracy for an unreachable floor)."""
    job, answered = service.specialize(s, store, settings, celery, body)
    out = service.job_out(job)
    if answered:
        SPECIALIZE_ANSWERS.labels(job.source if job.source == "pareto" else "cache").inc()
        return JSONResponse(out.model_dump(mode="json"), status_code=200, headers={"Location": f"/jobs/{job.id}"})
    SPECIALIZE_ANSWERS.labels("queued").inc()
    JOBS_CREATED.inc()
    return JSONResponse(out.model_dump(mode="json"), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job", responses=errors(404))
def get_job(job_id: str, s: SessionDep):
    """Status, progress, the best so far while running, and the result or the error."""
    return service.job_out(service.get_job(s, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, status_code=202, summary="Cancel a job",
               responses={200: {"model": JobOut, "description": "already finished or cancelled"}, **errors(404)})
def cancel_job(job_id: str, s: SessionDep):
    """Cancel: a queued job at once, a running one at the next generation. Finished jobs are left as they are."""
    job = service.cancel(s, job_id)
    return JSONResponse(service.job_out(job).model_dump(mode="json"),
                        status_code=200 if job.status in TERMINAL else 202)


def _snapshot(db, job_id: str) -> dict | None:
    with db.session() as s:
        job = service.repo.get(s, job_id)
        return None if job is None else service.job_out(job).model_dump(mode="json")


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/jobs/{job_id}/events", summary="Stream a job's progress (SSE)", responses={
    200: {"content": {"text/event-stream": {"example": 'event: state\ndata: {"id": "6f1c...", "status": "queued"}\n\n'
                                                       'event: progress\ndata: {"generation": 40, "progress": 0.4}\n\n'
                                                       'event: result\ndata: {"status": "succeeded", "result": {}}\n\n'}}},
    **errors(404)})
async def job_events(job_id: str, request: Request, settings: SettingsDep):
    """Server-sent events: `state` (current state first), `progress` per generation seen, then `result`
    (or `failed` / `cancelled`) and the stream ends. Progress is read from the database, so it works on
    the embedded default as well as with Redis."""
    db = request.app.state.db
    first = await run_in_threadpool(_snapshot, db, job_id)
    if first is None:
        raise JobNotFound(job_id)

    async def stream():
        snap = first
        yield _sse("state", snap)
        last = (snap["status"], snap["generation"])
        idle = 0.0
        while snap["status"] not in TERMINAL:
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.sse_poll_s)
            idle += settings.sse_poll_s
            snap = await run_in_threadpool(_snapshot, db, job_id)
            if snap is None:
                return
            cur = (snap["status"], snap["generation"])
            if cur != last and snap["status"] not in TERMINAL:
                yield _sse("progress", {"id": snap["id"], "status": snap["status"], "generation": snap["generation"],
                                        "generations": snap["generations"], "progress": snap["progress"],
                                        "best_so_far": snap["best_so_far"]})
                last, idle = cur, 0.0
            elif idle >= 15:
                yield b": keep-alive\n\n"
                idle = 0.0
        yield _sse({"succeeded": "result", "failed": "failed", "cancelled": "cancelled"}[snap["status"]], snap)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
