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
