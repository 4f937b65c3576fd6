"""Calibrate a per-operator latency table from a few whole-network timings (config, measured ms).

A network's latency is linear in its operators: y = A x, with A the operator counts of each config and x the
table's means (`calib_features.OperatorLayout`: one column per distinct operator key and resolution, plus the
fixed operators' sum per resolution). With N = 10..300 timings and ~100-2,300 unknowns, x is estimated in two
closed-form stages, every residual measured relative to the timing (the goal is agreement within a few %):

1. **Cost-model basis**: x ~= F theta, F the per-operator cost features (pointwise / depthwise-per-kernel / SE
   MACs, activation and weight traffic, launches, h-swish work, the fixed operators' MACs and traffic, and the
   prior table's means when a prior is given), theta >= 0 by NNLS on P ~ 13 columns with a ridge pull towards an
   equal-share anchor and Huber reweighting (slow outliers); the ridge weight and the feature set (all, the
   family subset, or the prior alone) are chosen by cross-validation (leave-one-out up to 30 timings, else
   5-fold). This alone generalises the family model (it prices resolutions and operators no timing ran).
2. **Hierarchical residual**: x = m + delta, m = F theta, with a Gaussian prior on delta made of shared
   relative deviations of operator families (block position, position x kernel, position x expand, resolution,
   resolution x stage), of the basis coefficients themselves, and of each operator alone:
   ``delta = m * (sum_g u_g[group_g(j)] + eps_j) + F diag(theta) v``. The posterior mean is a kernel (dual) ridge
   solve of size N x N; the prior variances and the timing noise are chosen over small grids by coordinate
   descent of the closed-form leave-one-out relative error (truncated at 10%; on a seeded subset of 300 beyond
   that; ``criterion="evidence"`` uses the marginal likelihood instead). As N grows the per-operator term takes
   over and the fit approaches the full per-operator table.

The result is an ordinary `LatencyTable` (published format, `source="calibrated"`) whose `environment`
records the provenance: N, method, hyper-parameters, basis coefficients and the held-out agreement of a nested
5-fold cross-validation (each fold chooses its own ridge, features and hyper-parameters). `family_baseline` is the plain 8-feature family NNLS the model is compared with
(`bench/bench_calibration.py`); `suggest_configs` picks the configs whose timing would most reduce the model's
summed predictive variance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.optimize import nnls

from .calib_features import OperatorLayout, layout_for
from .latency import LatencyTable, block_operator_key, fixed_operator_keys
from .spec import SupernetSpec, active_mask

METHOD = "hierarchical-gp"
FAMILIES = ("layer", "layer_kernel", "layer_expand", "resolution", "resolution_stage")
COMPONENTS = ("basis",) + FAMILIES + ("op",)
DEFAULT_HYPER = {"basis": 0.3, "layer": 0.1, "layer_kernel": 0.03, "layer_expand": 0.03, "resolution": 0.03,
                 "resolution_stage": 0.03, "op": 0.1, "noise": 0.02}
TAU_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
NOISE_GRID = (0.01, 0.02, 0.04, 0.08, 0.15)
RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
ANCHOR_RIDGE = 10.0     # fewer than MIN_SELECT timings and no prior: close to the equal-share anchor
MAX_TIMINGS = 20000
SELECT_MAX = 300        # more timings: hyper-parameters chosen on a seeded subset of this many (O(N^3) each)
MIN_SELECT = 5          # fewer timings: no feature / hyper-parameter selection (prior rescaled, defaults)


# ----------------------------------------------------------------------------------------------------
# Input checks and stage 1: the cost-model basis
# ----------------------------------------------------------------------------------------------------
def _check_pairs(enc: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    enc = np.asarray(enc)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(enc) != len(y) or len(y) == 0:
        raise ValueError(f"need matching, non-empty configs and measurements ({len(enc)} vs {len(y)})")
    if len(y) > MAX_TIMINGS:
        raise ValueError(f"at most {MAX_TIMINGS} timings per calibration, got {len(y)}")
    if not np.all(np.isfinite(y)) or (y <= 0).any():
        raise ValueError("measured latencies must be positive and finite")
    return enc, y


def _design(layout: OperatorLayout, prior_cols: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """(J, P) features, with the prior table as two more columns (blocks, fixed) when given."""
    F, names = layout.F, list(layout.names)
    if prior_cols is not None:
        pb = np.where(np.arange(layout.n_cols) < layout.n_block_cols, prior_cols, 0.0)
        pf = np.where(np.arange(layout.n_cols) >= layout.n_block_cols, prior_cols, 0.0)
        F = np.column_stack([F, pb, pf])
        names += ["prior_blocks", "prior_fixed"]
    return F, names


def _nnls_ridge(M: np.ndarray, lam: float, w0: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """argmin_{w >= 0} sum_i wt_i (M w - 1)_i^2 + lam * n * ||w - w0||^2 (M's columns scaled to mean 1)."""
    n, p = M.shape
    sw = np.sqrt(wt)
    Ms, rhs = M * sw[:, None], sw.copy()
    if lam > 0:
        Ms = np.vstack([Ms, np.sqrt(lam * n) * np.eye(p)])
        rhs = np.concatenate([rhs, np.sqrt(lam * n) * w0])
    return nnls(Ms, rhs, maxiter=50 * p)[0]


def _basis_design(AF: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative design (rows / y) with columns scaled to mean 1 (unused columns dropped via scale 0)."""
    M = AF / y[:, None]
    scale = M.mean(axis=0)
    ok = scale > 0
    Mn = np.zeros_like(M)
    Mn[:, ok] = M[:, ok] / scale[ok]
    return Mn, np.where(ok, scale, 1.0)


def _equal_share(Mn: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The agnostic anchor: every used feature explains an equal share, one scale fitted (relative LS)."""
    used = (Mn.sum(axis=0) > 0).astype(np.float64)
    z = Mn @ used
    return used * float(np.sum(wt * z) / max(np.sum(wt * z * z), 1e-300))


def huber_weights(rel: np.ndarray, c: float = 1.5) -> np.ndarray:
    """IRLS weights of relative residuals (robust scale from the median absolute deviation)."""
    s = max(1.4826 * float(np.median(np.abs(rel - np.median(rel)))), 0.005)
    a = np.abs(rel) / (c * s)
    return np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))


