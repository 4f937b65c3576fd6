from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.openapi import example

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", responses={200: example({"status": "ok"})})
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


def _check_db(app) -> str | None:
    try:
        with app.state.db.engine.connect() as c:
            c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _check_broker(app) -> str | None:
    try:
        with app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=app.state.settings.broker_publish_timeout_s)
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
    db_err = await run_in_threadpool(_check_db, app)
    broker_err = await run_in_threadpool(_check_broker, app)
    store = app.state.store
    default = app.state.settings.default_supernet
    eng = store.engines.get(default)
    sn_err = None if eng is not None and eng.search_ready else f"default supernet {default!r} not ready (predictor missing)"
    checks = {"database": db_err or "ok", "broker": broker_err or "ok", "supernet": sn_err or "ok",
              "supernets": {n: {"weights": e.has_weights, "predictor": e.search_ready} for n, e in store.engines.items()}}
    ok = not (db_err or broker_err or sn_err)
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
