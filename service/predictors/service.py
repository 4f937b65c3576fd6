"""Training an accuracy predictor from posted (config, accuracy) pairs: validated and stored by the API, trained,
saved (safetensors, under the data directory) and registered for the supernet by a worker (`ofa.train_predictor`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from typing import Any

import numpy as np
from sqlalchemy.exc import OperationalError as DBOperationalError

from ofa_core.predictor_data import AccuracyDataError, parse_accuracy_data
from service.db.base import utcnow
from service.db.models import PredictorTraining
from service.errors import BrokerUnavailable, ValidationFailed
from service.jobs import queue as Q
from . import repository as repo
from .schemas import MAX_ROWS, PredictorTrainIn

log = logging.getLogger("ofa.predictors")
TRAIN_PREDICTOR = "ofa.train_predictor"
MIN_ROWS = 10
REPORT_KEYS = ("n_train", "n_val", "val_rmse_pp", "val_kendall_tau", "train_rmse_pp", "train_kendall_tau",
               "epochs_run", "best_epoch", "ensemble", "member_val_rmse_pp")


def parse(spec, body: PredictorTrainIn) -> tuple[dict[str, Any], list[str]]:
    """The canonical rows ({"enc", "acc"}) and notes; a 422 naming `data` (row and field) or `val_fraction`."""
    n = len(body.data)
    if n > MAX_ROWS:
        raise ValidationFailed("data", f"at most {MAX_ROWS} rows, got {n}")
    try:
        d = parse_accuracy_data(json.dumps(body.data), spec, body.scale)
    except AccuracyDataError as e:
        raise ValidationFailed("data", str(e)) from None
    if len(d.acc) < MIN_ROWS:
        raise ValidationFailed("data", f"at least {MIN_ROWS} distinct sub-networks are needed, got {len(d.acc)}")
    n_val = max(1, int(round(body.val_fraction * len(d.acc)))) if body.val_fraction > 0 else 0
    if len(d.acc) - n_val < MIN_ROWS // 2:
        raise ValidationFailed("val_fraction", f"leaves {len(d.acc) - n_val} of {len(d.acc)} rows for training")
    return {"enc": d.enc.tolist(), "acc": [float(a) for a in d.acc]}, list(d.notes)


def create(db, spec, body: PredictorTrainIn, owner_key_id: int | None) -> PredictorTraining:
    """Validate and store (committed on return)."""
    data, notes = parse(spec, body)
    params = body.model_dump(exclude={"data"}, by_alias=True)
    row = PredictorTraining(id=uuid.uuid4().hex, supernet=spec.name, status="queued", params=params,
                            data={**data, "notes": notes}, owner_key_id=owner_key_id, attempts=0,
                            heartbeat_at=utcnow())      # published right after the commit
    with db.session() as s:
        repo.create(s, row)
    return row


def enqueue(db, celery, settings, training_id: str) -> None:
    """Publish the committed training; a broker that does not answer fails the row and is a 503."""
    try:
        Q.publish(celery, settings.task_queue, TRAIN_PREDICTOR, [training_id], settings.broker_publish_timeout_s)
    except BrokerUnavailable:
        with db.session() as s:
            repo.finish(s, training_id, "failed", error="the task broker did not accept the job; post again")
        raise


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _train(settings, supernet: str, training_id: str, params: dict[str, Any], data: dict[str, Any]) -> dict:
    from ofa_core.predictor import AccuracyPredictor, train_predictor
    from ofa_core.spec import get_spec
    from service.supernets.store import register_predictor_file
    spec = get_spec(supernet)
    enc, acc = np.asarray(data["enc"], dtype=np.int32), np.asarray(data["acc"], dtype=np.float64)
    t0 = time.perf_counter()
    pred, m = train_predictor(enc, acc, spec, val_fraction=params["val_fraction"], epochs=params["epochs"],
                              batch_size=params["batch_size"], lr=params["lr"], seed=params["seed"],
                              max_seconds=params["max_seconds"], ensemble=params["ensemble"])
    secs = time.perf_counter() - t0
    folder = os.path.join(settings.var_dir, "trained_predictors")
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f"{spec.name}-{training_id}.safetensors")
    pred.save(out, {"trained_from": f"predictor training {training_id}", "scale": params["scale"],
                    "val_rmse_pp": f"{m['val_rmse_pp']:.4f}", "val_kendall_tau": f"{m['val_kendall_tau']:.4f}"})
    AccuracyPredictor.load(out, spec)                      # what the service will load
    result = {k: _finite(m[k]) for k in REPORT_KEYS if k in m}
    result.update(seconds=round(secs, 2), predictor=os.path.abspath(out), registered=False)
    if params.get("register", True):
        result["registered_as"] = register_predictor_file(settings.var_dir, spec.name, out)
        result["registered"] = True
    return result


DEADLINE_SLACK_S = 60.0      # beyond max_seconds: loading, saving and registering the predictor


def train_by_id(db, settings, training_id: str) -> str:
    """The worker's side: claim, train, save, register, record. Idempotent: a finished training is left alone, and
    one running under a live worker (within its deadline) is not trained again by a duplicate delivery. Any
    failure of the training itself is recorded on the row (it never stays running); a database that does not
    answer propagates, so that the task is retried."""
    with db.session() as s:
        row = repo.get(s, training_id)
        if row is None:
            return "skipped"
        deadline = float(row.params.get("max_seconds", 60.0)) + DEADLINE_SLACK_S
        row = repo.claim(s, training_id, deadline, settings.job_lease_s)
        if row is None:
            return "skipped"
        supernet, params, data = row.supernet, dict(row.params), row.data
    try:
        result = _train(settings, supernet, training_id, params, data)
    except DBOperationalError:
        raise
    except Exception as e:       # PredictorError (a ValueError), a broken file, out of memory, a bug
        log.warning("predictor training failed", extra={"training": training_id, "error": str(e)})
        with db.session() as s:
            repo.finish(s, training_id, "failed", error=f"{type(e).__name__}: {e}"[:2000])
        return "failed"
    with db.session() as s:
        repo.finish(s, training_id, "succeeded", result=result)
    log.info("predictor trained", extra={"training": training_id, "supernet": supernet})
    return "succeeded"


def out(row: PredictorTraining) -> dict[str, Any]:
    return {"id": row.id, "supernet": row.supernet, "status": row.status, "params": row.params,
            "n_rows": len(row.data.get("acc", [])), "notes": row.data.get("notes", []), "result": row.result,
            "error": row.error, "created_at": row.created_at, "started_at": row.started_at,
            "finished_at": row.finished_at, "url": f"/supernets/{row.supernet}/predictor/trainings/{row.id}"}
