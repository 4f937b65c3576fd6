"""FastAPI application factory."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.db.session import Database
from service.errors import install_error_handlers
from service.logging import configure_logging
from service.metrics import LATENCY, REQUESTS
from service.settings import Settings, get_settings
from service.supernets.store import SupernetStore

log = logging.getLogger("ofa.api")

DESCRIPTION = """Specialize Once-for-All sub-networks for devices: give a device's latency table and constraints,
get the most accurate sub-network (predicted) and download its weights. Writes need an API key
(`X-API-Key` header, created with `ofa create-api-key`)."""


class ObserveMiddleware:
    """Request metrics and one structured log line per request, as plain ASGI (no body buffering, no extra
    task per request, so streamed downloads and small requests pay nothing for it)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            dt = time.perf_counter() - t0
            REQUESTS.labels(scope["method"], route, str(status[0])).inc()
            LATENCY.labels(scope["method"], route).observe(dt)
            if route not in ("/metrics", "/healthz"):
                log.info("request", extra={"method": scope["method"], "path": scope["path"], "route": route,
                                           "status": status[0], "ms": round(dt * 1000, 2)})


def create_app(settings: Settings | None = None, store: SupernetStore | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not app.state.store.loaded:
            app.state.store.load()
        try:
            app.state.store.sync_db(app.state.db)
        except Exception:
            log.exception("could not record supernets (is the database migrated? run `ofa migrate`)")
        from service.web import warm
        await warm(app)    # the first navigation pays no first-request costs (first paint <= 200 ms)
        yield
        app.state.db.dispose()

    app = FastAPI(title="OFA specialization service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)   # served from shipped assets by install_docs
    app.state.settings = settings
    app.state.db = Database(settings.database_url)
    app.state.store = store or SupernetStore(settings)
    from workers.celery_app import make_celery
    app.state.celery = make_celery(settings)
    from service.ratelimit import RateLimiter
    app.state.rate_limiter = RateLimiter(settings)
    app.state.specialize_gate = threading.BoundedSemaphore(max(1, settings.specialize_concurrency))
    install_error_handlers(app)

    from service.validation import InputGuard
    app.add_middleware(InputGuard)
    app.add_middleware(ObserveMiddleware)

    from service.devices.endpoints import router as devices
    from service.health import router as health
    from service.jobs.endpoints import router as jobs
    from service.predictors.endpoints import router as predictors
    from service.subnets.endpoints import router as subnets
    from service.supernets.endpoints import router as supernets
    from service.openapi import install_docs
    from service.web import install_web
    for r in (health, jobs, devices, subnets, supernets, predictors):
        app.include_router(r)
    install_docs(app)
    install_web(app)
    return app


def app_factory() -> FastAPI:  # uvicorn --factory service.app:app_factory
    return create_app()
