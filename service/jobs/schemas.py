from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_ms: float | None = Field(None, gt=0, description="predicted latency budget on the device (ms)")
    macs: int | None = Field(None, gt=0)
    params: int | None = Field(None, gt=0)
    peak_memory_bytes: int | None = Field(None, gt=0)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    population: int | None = Field(None, ge=4, le=1000)
    generations: int | None = Field(None, ge=1, le=2000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class SpecializeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"device": "host-cpu", "constraints": {"latency_ms": 5.0}, "accuracy_floor": 0.5,
         "options": {"population": 100, "generations": 100, "seed": 0}},
        {"supernet": "ofa_mbv3_d234_e346_k357_w1.2", "device": "note10", "constraints": {"latency_ms": 25}}]})
    supernet: str | None = Field(None, description="registered supernet; default: the service's default")
    device: str = Field(min_length=1, max_length=128)
    constraints: Constraints = Field(description="at least one of latency_ms, macs, params, peak_memory_bytes")
    accuracy_floor: float | None = Field(None, ge=0, le=1)
    options: SearchOptions = Field(default_factory=SearchOptions)
    use_pareto: bool = Field(True, description="allow an answer from the device's stored Pareto front")


class SubnetResult(BaseModel):
    subnet_id: str
    supernet: str
    config: dict[str, Any]
    predicted_accuracy: float | None
    predicted_latency_ms: float | None
    macs: int | None
    params: int | None
    peak_memory_bytes: int | None
    links: dict[str, str] = Field(default_factory=dict)


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "6f1c...", "status": "running", "supernet": "ofa_mbv3_cifar10", "supernet_version": "1-ab12",
        "device": "host-cpu", "table_version": 1, "source": "search", "progress": 0.4, "generation": 40,
        "generations": 100, "request": {"constraints": {"latency_ms": 5}}, "result": None, "error": None}]})
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    supernet: str
    supernet_version: str
    device: str
    table_version: int
    source: str
    progress: float
    generation: int
    generations: int
    request: dict[str, Any]
    best_so_far: dict[str, Any] | None = None
    result: SubnetResult | None = None
    error: dict[str, Any] | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    links: dict[str, str] = Field(default_factory=dict)
