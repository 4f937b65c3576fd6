"""Fit a latency table from whole-network measurements (config, measured ms).

A network's latency is linear in its operator counts: y = A x, where A[i, j] counts operator j (a (resolution,
key) pair) in config i and x holds the per-operator means. We solve for x >= 0 with scipy.optimize.nnls in
relative terms (each row divided by its measured latency, so every pair counts by its relative error) and, when a
prior table is given, with a ridge pull towards the prior scaled by one global factor fitted first:

    minimise  sum_i ((A x - y)_i / y_i)^2  +  lam * sum_j ((x_j - s p_j) / (s p_j))^2,   x >= 0

so a handful of pairs already moves the whole table (via s), and more pairs refine individual operators.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .latency import LatencyTable, block_operator_key, fixed_operator_keys
from .spec import SupernetSpec, active_mask


def operator_columns(table: LatencyTable) -> list[tuple[int, str]]:
    return [(r, k) for r in table.resolutions for k in sorted(table.tables[r])]


def count_matrix(table: LatencyTable, enc: np.ndarray, columns: Sequence[tuple[int, str]] | None = None
                 ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(N, n_ops) operator counts of each encoded config over `columns` (default: every (r, key) of the table)."""
    spec = table.spec
    cols = list(columns) if columns is not None else operator_columns(table)
    col_idx = {c: i for i, c in enumerate(cols)}
    B, S = spec.n_blocks, spec.n_stages
    enc = np.asarray(enc)
    A = np.zeros((len(enc), len(cols)))
    # per (r, block, ks, e) -> column, computed once
    key_cache: dict[tuple[int, int, int, int], int] = {}
    mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
    for i, row in enumerate(enc):
        r = int(row[-1])
        for k in fixed_operator_keys(spec, r):
            A[i, col_idx[(r, k)]] += 1
        for b in np.nonzero(mask[i])[0]:
            t = (r, int(b), int(row[b]), int(row[B + b]))
            j = key_cache.get(t)
            if j is None:
                j = key_cache[t] = col_idx[(r, block_operator_key(spec, r, *t[1:]))]
            A[i, j] += 1
    return A, cols


def calibrate(prior: LatencyTable | None, enc: np.ndarray, measured_ms: np.ndarray, *,
              spec: SupernetSpec | None = None, reg: float = 0.1, environment: dict[str, Any] | None = None
              ) -> LatencyTable:
    """Fit a `source="calibrated"` table from (enc, measured ms) pairs.

    With `prior` (e.g. the published or a profiled table), solves the regularised problem above (`reg` = lam; 0 is
    plain relative NNLS). Without a prior, pass `spec`; the fit is plain NNLS and needs many pairs (operators never
    seen get 0 ms).
    """
    from scipy.optimize import nnls
    enc = np.asarray(enc)
    y = np.asarray(measured_ms, dtype=np.float64).reshape(-1)
    if len(enc) != len(y) or len(y) == 0:
        raise ValueError(f"need matching, non-empty configs and measurements ({len(enc)} vs {len(y)})")
    if not np.all(np.isfinite(y)) or (y <= 0).any():
        raise ValueError("measured latencies must be positive and finite")
    if prior is None:
        if spec is None:
            raise ValueError("pass a prior table or spec=")
        from .latency import required_operator_keys
        res = sorted(set(int(r) for r in enc[:, -1]))
        zero = {r: {k: {"mean": 1.0} for k in required_operator_keys(spec, r)} for r in res}
        base = LatencyTable(spec, zero, source="calibrated")
        A, cols = count_matrix(base, enc)
        x, _ = nnls(A / y[:, None], np.ones(len(y)), maxiter=50 * A.shape[1])
        means = {r: {} for r in res}
        for (r, k), v in zip(cols, x):
            means[r][k] = float(v)
        return base.with_means(means, source="calibrated", environment=_env(environment, len(y), reg, None))
    A, cols = count_matrix(prior, enc)
    p = np.array([max(prior.tables[r][k].mean, 1e-9) for r, k in cols])
    pred0 = A @ p
    s = float(np.sum(pred0 * y / y ** 2) / np.sum(pred0 ** 2 / y ** 2))     # relative least-squares scale
    sp = s * p
    # unknown z = x / (s p) >= 0; rows: relative residual of each pair, then sqrt(lam) (z - 1)
    M = A * sp[None, :] / y[:, None]
    rhs = np.ones(len(y))
    if reg > 0:
        n = len(sp)
        M = np.vstack([M, np.sqrt(reg) * np.eye(n)])
        rhs = np.concatenate([rhs, np.sqrt(reg) * np.ones(n)])
    z, _ = nnls(M, rhs, maxiter=50 * M.shape[1])
    x = z * sp
    means: dict[int, dict[str, float]] = {}
    for (r, k), v in zip(cols, x):
        means.setdefault(r, {})[k] = float(v)
    env = _env(environment, len(y), reg, s)
    env["prior_source"] = prior.source
    return prior.with_means(means, source="calibrated", environment=env)


def _env(environment, n, reg, scale) -> dict[str, Any]:
    env = dict(environment or {})
    env.update({"calibration_pairs": int(n), "calibration_reg": float(reg)})
    if scale is not None:
        env["calibration_prior_scale"] = float(scale)
    return env


def share_within(table: LatencyTable, enc: np.ndarray, measured_ms: np.ndarray, tolerance: float = 0.10) -> float:
    """Fraction of pairs whose table prediction is within +-tolerance of the measurement."""
    pred = table.predict(enc)
    return float(np.mean(np.abs(pred / np.asarray(measured_ms) - 1.0) <= tolerance))


def calibration_curve(prior: LatencyTable | None, enc_train: np.ndarray, y_train: np.ndarray,
                      enc_test: np.ndarray, y_test: np.ndarray, ns: Sequence[int] = (5, 10, 20, 50, 100), *,
                      spec: SupernetSpec | None = None, reg: float = 0.1, tolerance: float = 0.10
                      ) -> list[dict[str, float]]:
    """Held-out share within +-tolerance (and median |relative error|) after calibrating on the first N pairs."""
    out = []
    if prior is not None:
        pred = prior.predict(enc_test)
        out.append({"n": 0, "share_within": float(np.mean(np.abs(pred / y_test - 1) <= tolerance)),
                    "median_abs_rel_err": float(np.median(np.abs(pred / y_test - 1)))})
    for n in ns:
        if n > len(y_train):
            break
        t = calibrate(prior, enc_train[:n], y_train[:n], spec=spec, reg=reg)
        pred = t.predict(enc_test)
        out.append({"n": int(n), "share_within": float(np.mean(np.abs(pred / y_test - 1) <= tolerance)),
                    "median_abs_rel_err": float(np.median(np.abs(pred / y_test - 1)))})
    return out