FAMILY_SUBSET = ("pw_macs", "dw_macs_k", "se_macs", "blocks", "fixed_macs", "fixed_const", "prior_")


def _cv_error(Mn: np.ndarray, cols: np.ndarray, lam: float, fold: np.ndarray, k: int) -> float:
    e, wt = 0.0, np.ones(len(Mn))
    for f in range(k):
        tr, te = fold != f, fold == f
        if tr.sum() == 0 or te.sum() == 0:
            continue
        M = Mn[tr][:, cols]
        w = _nnls_ridge(M, lam, _equal_share(M, wt[tr]), wt[tr])
        e += float(np.sum(np.minimum((Mn[te][:, cols] @ w - 1.0) ** 2, 0.1 ** 2)))
    return e


def fit_basis(AF: np.ndarray, y: np.ndarray, names: Sequence[str], lam: float | None = None,
              subset: str | None = None, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float, str, np.ndarray]:
    """theta >= 0 with AF theta ~= y (relative, Huber-reweighted), shrunk towards the equal-share anchor.

    The ridge weight and the feature set ("family": MACs by kind, blocks, SE, the fixed operators' MACs and a
    constant, and the prior; "full"; or "prior": the prior table alone, rescaled) are chosen by cross-validation (leave-one-out up to 30 timings, else
    K-fold; loss truncated at 10%) when not given. Returns (theta over all features, lam, subset, row weights).
    """
    Mn, scale = _basis_design(AF, y)
    n, p = Mn.shape
    sets = {"full": np.arange(p),
            "family": np.array([i for i, nm in enumerate(names) if nm.startswith(FAMILY_SUBSET)])}
    if any(nm.startswith("prior_") for nm in names):     # the prior table rescaled (blocks, fixed operators)
        sets["prior"] = np.array([i for i, nm in enumerate(names) if nm.startswith("prior_")])
    if n < MIN_SELECT and (lam is None or subset is None):   # too few to choose: rescale the prior / anchor
        subset = subset or ("prior" if "prior" in sets else "family")
        lam = lam if lam is not None else (RIDGE_GRID[0] if subset == "prior" else ANCHOR_RIDGE)
    if lam is None or subset is None:
        k = n if n <= 30 else min(folds, n)          # leave-one-out while it is cheap and K-fold is noisy
        fold = np.random.default_rng(seed).permutation(n) % k
        cands = [(sname, lm) for sname in ([subset] if subset else sets) for lm in
                 ([lam] if lam is not None else RIDGE_GRID)]
        errs = [_cv_error(Mn, sets[sname], lm, fold, k) for sname, lm in cands]
        subset, lam = cands[int(np.argmin(errs))]
    cols = sets[subset]
    wt = np.ones(n)
    for _ in range(3):
        M = Mn[:, cols]
        w = _nnls_ridge(M, lam, _equal_share(M, wt), wt)
        wt = huber_weights(M @ w - 1.0)
    theta = np.zeros(p)
    theta[cols] = w / scale[cols]
    return theta, float(lam), subset, wt


