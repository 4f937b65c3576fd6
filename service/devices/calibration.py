"""Calibration of device tables from posted whole-network timings, and which configs to time next.

Every posted timing is stored (`device_timings`, per batch size); a calibration refits on all of a device's
timings at that batch size (the newest `MAX_FIT` of them: a few seconds; beyond that a profiled table is the
better tool). Priors tried: the cost model alone, and the
newest table version at that batch size that is not itself calibrated (an uploaded, imported or profiled table);
the one with the better cross-validated agreement wins and the provenance lists both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from ofa_core.calibrate import METHOD, CalibrationResult, fit_calibration, suggest_configs
from ofa_core.latency import LatencyTable
from ofa_core.spec import ConfigError, SubnetConfig, SupernetSpec
from service.errors import ValidationFailed
from service.supernets.store import SupernetStore
from . import repository as repo

MAX_STORED = 5000       # timings read back for suggestions
MAX_FIT = 1000          # timings a calibration fits (the newest)


def parse_timings(spec: SupernetSpec, timings: list[dict[str, Any]], field: str = "timings"
                  ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """(canonical config dicts, encoded configs, ms); a bad config is a 422 naming `timings[i].config.<field>`."""
    cfgs = []
    for i, t in enumerate(timings):
        try:
            cfgs.append(SubnetConfig.from_dict(spec, t["config"]))
        except ConfigError as e:
            raise ValidationFailed(f"{field}[{i}].config.{e.field}", e.message) from None
    enc = np.stack([c.encode() for c in cfgs]).astype(np.int32)
    return [c.to_dict() for c in cfgs], enc, np.array([float(t["latency_ms"]) for t in timings])


def _resolutions(spec: SupernetSpec, requested: list[int] | None, base) -> tuple[int, ...]:
    """The calibrated table's resolutions: as requested (within the prior table's, if there is one), else the
    prior table's, else all of the supernet's."""
    if requested:
        allowed = list(base.resolutions) if base is not None else list(spec.resolutions)
        bad = [r for r in requested if r not in allowed]
        if bad:
            what = f"the prior table (version {base.version})" if base is not None else spec.name
            raise ValidationFailed("resolutions", f"{bad[0]} is not a resolution of {what} ({allowed})")
        return tuple(sorted(set(int(r) for r in requested)))
    return tuple(base.resolutions) if base is not None else tuple(spec.resolutions)


def _check_in(enc: np.ndarray, resolutions: tuple[int, ...], offset: int) -> None:
    for i, r in enumerate(enc[:, -1]):
        if int(r) not in resolutions:
            raise ValidationFailed(f"timings[{i - offset}].config.r" if i >= offset else "timings",
                                   f"resolution {int(r)} is not in the device's table ({list(resolutions)})")


def fit_device(store: SupernetStore, s: Session, device, supernet: str, new: list[dict[str, Any]],
               batch_size: int | None, resolutions: list[int] | None = None
               ) -> tuple[dict, list[tuple[dict, float]], int, dict[str, Any]]:
    """Fit a calibrated table for `device` (None: a device being created) from its stored timings plus `new`.

    Returns (table as {r: {key: entry}}, the new timings as (config, ms) rows to store, batch size, provenance).
    """
    eng = store.get(supernet)
    spec = eng.spec
    current = repo.current_table(s, device) if device is not None else None
    batch = int(batch_size or (current.batch_size if current is not None else 1))
    base = repo.table_for_batch(s, device, batch, exclude_source="calibrated") if device is not None else None
    if len(new) > MAX_FIT:
        raise ValidationFailed("timings", f"at most {MAX_FIT} timings per calibration, got {len(new)}")
    cfgs, enc_new, y_new = parse_timings(spec, new)
    old = repo.timings(s, device, batch, max(MAX_FIT - len(new), 0)) if device is not None else []
    if old:
        _, enc_old, y_old = parse_timings(spec, [{"config": c, "latency_ms": ms} for c, ms in old], "stored")
        enc, y = np.concatenate([enc_old, enc_new]), np.concatenate([y_old, y_new])
    else:
        enc, y = enc_new, y_new
    res = _resolutions(spec, resolutions, base)
    _check_in(enc, res, len(enc) - len(enc_new))
    priors: list[tuple[str, LatencyTable | None]] = [("cost-model", None)]
    if base is not None:
        table = eng.efficiency(base.id, lambda: repo.load_entries(s, base.id)).latency_table
        priors.append((f"version {base.version} ({base.source})", table))
    fits: list[tuple[str, CalibrationResult]] = []
    for name, prior in priors:
        fits.append((name, fit_calibration(spec, enc, y, prior=prior, resolutions=res, batch_size=batch)))
    name, best = max(fits, key=lambda f: _rank(f[1], f[0] != "cost-model"))
    after = best.table.predict(enc)
    rep = best.report
    prov = {"method": "ofa_core.calibrate", "model": METHOD, "n_timings": int(len(y)), "n_new": len(cfgs),
            "batch_size": batch, "prior": name, "based_on_version": base.version if base is not None else None,
            "priors_tried": [{"prior": n, "cv": f.report["cv"]} for n, f in fits],
            "cv": rep["cv"], "fit": rep["fit"], "hyper": rep["hyper"], "theta": rep["theta"],
            "ridge": rep["ridge"], "features": rep["features"], "resolutions": rep["resolutions"],
            "fit_seconds": round(sum(f.report["fit_seconds"] for _, f in fits), 4),
            "mean_rel_error_after": float(np.mean(np.abs(after / y - 1.0)))}
    return best.table.tables, list(zip(cfgs, y_new.tolist())), batch, prov


def _rank(fit: CalibrationResult, is_table: bool) -> tuple:
    cv = fit.report["cv"]
    if cv is None:                      # too few timings to cross-validate: a real table beats the cost model
        return (is_table, 0.0, 0.0)
    return (cv["share_within_10"], cv["share_within_5"], -cv["median_abs_rel_err"])


def suggest(store: SupernetStore, s: Session, device, supernet: str, n: int, batch_size: int | None,
            seed: int = 0) -> dict[str, Any]:
    """The next `n` configs to time for `device` (None: a device not created yet, cost model only)."""
    eng = store.get(supernet)
    current = repo.current_table(s, device) if device is not None else None
    batch = int(batch_size or (current.batch_size if current is not None else 1))
    row = repo.table_for_batch(s, device, batch) if device is not None else None
    table = eng.efficiency(row.id, lambda: repo.load_entries(s, row.id)).latency_table if row is not None else None
    stored = repo.timings(s, device, batch, MAX_STORED) if device is not None else []
    observed = None
    if stored:
        _, observed, _ = parse_timings(eng.spec, [{"config": c, "latency_ms": ms} for c, ms in stored], "stored")
        if table is not None:
            observed = observed[np.isin(observed[:, -1], table.resolutions)]
    # the cost model's shape with the default prior variances, conditioned on the stored timings: in
    # bench/bench_calibration.py this chose better timings than the fitted table's shape and hyper-parameters
    res = table.resolutions if table is not None else None
    enc, sd = suggest_configs(eng.spec, n, observed=observed, resolutions=res, batch_size=batch, seed=seed)
    pred = table.predict(enc) if table is not None else [None] * len(enc)
    return {"device": device.name if device is not None else None, "supernet": supernet, "batch_size": batch,
            "n_timings": len(stored), "table_version": row.version if row is not None else None,
            "method": "greedy largest reduction of the calibration model's summed relative predictive variance over "
                      "2,000 random configs, each pick conditioned on the ones before and on the stored timings",
            "configs": [{"config": SubnetConfig.from_encoded(eng.spec, e).to_dict(),
                         "predicted_latency_ms": None if p is None else float(p), "relative_sd": float(v)}
                        for e, p, v in zip(enc, pred, sd)]}
