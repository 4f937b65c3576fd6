"""The web dashboard: server-rendered pages at `/` and `/ui/...`, a small hand-written script and style sheet
shipped in `static/` (nothing from a CDN), inline SVG charts."""
from __future__ import annotations

import logging
import os

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def install_web(app) -> None:
    from fastapi.staticfiles import StaticFiles
    from .pages import router
    app.mount("/static/web", StaticFiles(directory=STATIC_DIR), name="web-static")
    app.include_router(router)


WARM_PATHS = ("/", "/ui/jobs", "/ui/specialize", "/ui/upload", "/static/web/app.js", "/static/docs/favicon.png")
log = logging.getLogger("ofa.web")


async def warm(app, timeout_s: float = 3.0) -> float:
    """Render each dashboard page (and a device page) once in-process at startup, so that the first person's
    first navigation does not pay the first request's costs (SQL statement compilation and the ORM's first
    loads, the worker thread and the database connection, the static files' first reads). Goes straight to the
    router (no access log, no metrics, no rate limit); a failure is logged and ignored. Returns seconds spent."""
    import asyncio
    import time
    import httpx

    from contextlib import AsyncExitStack

    async def inner(scope, receive, send):
        async with AsyncExitStack() as stack:   # what FastAPI's outer middleware puts in the scope
            scope.update({"app": app, "fastapi_middleware_astack": stack})
            await app.router(scope, receive, send)
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=inner), base_url="http://warm") as c:
            async def run():
                for path in WARM_PATHS:
                    r = await c.get(path)
                    if path == "/" and r.status_code == 200:
                        import re
                        m = re.search(r'href="(/ui/devices/[^"]+)"', r.text)
                        if m:
                            await c.get(m.group(1))
            await asyncio.wait_for(run(), timeout_s)
    except Exception as e:     # warming is an optimisation: never a reason not to start
        log.warning("dashboard warm-up failed: %s", str(e)[:200])
    return time.perf_counter() - t0