# ----------------------------------------------------------------------------------------------------
# Stage 2: the hierarchical residual (dual ridge / GP posterior mean)
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Kernels:
    """Per-component Gram matrices in relative units, and what is needed to map back to operators."""
    grams: dict[str, np.ndarray]
    loads: dict[str, Any]          # component -> U (N x n_c) for basis/families; A_rel m for "op"
    resid: np.ndarray              # 1 - A m / y
    noise_scale: np.ndarray        # per-timing noise multiplier (1 / sqrt(Huber weight): outliers count less)

    def subset(self, idx: np.ndarray) -> "_Kernels":
        """The same model restricted to some timings (for choosing hyper-parameters on many timings)."""
        return _Kernels({c: g[np.ix_(idx, idx)] for c, g in self.grams.items()}, {}, self.resid[idx],
                        self.noise_scale[idx])


def _one_hot(ids: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), int(ids.max()) + 1))


def _kernels(layout: OperatorLayout, A: sp.csr_matrix, y: np.ndarray, m: np.ndarray, F: np.ndarray,
             theta: np.ndarray, zs: dict[str, sp.csr_matrix], wt: np.ndarray) -> _Kernels:
    inv = sp.diags(1.0 / y)
    Am = (inv @ A @ sp.diags(m)).tocsr()                           # relative, scaled by m
    grams, loads = {}, {}
    U = (inv @ A @ (F * theta[None, :]))                           # basis
    U = np.asarray(U)
    grams["basis"], loads["basis"] = U @ U.T, U
    for g in FAMILIES:
        Ug = (Am @ zs[g]).toarray()
        grams[g], loads[g] = Ug @ Ug.T, Ug
    grams["op"] = (Am @ Am.T).toarray()
    loads["op"] = Am
    resid = 1.0 - np.asarray(A @ m).reshape(-1) / y
    return _Kernels(grams, loads, resid, 1.0 / np.sqrt(np.maximum(wt, 1e-6)))


def _gram(k: _Kernels, hyper: dict[str, float]) -> np.ndarray:
    K = np.zeros_like(k.grams["op"])
    for c in COMPONENTS:
        if hyper[c] > 0:
            K += hyper[c] ** 2 * k.grams[c]
    K[np.diag_indices_from(K)] += (hyper["noise"] * k.noise_scale) ** 2
    return K


