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
    batch_size: int = Field(1, description="the batch the latencies were timed at (ms per batch)")
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
    latency_ms: float = Field(gt=0, lt=1e7, strict=True, description="measured ms for one batch of `batch_size`")


class TimingsIn(BaseModel):
    timings: list[Timing] = Field(min_length=1, max_length=5000)
    description: str | None = Field(None, max_length=2000)
    batch_size: int | None = Field(None, ge=1, le=4096, description="the batch the timings were taken at "
                                   "(default: the current table version's)")
    supernet: str | None = Field(None, max_length=128, description="with ?create=true: the new device's supernet")
    resolutions: list[int] | None = Field(None, min_length=1, max_length=64, description="resolutions of the "
                                          "calibrated table when there is no prior table (default: all of the "
                                          "supernet's; resolutions no timing ran are priced by the cost model)")

    model_config = {"json_schema_extra": {"examples": [{
        "timings": [{"config": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}, "latency_ms": 2.1}]}]}}


class SuggestedConfig(BaseModel):
    config: dict[str, Any]
    predicted_latency_ms: float | None = Field(None, description="per batch, from the current table (if any)")
    relative_sd: float = Field(description="the model's relative predictive standard deviation before timing")


class SuggestOut(BaseModel):
    device: str
    supernet: str
    batch_size: int
    n_timings: int = Field(description="timings already stored for this device and batch size")
    table_version: int | None
    method: str
    configs: list[SuggestedConfig]
