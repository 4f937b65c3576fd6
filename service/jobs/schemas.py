from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.validation import NAME_PATTERN


class RelativeBudget(BaseModel):
    """A budget relative to what the device's table allows, so that one request fits any host: exactly one of
    `times_min` (the smallest achievable value times this factor) or `fraction_of_range` (the smallest value
    plus this fraction of the span up to the largest sub-network's value)."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"times_min": 1.5},
                                                                              {"fraction_of_range": 0.3}]})
    times_min: float | None = Field(None, ge=1, le=1000, description="budget = factor x smallest achievable")
    fraction_of_range: float | None = Field(None, ge=0, le=1,
                                            description="budget = min + fraction x (max - min)")

    @model_validator(mode="after")
    def _one(self):
        if (self.times_min is None) == (self.fraction_of_range is None):
            raise ValueError("give exactly one of times_min, fraction_of_range")
        return self

    def resolve(self, lo: float, hi: float) -> float:
        if self.times_min is not None:
            return lo * self.times_min
        return lo + self.fraction_of_range * (hi - lo)


# the largest budget accepted (a larger one is a typo or an attack: it would still mean "anything")
MAX_BUDGET = {"latency_ms": 1e6, "macs": 1e15, "params": 1e15, "peak_memory_bytes": 1e15}


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_ms: Annotated[float, Field(gt=0)] | RelativeBudget | None = Field(
        None, description="predicted latency budget on the device: ms, or relative {\"times_min\": 1.5} / "
                          "{\"fraction_of_range\": 0.3}")
    macs: Annotated[int, Field(gt=0)] | RelativeBudget | None = None
    params: Annotated[int, Field(gt=0)] | RelativeBudget | None = None
    peak_memory_bytes: Annotated[int, Field(gt=0)] | RelativeBudget | None = None

    @field_validator("latency_ms", "macs", "params", "peak_memory_bytes", mode="before")
    @classmethod
    def _budget(cls, v: Any, info) -> Any:
        """One clear message per field (not one per member of the union): a positive number, or a relative
        budget object."""
        if v is None or isinstance(v, RelativeBudget):
            return v
        if isinstance(v, dict):
            try:
                return RelativeBudget.model_validate(v)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}") from None
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ValueError('Input should be a valid number, or {"times_min": x} / {"fraction_of_range": f}'
                                 ) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError('Input should be a valid number, or {"times_min": x} / {"fraction_of_range": f}')
        if not v > 0:
            raise ValueError("Input should be greater than 0")
        if not math.isfinite(v) or v > MAX_BUDGET[info.field_name]:
            raise ValueError(f"Input should be a finite number at most {MAX_BUDGET[info.field_name]:g}")
        if info.field_name != "latency_ms":
            if float(v) != int(v):
                raise ValueError("Input should be a whole number")
            v = int(v)
        return v

    def as_dict(self) -> dict[str, Any]:
        """Given constraints: numbers, or RelativeBudget for relative ones (resolved by `absolute`)."""
        return {k: getattr(self, k) for k in type(self).model_fields if getattr(self, k) is not None}

    def relative(self) -> dict[str, dict[str, float]]:
        return {k: v.model_dump(exclude_none=True) for k, v in self.as_dict().items() if isinstance(v, RelativeBudget)}

    def absolute(self, minima: dict[str, float], maxima) -> dict[str, float]:
        """Every constraint as a number; `maxima()` (largest sub-network's metrics) is called only if needed."""
        out, hi = {}, None
        for k, v in self.as_dict().items():
            if isinstance(v, RelativeBudget):
                if hi is None and v.fraction_of_range is not None:
                    hi = maxima()
                value = v.resolve(float(minima[k]), float(hi[k]) if hi else float(minima[k]))
                out[k] = float(value) if k == "latency_ms" else max(int(value), int(minima[k]))
            else:
                out[k] = v
        return out


DEFAULT_VERIFY_TOP_K, MAX_VERIFY_TOP_K = 5, 20


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    population: int | None = Field(None, ge=4, le=1000, strict=True)
    generations: int | None = Field(None, ge=1, le=2000, strict=True)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, strict=True)
    verify_top_k: int | None = Field(None, ge=1, le=MAX_VERIFY_TOP_K, strict=True, description=(
        f"with verify: how many of the search's best distinct candidates are measured (default "
        f"{DEFAULT_VERIFY_TOP_K})"))


class SpecializeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"device": "host-cpu", "constraints": {"latency_ms": {"times_min": 1.5}}, "options": {"seed": 0}},
        {"device": "host-cpu", "constraints": {"latency_ms": {"fraction_of_range": 0.5}, "macs": {"times_min": 3}},
         "accuracy_floor": 0.3, "options": {"population": 100, "generations": 100, "seed": 0}},
        {"supernet": "ofa_mbv3_d234_e346_k357_w1.2", "device": "note10", "constraints": {"latency_ms": 25}},
        {"device": "host-cpu", "constraints": {"latency_ms": {"fraction_of_range": 0.3}}, "verify": True,
         "options": {"verify_top_k": 5, "seed": 0}}]})
    supernet: str | None = Field(None, pattern=NAME_PATTERN,
                                 description="registered supernet; default: the device's supernet")
    device: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    constraints: Constraints = Field(description="at least one of latency_ms, macs, params, peak_memory_bytes; each "
                                                 "absolute or relative to the device ({\"times_min\": 1.5} or "
                                                 "{\"fraction_of_range\": 0.3})")
    accuracy_floor: float | None = Field(None, ge=0, le=1, strict=True)
    options: SearchOptions = Field(default_factory=SearchOptions)
    batch_size: int | None = Field(None, ge=1, le=4096, description="search with the device's newest table timed at "
                                   "this batch size (latency budgets are then per batch); default: the current "
                                   "table's")
    use_pareto: bool = Field(True, description="allow an answer from the device's stored Pareto front")
    verify: bool = Field(False, description=(
        "verified answer (always computed by a worker, never from the Pareto front): the search's best "
        "`options.verify_top_k` distinct candidates (default 5) are BN-recalibrated and scored on the supernet's "
        "evaluation images and, on a device profiled on this host (kind `profiled`), timed end to end with the "
        "profiler's protocol; the answer is the best measured accuracy among those meeting every constraint "
        "(latency as measured; on other devices as the table predicts, said in `verification.latency`). The "
        "result adds `measured_latency_ms` and `verification` (every candidate and why the answer was chosen). "
        "When no candidate meets the latency budget as measured, the job fails with code "
        "`verified_budget_not_met`, naming each candidate's measured latency. Needs calibration and evaluation "
        "images (409 `verify_unavailable` otherwise, naming OFA_CALIBRATION_DATA / OFA_EVALUATION_DATA)"))


class SubnetResult(BaseModel):
    subnet_id: str
    supernet: str
    config: dict[str, Any]
    predicted_accuracy: float | None
    predicted_latency_ms: float | None
    macs: int | None
    params: int | None
    peak_memory_bytes: int | None
    measured_accuracy: float | None = Field(None, description="top-1 on the supernet's evaluation images after BN "
                                            "recalibration (null: not configured, or listed in `pending`)")
    measured_images: int | None = Field(None, description="number of evaluation images behind measured_accuracy")
    bn_calibrated: bool | None = Field(None, description="the downloads carry BN statistics recalibrated on the "
                                       "calibration images (false: the supernet's, see bn_calibration.setting)")
    bn_calibration: dict[str, Any] | None = None
    pending: list[str] = Field(default_factory=list, description="fields a worker is still computing")
    measured_latency_ms: float | None = Field(None, description="verified answers: end-to-end latency measured "
                                              "on this host (null where the device is not this host)")
    verification: dict[str, Any] | None = Field(None, description="verified answers: every candidate (subnet_id, "
                                                "predicted/measured accuracy and latency, met_budget), the one "
                                                "chosen and why")
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


class JobPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "items": JobOut.model_config["json_schema_extra"]["examples"], "total": 1, "limit": 20, "offset": 0}]})
    items: list[JobOut]
    total: int
    limit: int
    offset: int
