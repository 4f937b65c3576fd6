from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.openapi import example

router = APIRouter(tags=["health"])


CHECK_TIMEOUT_S = 1.0
# readiness checks run on their own small pool with a deadline: a hung database or broker (or a request
# threadpool full of requests waiting on one) can never make /readyz or /healthz wait
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ofa-health")


@router.get("/healthz", summary="Liveness", responses={200: example({"status": "ok"})})
async def healthz():
    """Liveness: the process answers (on the event loop itself: no thread, database or broker involved)."""
    return {"status": "ok"}


async def _bounded(fn, app) -> str | None:
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(_checks, fn, app), CHECK_TIMEOUT_S)
    except (asyncio.TimeoutError, TimeoutError):
        return f"TimeoutError: no answer within {CHECK_TIMEOUT_S:g} s"


def _check_db(app) -> str | None:
    try:
        with app.state.db.engine.connect() as c:
            c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _check_broker(app) -> str | None:
    url = app.state.settings.broker_url
    t = min(app.state.settings.broker_publish_timeout_s, CHECK_TIMEOUT_S)
    try:
        if url.startswith(("redis://", "rediss://")):     # a real round trip: a hung broker accepts connections
            import redis
            redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t).ping()
            return None
        with app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=t)
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:200]}"


@router.get("/readyz", summary="Readiness", responses={
    200: example({"status": "ready", "checks": {"database": "ok", "broker": "ok", "supernet": "ok",
                                                "supernets": {"ofa_mbv3_cifar10": {"weights": True, "predictor": True}}}}),
    503: example({"status": "not_ready", "checks": {"database": "ok", "broker": "OperationalError: connection refused",
                                                    "supernet": "ok", "supernets": {}}}, "not ready")})
async def readyz(request: Request):
    """Readiness: database migrated and reachable, broker reachable, default supernet loaded."""
    app = request.app
    db_err, broker_err = await asyncio.gather(_bounded(_check_db, app), _bounded(_check_broker, app))
    store = app.state.store
    default = app.state.settings.default_supernet
    eng = store.engines.get(default)
    sn_err = None if eng is not None and eng.search_ready else f"default supernet {default!r} not ready (predictor missing)"
    checks = {"database": db_err or "ok", "broker": broker_err or "ok", "supernet": sn_err or "ok",
              "supernets": {n: {"weights": e.has_weights, "predictor": e.search_ready} for n, e in store.engines.items()}}
    ok = not (db_err or broker_err or sn_err)
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
