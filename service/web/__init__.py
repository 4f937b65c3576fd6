"""The web dashboard: server-rendered pages at `/` and `/ui/...`, a small hand-written script and style sheet
shipped in `static/` (nothing from a CDN), inline SVG charts."""
from __future__ import annotations

import os

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def install_web(app) -> None:
    from fastapi.staticfiles import StaticFiles
    from .pages import router
    app.mount("/static/web", StaticFiles(directory=STATIC_DIR), name="web-static")
    app.include_router(router)