def _score(k: _Kernels, hyper: dict[str, float], criterion: str) -> float:
    """Higher is better: the log marginal likelihood of the relative residuals ("evidence"), or minus the
    leave-one-out squared relative error truncated at 10% ("loo", closed form: e_i = [K^-1 r]_i / [K^-1]_ii)."""
    try:
        c = sla.cho_factor(_gram(k, hyper), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return -np.inf
    a = sla.cho_solve(c, k.resid, check_finite=False)
    if criterion == "evidence":
        return float(-0.5 * k.resid @ a - np.log(np.diag(c[0])).sum())
    inv, info = sla.lapack.dpotri(c[0], lower=True)      # K^-1 from its Cholesky factor (diagonal is all we need)
    if info != 0:
        return -np.inf
    kinv_diag = np.diag(inv)
    e = a / kinv_diag
    return -float(np.mean(np.minimum(e * e, 0.01)))


def select_hyper(k: _Kernels, start: dict[str, float] | None = None, sweeps: int = 2, criterion: str = "loo"
                 ) -> dict[str, float]:
    """Coordinate ascent of `_score` over the grids (each step a Cholesky of size N)."""
    hyper = dict(start or DEFAULT_HYPER)
    best = _score(k, hyper, criterion)
    for _ in range(sweeps):
        changed = False
        for name in COMPONENTS + ("noise",):
            for v in (NOISE_GRID if name == "noise" else TAU_GRID):
                if v == hyper[name]:
                    continue
                trial = {**hyper, name: v}
                sc = _score(k, trial, criterion)
                if sc > best + 0.01 * abs(best) + 1e-9:      # a change must earn 1%: few timings, many knobs
                    best, hyper, changed = sc, trial, True
        if not changed:
            break
    return hyper


def _posterior(layout: OperatorLayout, k: _Kernels, m: np.ndarray, F: np.ndarray, theta: np.ndarray,
               zs: dict[str, sp.csr_matrix], hyper: dict[str, float]) -> np.ndarray:
    a = sla.cho_solve(sla.cho_factor(_gram(k, hyper), lower=True, check_finite=False), k.resid, check_finite=False)
    delta = np.zeros_like(m)
    t2 = {c: hyper[c] ** 2 for c in COMPONENTS}
    if t2["basis"] > 0:
        delta += t2["basis"] * (F * theta[None, :]) @ (k.loads["basis"].T @ a)
    for g in FAMILIES:
        if t2[g] > 0:
            delta += t2[g] * m * np.asarray(zs[g] @ (k.loads[g].T @ a)).reshape(-1)
    if t2["op"] > 0:
        delta += t2["op"] * m * np.asarray(k.loads["op"].T @ a).reshape(-1)
    return np.maximum(m + delta, 0.02 * m)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------
@dataclass
class CalibrationResult:
    table: LatencyTable
    report: dict[str, Any]
    columns: np.ndarray = field(repr=False)


class _Fit:
    """One fit on given pairs with optional fixed hyper-parameters (used for the final fit and for CV folds)."""

    def __init__(self, layout: OperatorLayout, F: np.ndarray, names: list[str], zs, enc: np.ndarray,
                 y: np.ndarray, lam: float | None = None, subset: str | None = None,
                 hyper: dict[str, float] | None = None, select: bool = True, seed: int = 0, criterion: str = "loo",
                 sweeps: int = 2):
        A = layout.counts(enc)
        AF = np.asarray(A @ F)
        self.criterion = criterion
        self.theta, self.lam, self.subset, wt = fit_basis(AF, y, names, lam, subset, seed=seed)
        m = F @ self.theta
        pos = m[m > 0]
        m = np.maximum(m, 1e-3 * (np.median(pos) if len(pos) else 1.0))
        self.m = m
        k = _kernels(layout, A, y, m, F, self.theta, zs, wt)
        ks = k if len(y) <= SELECT_MAX else k.subset(np.sort(np.random.default_rng(seed).choice(
            len(y), SELECT_MAX, replace=False)))       # the hyper-parameters are ratios: a subset tells them
        self.hyper = (select_hyper(ks, hyper, sweeps=sweeps, criterion=criterion) if select and len(y) >= MIN_SELECT
                      else dict(hyper or DEFAULT_HYPER))
        self.x = _posterior(layout, k, m, F, self.theta, zs, self.hyper)


def agreement(pred: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = np.abs(np.asarray(pred) / np.asarray(measured) - 1.0)
    return {"share_within_10": float(np.mean(rel <= 0.10)), "share_within_5": float(np.mean(rel <= 0.05)),
            "median_abs_rel_err": float(np.median(rel)), "n": int(len(rel))}


def fit_calibration(spec: SupernetSpec, enc: np.ndarray, measured_ms: np.ndarray, *,
                    prior: LatencyTable | None = None, resolutions: Sequence[int] | None = None,
                    batch_size: int = 1, cv_folds: int = 5, seed: int = 0, criterion: str = "loo",
                    environment: dict[str, Any] | None = None) -> CalibrationResult:
    """Fit a calibrated table of `spec` from (encoded config, measured ms) pairs; see the module docstring.

    `resolutions`: the table's resolutions (default: the prior's, else every resolution of `spec`); timings must
    lie in them, and resolutions no timing ran are priced by the cost-model basis. `cv_folds` (0 = none): the
    held-out agreement recorded in the provenance, from refits on K-1 folds with the selected hyper-parameters.
    """
    t0 = time.perf_counter()
    enc, y = _check_pairs(enc, measured_ms)
    if prior is not None and prior.spec.name != spec.name:
        raise ValueError(f"the prior table is for {prior.spec.name}, not {spec.name}")
    res = tuple(resolutions) if resolutions is not None else (prior.resolutions if prior is not None
                                                               else spec.resolutions)
    layout = layout_for(spec, tuple(sorted(int(r) for r in res)), int(batch_size))
    layout.check_resolutions(enc)
    F, names = _design(layout, layout.from_table(prior) if prior is not None else None)
    zs = {g: _one_hot(layout.groups[g]) for g in FAMILIES}
    fit = _Fit(layout, F, names, zs, enc, y, seed=seed, criterion=criterion)
    A = layout.counts(enc)
    pred_fit = np.asarray(A @ fit.x).reshape(-1)
    cv = cross_validate(layout, F, names, zs, enc, y, fit, cv_folds, seed) if cv_folds else None
    fixed_split = _fixed_split(layout, fit.theta, names, prior)
    report = {"method": METHOD, "n_timings": int(len(y)), "batch_size": int(batch_size),
              "prior": (prior.source if prior is not None else "cost-model"),
              "resolutions": list(layout.resolutions), "ridge": fit.lam, "features": fit.subset,
              "hyper": {k: float(v) for k, v in fit.hyper.items()},
              "theta": {n: float(t) for n, t in zip(names, fit.theta) if t > 0},
              "fit": agreement(pred_fit, y), "cv": cv, "fit_seconds": round(time.perf_counter() - t0, 4)}
    env = dict(environment or {})
    env.update({"calibration": report, "calibration_pairs": int(len(y)), "batch_size": int(batch_size)})
    means = layout.to_means(fit.x, fixed_split)
    table = LatencyTable(spec, {r: {k: {"mean": v} for k, v in t.items()} for r, t in means.items()},
                         source="calibrated", environment=env, batch_size=batch_size)
    report["fit_seconds"] = env["calibration"]["fit_seconds"] = round(time.perf_counter() - t0, 4)
    return CalibrationResult(table, report, fit.x)


def cross_validate(layout, F, names, zs, enc, y, full: "_Fit", folds: int = 5, seed: int = 0
                   ) -> dict[str, float] | None:
    """Held-out agreement of refits on K-1 folds, each choosing its own ridge, feature set and
    hyper-parameters (nested: nothing of the held-out fold is seen; the hyper-parameter search starts from the
    full fit's and runs one sweep)."""
    n = len(y)
    k = min(folds, n)
    if k < 2 or n < 4:
        return None
    fold = np.random.default_rng(seed + 1).permutation(n) % k
    pred = np.empty(n)
    for f in range(k):
        tr, te = fold != f, fold == f
        fit = _Fit(layout, F, names, zs, enc[tr], y[tr], seed=seed, criterion=full.criterion, hyper=full.hyper,
                   sweeps=1)
        pred[te] = np.asarray(layout.counts(enc[te]) @ fit.x).reshape(-1)
    return {**agreement(pred, y), "folds": int(k)}


def _fixed_split(layout: OperatorLayout, theta: np.ndarray, names: list[str], prior: LatencyTable | None
                 ) -> np.ndarray:
    """(R, 6) how each resolution's fixed sum is shared among its six operators: the prior's shares, else the
    fitted fixed-operator features'."""
    if prior is not None:
        return np.maximum(layout.fixed_from_table(prior), 1e-12)
    idx = [names.index(n) for n in ("fixed_macs", "fixed_act", "fixed_const")]
    share = layout.fixed_ops @ theta[idx]
    return np.where(share.sum(axis=1, keepdims=True) > 0, share, 1.0)


def calibrate(prior: LatencyTable | None, enc: np.ndarray, measured_ms: np.ndarray, *,
              spec: SupernetSpec | None = None, environment: dict[str, Any] | None = None, **kw) -> LatencyTable:
    """`fit_calibration(...).table` with the prior's spec (or `spec=` without a prior)."""
    if prior is None and spec is None:
        raise ValueError("pass a prior table or spec=")
    return fit_calibration(prior.spec if prior is not None else spec, enc, measured_ms, prior=prior,
                           environment=environment, **kw).table


def _equal_share_theta(layout: OperatorLayout, cand: np.ndarray) -> np.ndarray:
    """The cost-model features' equal-share weights: each feature worth the same share of an average config."""
    scale = np.asarray(layout.counts(cand) @ layout.F).mean(axis=0)
    return np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0) / max((scale > 0).sum(), 1)


def cost_model_table(spec: SupernetSpec, resolutions: Sequence[int] | None = None, *, typical_ms: float = 1.0,
                     batch_size: int = 1, pool: int = 256, seed: int = 0) -> LatencyTable:
    """A complete table priced by the cost-model basis alone (the equal-share shape `suggest_configs` starts
    from), scaled so that an average random sub-network sums to `typical_ms`. A shape, not a measurement: it
    is what a device with no timings looks like to the calibration (an honest example or placeholder)."""
    res = tuple(sorted(int(r) for r in (resolutions if resolutions is not None else spec.resolutions)))
    layout = layout_for(spec, res, int(batch_size))
    cand = spec.sample_encoded(pool, np.random.default_rng(seed), layout.resolutions)
    theta = _equal_share_theta(layout, cand)
    _, names = _design(layout, None)
    x = layout.F @ theta
    x *= float(typical_ms) / max(float(np.asarray(layout.counts(cand) @ x).mean()), 1e-300)
    means = layout.to_means(x, _fixed_split(layout, theta, names, None))
    return LatencyTable(spec, {r: {k: {"mean": v} for k, v in t.items()} for r, t in means.items()},
                        source="calibrated", environment={"method": "cost-model"}, batch_size=int(batch_size))


# ----------------------------------------------------------------------------------------------------
# Which configs to time next
# ----------------------------------------------------------------------------------------------------
def _relative_loads(layout: OperatorLayout, A: sp.csr_matrix, m: np.ndarray, F: np.ndarray, theta: np.ndarray,
                    zs: dict[str, sp.csr_matrix], hyper: dict[str, float]) -> tuple[np.ndarray, sp.csr_matrix]:
    """Dense [tau_c * U_c] of the low-rank components and the sparse tau_op * A m, rows relative to A m."""
    inv = sp.diags(1.0 / np.maximum(np.asarray(A @ m).reshape(-1), 1e-300))
    Am = (inv @ A @ sp.diags(m)).tocsr()
    parts = [hyper["basis"] * np.asarray(inv @ A @ (F * theta[None, :]))]
    parts += [hyper[g] * (Am @ zs[g]).toarray() for g in FAMILIES]
    return np.hstack(parts), Am * hyper["op"]


def suggest_configs(spec: SupernetSpec, n: int, *, table: LatencyTable | None = None,
                    observed: np.ndarray | None = None, hyper: dict[str, float] | None = None,
                    resolutions: Sequence[int] | None = None, batch_size: int = 1, pool: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The `n` configs (from a random pool) whose timings would most reduce the model's summed relative predictive
    variance over the pool, chosen greedily, each as if its timing were known before the next is chosen (so they
    spread over the feature space and the families), conditioned on the configs already timed (`observed`).

    `table`: a table whose means set the model's mean (default: the cost-model features' equal-share shape,
    which in bench/bench_calibration.py chose better timings than a table fitted on a few timings);
    `hyper`: the prior variances (default: `DEFAULT_HYPER`). Returns (encoded configs, their
    relative predictive standard deviation before any of them is timed)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    res = tuple(resolutions) if resolutions is not None else (table.resolutions if table is not None
                                                               else spec.resolutions)
    layout = layout_for(spec, tuple(sorted(int(r) for r in res)), int(batch_size))
    hyper = {**DEFAULT_HYPER, **(hyper or {})}
    rng = np.random.default_rng(seed)
    cand = spec.sample_encoded(max(pool, n), rng, layout.resolutions)
    cand = np.unique(cand, axis=0)
    obs = np.zeros((0, spec.enc_width), dtype=np.int32) if observed is None else layout.check_resolutions(observed)
    F = layout.F
    if table is not None:
        m = np.maximum(layout.from_table(table), 1e-12)
        theta = nnls(F / m[:, None], np.ones(len(m)), maxiter=50 * F.shape[1])[0]
    else:
        theta = _equal_share_theta(layout, cand)
        m = np.maximum(F @ theta, 1e-12)
    zs = {g: _one_hot(layout.groups[g]) for g in FAMILIES}
    A = layout.counts(np.concatenate([obs, cand]))
    low, Am = _relative_loads(layout, A, m, F, theta, zs, hyper)
    C = low @ low.T + (Am @ Am.T).toarray()
    no, s2 = len(obs), hyper["noise"] ** 2
    if no:
        Koo = C[:no, :no] + s2 * np.eye(no)
        X = sla.cho_solve(sla.cho_factor(Koo, lower=True), C[:no, no:])
        C = C[no:, no:] - C[no:, :no] @ X
    else:
        C = C.copy()
    sd0 = np.sqrt(np.maximum(np.diag(C), 0.0))
    chosen: list[int] = []
    for _ in range(min(n, len(cand))):
        # the pick that most reduces the summed predictive variance over the whole pool (not the pick that is
        # itself most uncertain: that favours extreme configs unlike the ones the search will price)
        gain = (C * C).sum(axis=0) / (np.diag(C) + s2)
        gain[chosen] = -np.inf
        j = int(np.argmax(gain))
        chosen.append(j)
        c = C[:, j].copy()
        C -= np.outer(c, c) / (c[j] + s2)
    return cand[chosen], sd0[chosen]


# ----------------------------------------------------------------------------------------------------
# The family baseline
# ----------------------------------------------------------------------------------------------------
class FamilyBaseline:
    """8-feature operator-family model by NNLS on relative residuals: pointwise MACs, depthwise MACs per kernel
    size, block count, SE MACs, resolution^2, a constant (the baseline issue 14 measures against)."""

    def __init__(self, spec: SupernetSpec, resolutions: Sequence[int] | None = None):
        self.layout = layout_for(spec, tuple(sorted(resolutions or spec.resolutions)))
        names = self.layout.names
        cols = ["pw_macs"] + [f"dw_macs_k{k}" for k in spec.ks_list] + ["blocks", "se_macs"]
        self._F = self.layout.F[:, [names.index(c) for c in cols]]
        self.coef: np.ndarray | None = None

    def features(self, enc: np.ndarray) -> np.ndarray:
        A = self.layout.counts(enc)
        r = np.asarray(enc)[:, -1].astype(np.float64)
        return np.column_stack([np.asarray(A @ self._F), r ** 2, np.ones(len(r))])

    def fit(self, enc: np.ndarray, y: np.ndarray) -> "FamilyBaseline":
        X = self.features(enc) / np.asarray(y)[:, None]
        s = np.where(X.mean(axis=0) > 0, X.mean(axis=0), 1.0)
        self.coef = nnls(X / s, np.ones(len(y)), maxiter=500)[0] / s
        return self

    def predict(self, enc: np.ndarray) -> np.ndarray:
        return self.features(enc) @ self.coef


def family_baseline(spec: SupernetSpec, enc: np.ndarray, y: np.ndarray, resolutions=None) -> FamilyBaseline:
    return FamilyBaseline(spec, resolutions).fit(enc, y)


# ----------------------------------------------------------------------------------------------------
# Helpers kept from the first calibration (tests, benches)
# ----------------------------------------------------------------------------------------------------
def operator_columns(table: LatencyTable) -> list[tuple[int, str]]:
    return [(r, k) for r in table.resolutions for k in sorted(table.tables[r])]


def count_matrix(table: LatencyTable, enc: np.ndarray, columns: Sequence[tuple[int, str]] | None = None
                 ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(N, n_ops) dense operator counts of each encoded config over `columns` (default: every (r, key))."""
    spec = table.spec
    cols = list(columns) if columns is not None else operator_columns(table)
    col_idx = {c: i for i, c in enumerate(cols)}
    B, S = spec.n_blocks, spec.n_stages
    enc = np.asarray(enc)
    A = np.zeros((len(enc), len(cols)))
    mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
    for i, row in enumerate(enc):
        r = int(row[-1])
        for k in fixed_operator_keys(spec, r):
            A[i, col_idx[(r, k)]] += 1
        for b in np.nonzero(mask[i])[0]:
            A[i, col_idx[(r, block_operator_key(spec, r, int(b), int(row[b]), int(row[B + b])))]] += 1
    return A, cols


def share_within(table: LatencyTable, enc: np.ndarray, measured_ms: np.ndarray, tolerance: float = 0.10) -> float:
    """Fraction of pairs whose table prediction is within +-tolerance of the measurement."""
    pred = table.predict(enc)
    return float(np.mean(np.abs(pred / np.asarray(measured_ms) - 1.0) <= tolerance))


def calibration_curve(prior: LatencyTable | None, enc_train: np.ndarray, y_train: np.ndarray,
                      enc_test: np.ndarray, y_test: np.ndarray, ns: Sequence[int] = (5, 10, 20, 50, 100), *,
                      spec: SupernetSpec | None = None, tolerance: float = 0.10, **kw) -> list[dict[str, float]]:
    """Held-out share within +-tolerance (and median |relative error|) after calibrating on the first N pairs."""
    out = []
    if prior is not None:
        pred = prior.predict(enc_test)
        out.append({"n": 0, "share_within": float(np.mean(np.abs(pred / y_test - 1) <= tolerance)),
                    "median_abs_rel_err": float(np.median(np.abs(pred / y_test - 1)))})
    for n in ns:
        if n > len(y_train):
            break
        t = calibrate(prior, enc_train[:n], y_train[:n], spec=spec, cv_folds=0, **kw)
        pred = t.predict(enc_test)
        out.append({"n": int(n), "share_within": float(np.mean(np.abs(pred / y_test - 1) <= tolerance)),
                    "median_abs_rel_err": float(np.median(np.abs(pred / y_test - 1)))})
    return out
