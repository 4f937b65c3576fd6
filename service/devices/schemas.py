from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class TableVersion(BaseModel):
    version: int
    source: str
    sha256: str
    n_entries: int
    resolutions: list[int]
    provenance: dict[str, Any]
    created_at: dt.datetime


class DeviceOut(BaseModel):
    name: str
    description: str
    kind: str
    supernet: str
    current_version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    versions: list[TableVersion] | None = None
    pareto_front: list[dict[str, Any]] | None = Field(None, description="stored accuracy/latency front of the current table")

    model_config = {"json_schema_extra": {"examples": [{
        "name": "note10", "description": "Samsung Note10, published tables", "kind": "uploaded",
        "supernet": "ofa_mbv3_d234_e346_k357_w1.2", "current_version": 1,
        "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"}]}}


class DevicePage(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{
        "items": DeviceOut.model_config["json_schema_extra"]["examples"], "total": 1, "limit": 50, "offset": 0}]}}

    items: list[DeviceOut]
    total: int
    limit: int
    offset: int


class Timing(BaseModel):
    config: dict[str, Any]
    latency_ms: float = Field(gt=0)


class TimingsIn(BaseModel):
    timings: list[Timing] = Field(min_length=1)
    description: str | None = None

    model_config = {"json_schema_extra": {"examples": [{
        "timings": [{"config": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}, "latency_ms": 2.1}]}]}}
