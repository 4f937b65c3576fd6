"""OpenAPI documentation shared by the routers: the one error body (see `service.errors`) with examples."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error: ``{"error": {"code", "message", ...details such as field, key, line, minima}}``."""
    error: ErrorDetail


_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: ("no or a wrong API key", {"code": "unauthorized",
                                    "message": "a valid API key is required (header X-API-Key or Authorization: Bearer)"}),
    403: ("the API key may not do this", {"code": "forbidden", "job": "6f1c...",
                                          "message": "only the API key that created this job may cancel it"}),
    404: ("unknown name or id", {"code": "device_not_found", "message": "unknown device 'ghost'", "device": "ghost"}),
    409: ("conflict with the current state", {"code": "device_exists", "device": "note10",
                                              "message": "device 'note10' already exists; use PUT /devices/note10 "
                                                         "for a new table version"}),
    413: ("upload too large", {"code": "payload_too_large", "size": 3000000, "limit": 2097152,
                               "message": "upload of 3000000 bytes exceeds the limit of 2097152 bytes"}),
    416: ("byte range outside the file", {"code": "range_not_satisfiable", "size": 1000,
                                          "message": "requested range not satisfiable; size is 1000"}),
    422: ("invalid input; names the field (or the table key / line)",
           {"code": "validation_error", "field": "constraints.latency_ms",
            "message": "constraints.latency_ms: Input should be a valid number"}),
    405: ("method not allowed; the Allow header lists the allowed ones", {"code": "http_error",
                                                                          "message": "Method Not Allowed"}),
    429: ("too many requests; retry after the Retry-After header's seconds", {
        "code": "rate_limited", "limit": 60, "window_s": 60, "retry_after": 12,
        "message": "at most 60 searches per 60 s for this key or client address; retry in 12 s"}),
    503: ("a dependency is unavailable; nothing was changed", {"code": "broker_unavailable",
                                                                "message": "the task broker is unreachable; nothing "
                                                                           "was queued (OperationalError)"}),
}


def errors(*codes: int, **examples: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these status codes; `e422={...}` etc. replace the default example."""
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        description, example = _ERRORS[c]
        out[c] = {"model": ErrorOut, "description": description,
                  "content": {"application/json": {"example": {"error": examples.get(f"e{c}", example)}}}}
    return out


def example(value: Any, description: str = "OK", media_type: str = "application/json") -> dict[str, Any]:
    """A success response documented by an example (for endpoints without a response model)."""
    return {"description": description, "content": {media_type: {"example": value}}}


# -- offline docs and the API-key security scheme ------------------------------------------------------
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "an API key from `ofa create-api-key` (stored hashed)"},
    "BearerToken": {"type": "http", "scheme": "bearer", "description": "the same API key as `Authorization: Bearer`"},
}
DOCS_STATIC = "/static/docs"


REQUIRED_KEY = ("require_api_key", "required_caller")   # service.auth.service dependencies
OPTIONAL_KEY = ("optional_caller",)


def _key_use(dependant) -> str | None:
    """'required' / 'optional' when an endpoint (or one of its dependencies) takes the API key."""
    found = None
    for d in dependant.dependencies:
        name = getattr(d.call, "__name__", "") if getattr(d.call, "__module__", "") == "service.auth.service" else ""
        use = "required" if name in REQUIRED_KEY else "optional" if name in OPTIONAL_KEY else _key_use(d)
        if use == "required":
            return use
        found = found or use
    return found


def _api_routes(routes):
    """Every APIRoute, also inside included routers (which newer FastAPI keeps as nested route objects)."""
    from fastapi.routing import APIRoute
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        inner = getattr(getattr(r, "original_router", None), "routes", None) or getattr(r, "routes", None)
        if inner and not isinstance(r, APIRoute):
            yield from _api_routes(inner)


PATH_EXAMPLES = {"name": "host-cpu", "device": "host-cpu"}   # the device every fresh service has


def _parameter_examples(doc: dict[str, Any]) -> None:
    """Path parameters get examples that work on a fresh service ("Try it out" fills them in): the host's
    device, the default supernet; ids come from earlier answers (`Location`, `result.subnet_id`)."""
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p.get("in") == "path" and "example" not in p and "examples" not in p:
                    if path.startswith("/supernets/"):
                        p["example"] = "ofa_mbv3_cifar10"
                    elif p["name"] in PATH_EXAMPLES:
                        p["example"] = PATH_EXAMPLES[p["name"]]


def openapi_schema(app) -> dict[str, Any]:
    """The app's OpenAPI document with the API key declared as a security scheme on every endpoint that
    requires it (found from the endpoints' dependencies, so a new write endpoint is covered by itself)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    _parameter_examples(doc)
    from service.devices import examples   # complete table examples for the uploads (built once, referenced)
    settings = getattr(app.state, "settings", None)
    examples.install(doc, getattr(settings, "default_supernet", "ofa_mbv3_cifar10"))
    uses = {r.unique_id: _key_use(r.dependant) for r in _api_routes(app.routes)}
    for ops in doc["paths"].values():
        for op in ops.values():
            use = uses.get(op.get("operationId"))
            if use:   # an optional key: the empty requirement {} lets a call go without one
                op["security"] = [{"ApiKeyHeader": []}, {"BearerToken": []}] + ([{}] if use == "optional" else [])
    app.openapi_schema = doc
    return doc


def docs_assets_dir() -> str:
    """Swagger UI and ReDoc bundles shipped by the `fastapi-offline` package (nothing from a CDN)."""
    import importlib.resources
    return str(importlib.resources.files("fastapi_offline") / "static")


REDOC_JS = "/static/redoc/redoc.standalone.js"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def _offline_redoc() -> bytes:
    """The shipped ReDoc bundle with its one remote image (the side menu's vendor logo) pointed at our favicon,
    so that /redoc makes no request outside this service."""
    import os
    with open(os.path.join(docs_assets_dir(), "redoc.standalone.js"), "rb") as f:
        return f.read().replace(REDOC_CDN_LOGO, f"{DOCS_STATIC}/favicon.png".encode())


def install_docs(app) -> None:
    """`/docs` (Swagger UI, with "Authorize" for the API key) and `/redoc` served from shipped assets."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import Response
    from fastapi.staticfiles import StaticFiles
    app.openapi = lambda: openapi_schema(app)
    redoc_js = _offline_redoc()

    @app.get(REDOC_JS, include_in_schema=False)
    def redoc_bundle():
        return Response(redoc_js, media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    app.mount(DOCS_STATIC, StaticFiles(directory=docs_assets_dir()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
                                   swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True,
                                                          "validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=REDOC_JS,
                              redoc_favicon_url=f"{DOCS_STATIC}/favicon.png", with_google_fonts=False)
