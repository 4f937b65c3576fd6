"""The one error hierarchy of the service, rendered by one exception handler as ``{"error": {...}}``."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ofa.errors")


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class NotFound(ServiceError):
    status_code, code = 404, "not_found"


class DeviceNotFound(NotFound):
    code = "device_not_found"

    def __init__(self, name: str):
        super().__init__(f"unknown device {name!r}", device=name)


class SupernetNotFound(NotFound):
    code = "supernet_not_found"

    def __init__(self, name: str, known: list[str] | None = None):
        super().__init__(f"unknown supernet {name!r}", supernet=name, known=known or [])


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, job_id: str):
        super().__init__(f"unknown job {job_id!r}", job=job_id)


class SubnetNotFound(NotFound):
    code = "subnet_not_found"

    def __init__(self, subnet_id: str):
        super().__init__(f"unknown sub-network {subnet_id!r}", subnet=subnet_id)


class ValidationFailed(ServiceError):
    """422 naming the offending field."""
    status_code, code = 422, "validation_error"

    def __init__(self, field: str, message: str, **details: Any):
        super().__init__(f"{field}: {message}", field=field, **details)


class InfeasibleConstraints(ServiceError):
    """422: no sub-network meets the constraints; `minima` states the smallest achievable value of each."""
    status_code, code = 422, "infeasible_constraints"

    def __init__(self, message: str, minima: dict[str, float], **details: Any):
        super().__init__(message, minima=minima, **details)


class MalformedTable(ServiceError):
    """422 for a latency table / timings file that does not parse; names the key or line."""
    status_code, code = 422, "malformed_table"

    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        super().__init__(message, key=key, line=line)


class PayloadTooLarge(ServiceError):
    status_code, code = 413, "payload_too_large"

    def __init__(self, size: int, limit: int):
        super().__init__(f"upload of {size} bytes exceeds the limit of {limit} bytes", size=size, limit=limit)


class Unauthorized(ServiceError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str = "a valid API key is required (header X-API-Key or Authorization: Bearer)"):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code, code = 403, "forbidden"


class RateLimited(ServiceError):
    status_code, code = 429, "rate_limited"

    def __init__(self, limit: int, window_s: float, retry_after: float):
        wait = max(1, int(retry_after + 0.999))
        super().__init__(f"at most {limit} searches per {window_s:g} s for this key or client address; retry in "
                         f"{wait} s", limit=limit, window_s=window_s, retry_after=wait)
        self.headers = {"Retry-After": str(wait)}


class Conflict(ServiceError):
    status_code, code = 409, "conflict"


class WeightsMissing(Conflict):
    code = "weights_missing"

    def __init__(self, supernet: str, path: str | None, env: str | None):
        hint = f"configure OFA_WEIGHTS='{{\"{supernet}\": \"/path/to/weights\"}}'"
        if env:
            hint += f" or set {env}"
        super().__init__(f"supernet {supernet!r} has no weights loaded; expected weights file {path or '(none registered)'}; {hint}",
                         supernet=supernet, weights_file=path, env=env)


class DeviceExists(Conflict):
    code = "device_exists"

    def __init__(self, name: str):
        super().__init__(f"device {name!r} already exists; use PUT /devices/{name} for a new table version", device=name)


class JobFinished(Conflict):
    code = "job_finished"


class RangeNotSatisfiable(ServiceError):
    status_code, code = 416, "range_not_satisfiable"

    def __init__(self, size: int):
        super().__init__(f"requested range not satisfiable; size is {size}", size=size)
        self.headers = {"Content-Range": f"bytes */{size}"}


class ServiceUnavailable(ServiceError):
    """503, always with Retry-After."""
    status_code, code = 503, "service_unavailable"

    def __init__(self, message: str, **details: Any):
        super().__init__(message, **details)
        self.headers = {"Retry-After": "5"}


class BrokerUnavailable(ServiceUnavailable):
    code = "broker_unavailable"

    def __init__(self, reason: str):
        super().__init__(f"the task broker is unreachable; nothing was queued ({reason})")
        self.headers = {"Retry-After": "5"}


class NotReady(ServiceUnavailable):
    code = "not_ready"


class CalibrationPending(ServiceUnavailable):
    """503 + Retry-After while a sub-network's BN statistics are being recalibrated: the uncalibrated ones are
    never served when calibration data is configured (`curl --retry` and most HTTP clients retry a 503)."""
    code = "bn_calibration_pending"

    def __init__(self, subnet_id: str, retry_after_s: int):
        super().__init__(f"sub-network {subnet_id!r}: its BN statistics are being recalibrated on the calibration "
                         f"images; retry in about {retry_after_s} s", subnet=subnet_id, retry_after_s=retry_after_s)
        self.headers = {"Retry-After": str(retry_after_s)}


class VerifyUnavailable(Conflict):
    code = "verify_unavailable"

    def __init__(self, supernet: str, why: str, setting: str):
        super().__init__(f"verify: supernet {supernet!r} {why}; set {setting}='{{\"{supernet}\": "
                         f"\"/path/to/images.npz\"}}' (or send verify: false)", supernet=supernet, setting=setting)


class CalibrationFailed(Conflict):
    code = "bn_calibration_failed"

    def __init__(self, subnet_id: str, reason: str):
        super().__init__(f"sub-network {subnet_id!r}: BN recalibration failed ({reason}); its uncalibrated "
                         "statistics are not served", subnet=subnet_id, reason=reason)


def _field_from_loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _allowed_methods(app, scope) -> list[str]:
    """The methods some route fully matches on this path (probing each: included routers match as one)."""
    from starlette.routing import Match
    allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
               if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in app.router.routes)]
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        if exc.status_code >= 500:
            log.warning("service error", extra={"code": exc.code, "path": request.url.path, "error": exc.message})
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid"}
        field = _field_from_loc(first.get("loc", ()))
        body = {"error": {"code": "validation_error", "message": f"{field}: {first.get('msg')}", "field": field,
                          "errors": [{"field": _field_from_loc(e.get("loc", ())), "message": e.get("msg")} for e in errs]}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:      # every method of every route on this path, not only the first route's
            headers["Allow"] = ", ".join(_allowed_methods(request.app, request.scope))
        return JSONResponse({"error": {"code": "http_error", "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception):
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse({"error": {"code": "internal_error", "message": "internal server error"}}, status_code=500)
