"""Request/response models of `POST /supernets/{name}/predictor` (training an accuracy predictor)."""
from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ROWS = 20_000
MAX_BODY = 16 * 1024 * 1024

# twelve distinct sub-networks of the default supernet (depth and resolution varied), as a user would post them
EXAMPLE_ROWS = [{"config": {"ks": [3 + 4 * (i // 9)] * 20, "e": [(3, 4, 6)[i // 3 % 3]] * 20, "d": [2 + i % 3] * 5,
                            "r": (24, 28, 32)[i % 3]}, "acc": round(88.0 + 0.4 * i, 2)} for i in range(12)]


class PredictorTrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"examples": [
        {"data": EXAMPLE_ROWS, "scale": "percent", "epochs": 50, "ensemble": 1, "register": False}]})
    data: list[Any] | dict[str, Any] = Field(
        description="(config, accuracy) pairs, as `ofa train-predictor` reads them: a list of {config, acc} rows "
                    "or OFA-style flat dicts (r may be [224]), or the published {config-as-JSON: accuracy} object "
                    f"(at most {MAX_ROWS} rows)")
    scale: Literal["percent", "fraction"] = Field(description="accuracies in percent (0..100) or fractions (0..1)")
    val_fraction: float = Field(0.2, ge=0, lt=0.9, description="held-out share (seeded split)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    epochs: int = Field(300, ge=1, le=2000)
    batch_size: int = Field(256, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=1.0)
    max_seconds: float = Field(60.0, gt=0, le=900, description="training time bound (all ensemble members)")
    ensemble: int = Field(1, ge=1, le=8, description="members averaged into one predictor (seeds seed..seed+k-1)")
    register_: bool = Field(True, alias="register", description="register the result for the supernet (like `ofa register-predictor`)")


class PredictorTrainingOut(BaseModel):
    id: str
    supernet: str
    status: Literal["queued", "running", "succeeded", "failed"]
    params: dict[str, Any]
    n_rows: int
    notes: list[str]
    result: dict[str, Any] | None = Field(None, description="held-out RMSE (pp) and Kendall tau, the file, "
                                                            "whether it was registered")
    error: str | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    url: str
