"""Evolutionary sub-network search (reference §5), fully vectorized over encoded populations.

The population is an int32 array of encoded configs (`spec.py` layout). Mutation and crossover are numpy masks;
efficiency (latency table gathers, cost callables) and predicted accuracy are computed per batch. Constraints are
enforced by batched rejection sampling with a bounded number of attempts, so an infeasible request can never loop:
impossible budgets are detected up front (`InfeasibleError` with the smallest achievable value of each violated
constraint) and a generation that cannot fill its quota falls back to copies of feasible parents. While the parents
stay the same (most late generations), the children of several generations are made and predicted in one batch and
kept up to the first generation that changes the parents, which gives the same search as one generation at a time.
"""
from __future__ import annotations

import math
import time
from itertools import repeat
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .costs import CostModel
from .spec import SubnetConfig, SupernetSpec, active_mask, canonicalize_encoded

METRICS = ("latency_ms", "macs", "params", "peak_memory_bytes")
MetricFn = Callable[[np.ndarray], np.ndarray]


class InfeasibleError(ValueError):
    """No sub-network satisfies the request. `minima` holds the best achievable value of each violated constraint
    (the smallest latency/MACs/params/peak memory, or for `min_accuracy` the best predicted accuracy found)."""

    def __init__(self, minima: Mapping[str, float], limits: Mapping[str, float], message: str | None = None):
        self.minima = dict(minima)
        self.limits = dict(limits)
        parts = [f"{k} {'>=' if k == 'min_accuracy' else '<='} {limits.get(k)} is not achievable "
                 f"({'best predicted' if k == 'min_accuracy' else 'smallest achievable'}: {v:.6g})"
                 for k, v in self.minima.items()]
        super().__init__(message or "infeasible request: " + "; ".join(parts))


class SearchCancelled(RuntimeError):
    """Raised when `should_stop` says so (checked once per generation)."""

    def __init__(self, generation: int):
        super().__init__(f"search cancelled at generation {generation}")
        self.generation = generation


# ----------------------------------------------------------------------------------------------------
# Efficiency metrics and constraints
# ----------------------------------------------------------------------------------------------------
class Efficiency:
    """Named efficiency metrics as vectorized callables `enc (N, W) -> (N,)`.

    `latency_ms` may be a `LatencyTable` (exact separable minimum) or any callable; `macs`, `params`,
    `peak_memory_bytes` are callables (e.g. `ofa_core.costs.CostModel(spec).macs`). Missing metrics are simply
    unavailable (a constraint on them raises ValueError).
    """

    def __init__(self, spec: SupernetSpec, latency_ms: Any = None, macs: MetricFn | None = None,
                 params: MetricFn | None = None, peak_memory_bytes: MetricFn | None = None):
        self.spec = spec
        self.latency_table = latency_ms if hasattr(latency_ms, "block_lat") else None
        fns = {"latency_ms": latency_ms.predict if self.latency_table is not None else latency_ms,
               "macs": macs, "params": params, "peak_memory_bytes": peak_memory_bytes}
        self.fns: dict[str, MetricFn] = {k: v for k, v in fns.items() if v is not None}
        self._min_cache: dict[tuple, tuple[float, np.ndarray]] = {}

    @classmethod
    def default(cls, spec: SupernetSpec, latency_table: Any = None) -> "Efficiency":
        """Latency from a table plus MACs/params/peak memory from `ofa_core.costs.CostModel`."""
        cm = CostModel(spec)
        return cls(spec, latency_ms=latency_table, macs=cm.macs, params=cm.params, peak_memory_bytes=cm.peak_memory)

    @property
    def names(self) -> list[str]:
        return [m for m in METRICS if m in self.fns]

    def evaluate(self, enc: np.ndarray, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        names = self.names if names is None else list(names)
        return {n: np.asarray(self.fns[n](enc), dtype=np.float64).reshape(-1) for n in names}

    def minimum(self, name: str, resolutions: Sequence[int] | None = None) -> tuple[float, np.ndarray]:
        """Smallest achievable value of metric `name` and an encoded config attaining it.

        Latency tables: exact (per-block minima are separable given depth and resolution). Other callables: the
        same separable construction from per-block probes (exact for additive costs such as MACs and params), then
        the constructed config and the all-minimum config are evaluated and the smaller real value is returned, so
        the figure is always achieved by a real sub-network.
        """
        res = tuple(resolutions) if resolutions is not None else tuple(self.spec.resolutions)
        key = (name, res)
        if key in self._min_cache:
            return self._min_cache[key]
        if name == "latency_ms" and self.latency_table is not None:
            out = self.latency_table.minimum([r for r in res if r in self.latency_table.tables] or None)
        else:
            out = _separable_minimum(self.spec, self.fns[name], res)
        self._min_cache[key] = out
        return out


def _separable_minimum(spec: SupernetSpec, fn: MetricFn, resolutions: Sequence[int]) -> tuple[float, np.ndarray]:
    B, S, D = spec.n_blocks, spec.n_stages, spec.max_depth
    ks, es, ds = spec.ks_list, spec.expand_list, spec.depth_list
    combos = [(k, e) for k in ks for e in es]
    cands = []
    for r in resolutions:
        base = np.concatenate([[min(ks)] * B, [min(es)] * B, [D] * S, [r]]).astype(np.int32)
        probes = [base]
        for b in range(B):
            for k, e in combos:
                p = base.copy()
                p[b], p[B + b] = k, e
                probes.append(p)
        for s in range(S):
            for d in ds:
                p = base.copy()
                p[2 * B + s] = d
                probes.append(p)
        vals = np.asarray(fn(np.stack(probes)), dtype=np.float64)
        v0 = vals[0]
        blk = vals[1:1 + B * len(combos)].reshape(B, len(combos)) - v0          # delta of each (k, e) per block
        dep = vals[1 + B * len(combos):].reshape(S, len(ds)) - v0               # delta of each depth per stage
        bmin = blk.min(axis=1).reshape(S, D)
        cum = np.concatenate([np.zeros((S, 1)), np.cumsum(bmin, axis=1)], axis=1)
        stage_cost = dep + cum[:, np.asarray(ds)]
        d_best = np.asarray(ds)[stage_cost.argmin(axis=1)]
        enc = base.copy()
        arg = blk.argmin(axis=1)
        enc[:B] = [combos[a][0] for a in arg]
        enc[B:2 * B] = [combos[a][1] for a in arg]
        enc[2 * B:2 * B + S] = d_best
        cands += [enc, np.concatenate([[min(ks)] * B, [min(es)] * B, [min(ds)] * S, [r]]).astype(np.int32)]
    cands = canonicalize_encoded(spec, np.stack(cands))
    vals = np.asarray(fn(cands), dtype=np.float64)
    i = int(vals.argmin())
    return float(vals[i]), cands[i]


LIMIT_SLACK = 1e-9


def within_limit(limit: float) -> float:
    """The largest value that counts as within `limit` (float rounding slack of LIMIT_SLACK, relative)."""
    return limit + abs(limit) * LIMIT_SLACK


@dataclass
class Constraints:
    """Upper limits on efficiency metrics (any combination) and an optional predicted-accuracy floor."""

    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None
    peak_memory_bytes: float | None = None
    min_accuracy: float | None = None

    @classmethod
    def coerce(cls, c: "Constraints | Mapping[str, float] | None") -> "Constraints":
        if c is None:
            return cls()
        if isinstance(c, Constraints):
            return c
        unknown = set(c) - set(METRICS) - {"min_accuracy"}
        if unknown:
            raise ValueError(f"unknown constraint(s) {sorted(unknown)}; known: {list(METRICS) + ['min_accuracy']}")
        return cls(**{k: (None if v is None else float(v)) for k, v in c.items()})

    def limits(self) -> dict[str, float]:
        """The limits candidates are held to: each given value plus a relative 1e-9, so that a budget equal to a
        reported figure (a float sum printed and parsed back) admits the sub-network it was reported for."""
        return {m: within_limit(float(getattr(self, m))) for m in METRICS if getattr(self, m) is not None}

    def to_dict(self) -> dict[str, float]:
        d = {m: float(getattr(self, m)) for m in METRICS if getattr(self, m) is not None}
        if self.min_accuracy is not None:
            d["min_accuracy"] = float(self.min_accuracy)
        return d


@dataclass
class SearchResult:
    enc: np.ndarray                      # canonical encoded config (W,) int32
    config: SubnetConfig
    predicted_acc: float
    latency_ms: float | None
    macs: float | None
    params: float | None
    peak_memory_bytes: float | None
    generations: int
    wall_time_s: float
    objective: str = "accuracy"
    constraints: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)   # best fitness after each generation
    # with top_k > 1: the best top_k distinct feasible sub-networks of the final population, best first (the
    # first is this result); empty otherwise
    candidates: list["SearchResult"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "predicted_acc": self.predicted_acc, "latency_ms": self.latency_ms,
                "macs": self.macs, "params": self.params, "peak_memory_bytes": self.peak_memory_bytes,
                "generations": self.generations, "wall_time_s": self.wall_time_s, "objective": self.objective,
                "constraints": dict(self.constraints)}


# ----------------------------------------------------------------------------------------------------
# Vectorized genetic operators
# ----------------------------------------------------------------------------------------------------
class _Space:
    def __init__(self, spec: SupernetSpec, resolutions: Sequence[int] | None):
        self.spec = spec
        self.B, self.S = spec.n_blocks, spec.n_stages
        self.ks = np.asarray(spec.ks_list, dtype=np.int32)
        self.es = np.asarray(spec.expand_list, dtype=np.int32)
        self.ds = np.asarray(spec.depth_list, dtype=np.int32)
        self.rs = np.asarray(sorted(resolutions if resolutions is not None else spec.resolutions), dtype=np.int32)
        bad = [int(r) for r in self.rs if not spec.accepts_resolution(int(r))]
        if bad or not len(self.rs):
            raise ValueError(f"resolutions {bad} are not input sizes {spec.name} runs" if bad else "no resolutions")
        self._op_tables()

    def sample(self, n: int, rng: np.random.Generator, skew: bool = False) -> np.ndarray:
        """n random configs; with skew, each row leans towards small values by a random amount (more feasible
        candidates under tight budgets)."""
        B, S = self.B, self.S
        enc = np.empty((n, 2 * B + S + 1), dtype=np.int32)
        if skew:
            a = rng.uniform(1.0, 6.0, size=(n, 1))
            pick = lambda vals, shape: vals[np.minimum((rng.random(shape) ** a * len(vals)).astype(np.int64),
                                                       len(vals) - 1)]
        else:
            pick = lambda vals, shape: vals[rng.integers(0, len(vals), size=shape)]
        enc[:, :B] = pick(self.ks, (n, B))
        enc[:, B:2 * B] = pick(self.es, (n, B))
        enc[:, 2 * B:2 * B + S] = pick(self.ds, (n, S))
        enc[:, -1] = pick(self.rs, (n, 1))[:, 0]
        return enc

    def fresh_where(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An int32 array shaped like `mask` (..., W) holding, where `mask` is set, a value drawn uniformly from
        that gene's choices (zeros elsewhere; only the set entries are drawn)."""
        out = np.zeros(mask.shape, dtype=np.int32)
        flat = np.flatnonzero(mask)
        col = flat % mask.shape[-1]
        n = self._n_choice[col]
        pick = (rng.random(len(col), dtype=np.float32) * n).astype(np.int32)
        np.minimum(pick, n.astype(np.int32) - 1, out=pick)
        out.ravel()[flat] = self._vals_flat[self._col_off[col] + pick]
        return out

    def _op_tables(self) -> None:
        B, S = self.B, self.S
        W = 2 * B + S + 1
        groups = [self.ks] * B + [self.es] * B + [self.ds] * S + [self.rs]
        width = max(len(g) for g in groups)
        vals = np.zeros((W, width), dtype=np.int32)
        for c, g in enumerate(groups):
            vals[c, :len(g)] = g
        self._vals_flat = vals.ravel()
        self._col_off = np.arange(W) * width
        self._n_choice = np.asarray([len(g) for g in groups], dtype=np.float32)
        # gene groups: block b (its ks column b, plus e column B + b), stage s (depth column 2B + s), resolution
        self._group_col = np.concatenate([np.arange(B), 2 * B + np.arange(S), [2 * B + S]]).astype(np.intp)
        self._group_n = self._n_choice[self._group_col].astype(np.intp)
        self._mask_col = np.concatenate([np.arange(B), np.arange(B), B + np.arange(S), [B + S]])   # column -> group

    def mutate(self, parents: np.ndarray, n: int, rng: np.random.Generator, p: float, p_res: float) -> np.ndarray:
        """n mutants of random parents: each block's (ks, e) is resampled together with prob p, each stage's depth
        with prob p, the resolution with prob p_res. One uniform draw per gene group, and new values are drawn only
        for the groups that mutate (about a tenth); no Python per candidate."""
        B, S = self.B, self.S
        u = rng.random((n, B + S + 2), dtype=np.float32)
        pidx = (u[:, 0] * len(parents)).astype(np.intp)
        np.minimum(pidx, len(parents) - 1, out=pidx)
        out = parents[pidx]
        thr = np.full(B + S + 1, p, dtype=np.float32)
        thr[-1] = p_res
        rows, grp = np.nonzero(u[:, 1:] < thr)                    # mutating (candidate, gene group) pairs
        if len(rows):
            col = self._group_col[grp]                            # ks column of a block; depth or r column
            v = rng.random((len(rows), 2), dtype=np.float32)
            n_first = self._group_n[grp]
            pick = np.minimum((v[:, 0] * n_first).astype(np.intp), n_first - 1)
            out[rows, col] = self._vals_flat[self._col_off[col] + pick]
            blk = grp < B                                         # a block's expand ratio mutates with its ks
            rb, cb = rows[blk], col[blk] + B
            pick = np.minimum((v[blk, 1] * len(self.es)).astype(np.intp), len(self.es) - 1)
            out[rb, cb] = self.es[pick]
        return out

    def crossover(self, parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n uniform crossovers of two random parents, gene by gene (one random bit per gene)."""
        W = parents.shape[1]
        idx = rng.integers(0, len(parents), size=(n, 2))
        nbytes = (W + 7) // 8
        bits = np.unpackbits(np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes), axis=1,
                             count=W).view(bool)
        return np.where(bits, parents[idx[:, 0]], parents[idx[:, 1]])

    def neighbours(self, row: np.ndarray) -> np.ndarray:
        """Every config one gene-group away from `row`: one active block's (ks, e), one stage's depth, or r."""
        B, S = self.B, self.S
        out = []
        act = active_mask(self.spec, row[None, 2 * B:2 * B + S])[0]
        kk, ee = np.meshgrid(self.ks, self.es, indexing="ij")
        kk, ee = kk.ravel(), ee.ravel()
        for b in np.nonzero(act)[0]:
            c = np.repeat(row[None], len(kk), axis=0)
            c[:, b], c[:, B + b] = kk, ee
            out.append(c)
        for s in range(S):
            c = np.repeat(row[None], len(self.ds), axis=0)
            c[:, 2 * B + s] = self.ds
            out.append(c)
        c = np.repeat(row[None], len(self.rs), axis=0)
        c[:, -1] = self.rs
        out.append(c)
        return np.concatenate(out).astype(np.int32)


class _ChildPlan:
    """The random part of `gens` generations of children, drawn in one go (a generation then costs a handful of
    array operations instead of a few dozen small random draws).

    Row j of a generation's candidates is `where(mask[j], src[a[j]], src[b[j]])` over `src = [parents; fresh]`:
    a mutant takes a fresh uniformly drawn genome (row `n_par + j` of `src`) in its mutating gene groups (each
    block's ks and e together with prob p, each stage's depth with prob p, r with p_res) and its parent `b[j]`
    elsewhere; a crossover takes each gene from parent `a[j]` or `b[j]` with prob 1/2. The draws do not depend on
    the parents' values, only on their number, so nothing is lost by drawing them ahead."""

    def __init__(self, space: "_Space", n_par: int, k_mut: int, k_cross: int, gens: int, rng: np.random.Generator,
                 p: float, p_res: float):
        B, S = space.B, space.S
        W = 2 * B + S + 1
        self.n_par, self.k_mut, self.k_cross = n_par, k_mut, k_cross
        thr = np.full(B + S + 1, p, dtype=np.float32)
        thr[-1] = p_res
        mut = (rng.random((gens, k_mut, B + S + 1), dtype=np.float32) < thr)[:, :, space._mask_col]
        nbytes = (W + 7) // 8
        cross = np.unpackbits(np.frombuffer(rng.bytes(gens * k_cross * nbytes), dtype=np.uint8)
                              .reshape(gens, k_cross, nbytes), axis=2, count=W).view(bool)
        self.mask = np.concatenate([mut, cross], axis=1)                                  # (gens, K, W)
        self.fresh = space.fresh_where(mut, rng)                                          # (gens, k_mut, W)
        pick = rng.integers(0, n_par, size=(gens, k_mut + 2 * k_cross))
        self.a = np.concatenate([np.broadcast_to(n_par + np.arange(k_mut), (gens, k_mut)), pick[:, k_mut::2]], 1)
        self.b = np.concatenate([pick[:, :k_mut], pick[:, k_mut + 1::2]], axis=1)          # (gens, K)

    def children(self, parents: np.ndarray, g0: int, g1: int | None = None) -> np.ndarray:
        """((g1 - g0) * (k_mut + k_cross), W): the children of generations g0 .. g1 - 1 (default: g0 only) from the
        same parents, generation by generation, mutants first, then crossovers."""
        g1 = g0 + 1 if g1 is None else g1
        a, b, n = self.a[g0:g1], self.b[g0:g1], len(parents)
        fresh = self.fresh[g0:g1]
        if n < self.n_par:                       # fewer feasible parents than planned: fold the indices
            a = np.where(a < self.n_par, a % n, a - self.n_par + n)
            b = b % n
        if g1 - g0 > 1:                          # generation i's fresh rows follow those of the generations before
            a = a + np.where(a >= n, np.arange(g1 - g0)[:, None] * self.k_mut, 0)
        src = np.concatenate([parents, fresh.reshape(-1, fresh.shape[-1])])
        return np.where(self.mask[g0:g1], src[a], src[b]).reshape(-1, src.shape[1])


_MAX_BLOCK = 8                   # most generations whose children are made and predicted together
_PLAN_CHUNK = 50                 # generations one child plan covers (after the first, short one)


class _Problem:
    """Evaluates candidates: efficiency metrics, feasibility, predicted accuracy and the fitness to maximise.

    Works on block codes (ki * n_e + ei per block, n_k * n_e for a block skipped by depth): a latency table is
    summed directly from them (the same gather as `LatencyTable.predict`, without re-validating what the genetic
    operators produce), they key the accuracy cache (canonical: equal sub-networks share a key), and an
    `AccuracyPredictor` takes them directly (`predict_codes`)."""

    max_cache = 2_000_000                                # cached predictions before a reset

    def __init__(self, spec, predictor, efficiency: Efficiency, constraints: Constraints, objective: str,
                 resolutions: Sequence[int] | None = None):
        self.spec, self.predictor, self.eff = spec, predictor, efficiency
        self.limits = constraints.limits()
        self.min_acc = constraints.min_accuracy
        self.objective = objective                       # "accuracy" or a metric name to minimise
        needed = list(self.limits)
        if objective != "accuracy" and objective not in needed:
            needed.append(objective)
        if "latency_ms" in efficiency.fns and "latency_ms" not in needed:
            needed.append("latency_ms")                  # cheap, reported in progress
        self.metric_names = needed
        self._index: dict[bytes, int] = {}              # canonical config key -> id (row of _acc)
        self._acc = np.empty(4096)
        self._n, self.epoch = 0, 0
        B, S = spec.n_blocks, spec.n_stages
        ks, es = list(spec.ks_list), list(spec.expand_list)
        self.B, self.n_codes = B, len(ks) * len(es) + 1
        self._emul = max(es) + 1
        self._lut = np.zeros((max(ks) + 1) * self._emul, dtype=np.uint8)
        for ki, k in enumerate(ks):
            for ei, e in enumerate(es):
                self._lut[k * self._emul + e] = ki * len(es) + ei
        self._stage_cols = 2 * B + np.repeat(np.arange(S), spec.max_depth)
        self._pos = np.tile(np.arange(spec.max_depth), S)
        res = sorted(int(r) for r in (resolutions if resolutions is not None else spec.resolutions))
        self._rcode = np.zeros(max(res) + 1, dtype=np.uint8)                # the searched sizes only
        self._rcode[np.asarray(res)] = np.arange(len(res))
        t = efficiency.latency_table
        self._lat = None
        if (t is not None and hasattr(t, "_flat") and list(t.spec.ks_list) == ks and list(t.spec.expand_list) == es
                and t.spec.n_blocks == B and all(r in t.tables for r in res)):
            roff = np.zeros((max(t.resolutions) + 1, B), dtype=np.intp)
            fix = np.zeros(max(t.resolutions) + 1)
            for ri, r in enumerate(t.resolutions):                   # row of (r, block b, code 0) in t._flat
                roff[r], fix[r] = ri * B * (t._n_combo + 1) + np.arange(B) * (t._n_combo + 1), t.fixed_lat[ri]
            self._lat = (t._flat, roff, fix)
        ps = getattr(predictor, "spec", None)
        self._pred_codes = (predictor.codes_predictor() if hasattr(predictor, "codes_predictor") and ps is not None
                            and list(ps.ks_list) == ks and list(ps.expand_list) == es and ps.n_blocks == B
                            and ps.n_stages == S else None)

    def codes(self, enc: np.ndarray) -> np.ndarray:
        """(N, B) uint8 block codes of encoded configs (`n_codes - 1` for a block skipped by depth)."""
        B = self.B
        combo = self._lut[enc[:, :B] * self._emul + enc[:, B:2 * B]]
        combo[self._pos >= enc[:, self._stage_cols]] = self.n_codes - 1
        return combo

    def keys(self, enc: np.ndarray, codes: np.ndarray) -> list[bytes]:
        k = np.empty((len(enc), self.B + 1), dtype=np.uint8)
        k[:, :-1] = codes
        k[:, -1] = self._rcode[enc[:, -1]]
        return k.view(f"V{self.B + 1}").ravel().tolist()

    def metrics(self, enc: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name in self.metric_names:
            if name == "latency_ms" and self._lat is not None:
                flat, roff, fix = self._lat
                r = enc[:, -1]
                idx = roff[r]                                        # (N, B): each block's row at this r
                idx += codes
                out[name] = flat[idx].sum(axis=1) + fix[r]
            else:
                out[name] = np.asarray(self.eff.fns[name](enc), dtype=np.float64).reshape(-1)
        return out

    def lookup(self, enc: np.ndarray, codes: np.ndarray | None = None, keys: list[bytes] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, predicted accuracy) of each row. The cache is keyed by the canonical config, so equal sub-networks
        share an id (the search dedups parents by it) and are predicted once; one predictor call covers all new
        rows. Ids stay valid until the cache is reset (`epoch` changes), at `max_cache` entries."""
        if codes is None:
            codes = self.codes(enc)
        if keys is None:
            keys = self.keys(enc, codes)
        self.make_room(len(keys))
        index = self._index
        ids = np.fromiter(map(index.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
        miss = np.flatnonzero(ids < 0).tolist()
        if miss:
            mk = [keys[i] for i in miss]
            first = dict(zip(mk[::-1], miss[::-1]))               # each new key -> its first row
            rows = np.fromiter(first.values(), dtype=np.intp, count=len(first))
            if self._pred_codes is not None:
                new = self._pred_codes(codes[rows], enc[rows, -1])
            else:
                new = self.predictor.predict(canonicalize_encoded(self.spec, enc[rows]))
            base, m = self._n, len(rows)
            if base + m > len(self._acc):
                self._acc = np.concatenate([self._acc, np.empty(max(base + m, 2 * len(self._acc)) - len(self._acc))])
            self._acc[base:base + m] = np.asarray(new, dtype=np.float64).reshape(-1)
            self._n = base + m
            index.update(zip(first, range(base, base + m)))
            ids[miss] = list(map(index.__getitem__, mk))
        return ids, self._acc[ids]

    def make_room(self, n: int) -> bool:
        """Reset the cache if `n` more entries would pass `max_cache`; True if it was reset (ids changed)."""
        if len(self._index) + n <= self.max_cache:
            return False
        self._index, self._n, self.epoch = {}, 0, self.epoch + 1
        return True

    @property
    def n_ids(self) -> int:
        """Ids handed out so far (all < n_ids)."""
        return self._n

    def accuracy(self, enc: np.ndarray, codes: np.ndarray | None = None, keys: list[bytes] | None = None
                 ) -> np.ndarray:
        """Predicted accuracy of each row (cached, see `lookup`)."""
        return self.lookup(enc, codes, keys)[1]

    def feasible(self, metrics: dict[str, np.ndarray]) -> np.ndarray:
        ok = None
        for name, lim in self.limits.items():
            ok = metrics[name] <= lim if ok is None else ok & (metrics[name] <= lim)
        return np.ones(len(next(iter(metrics.values()))) if metrics else 0, dtype=bool) if ok is None else ok

    def evaluate(self, enc: np.ndarray, need: int | None = None, predict: bool = True
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """-> (feasible mask, metrics, acc (nan where not computed), fitness (-inf where infeasible)).

        With `need` (and no accuracy floor), only the first `need` feasible rows are kept and predicted."""
        enc = np.asarray(enc, dtype=np.int32)
        codes = self.codes(enc)
        metrics = self.metrics(enc, codes)
        ok = np.ones(len(enc), dtype=bool)
        for name, lim in self.limits.items():
            ok &= metrics[name] <= lim
        if need is not None and self.min_acc is None:
            ok[np.nonzero(ok)[0][need:]] = False
        acc = np.full(len(enc), np.nan)
        if ok.any() and (predict or self.min_acc is not None):
            acc[ok] = self.accuracy(enc[ok], codes[ok])
        if self.min_acc is not None:
            ok &= np.nan_to_num(acc, nan=-np.inf) >= self.min_acc
        fit = np.full(len(enc), -np.inf)
        if self.objective == "accuracy":
            fit[ok] = acc[ok]
        else:
            fit[ok] = -metrics[self.objective][ok]
        return ok, metrics, acc, fit


def _stop_requested(should_stop) -> bool:
    if should_stop is None:
        return False
    if hasattr(should_stop, "is_set"):
        return bool(should_stop.is_set())
    return bool(should_stop())


def _take(d: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in d.items()}


class _Pop:
    def __init__(self, enc, metrics, acc, fit):
        self.enc, self.metrics, self.acc, self.fit = enc, metrics, acc, fit

    def __len__(self):
        return len(self.enc)

    def take(self, idx) -> "_Pop":
        return _Pop(self.enc[idx], _take(self.metrics, idx), self.acc[idx], self.fit[idx])

    @staticmethod
    def cat(pops: list["_Pop"]) -> "_Pop":
        pops = [p for p in pops if len(p)]
        return _Pop(np.concatenate([p.enc for p in pops]),
                    {k: np.concatenate([p.metrics[k] for p in pops]) for k in pops[0].metrics},
                    np.concatenate([p.acc for p in pops]), np.concatenate([p.fit for p in pops]))


def _feasible_batch(problem: _Problem, make: Callable[[int], np.ndarray], n: int, oversample: int,
                    max_attempts: int, predict: bool = True) -> tuple[_Pop | None, int]:
    """Batched rejection sampling: up to `max_attempts` rounds of n*oversample candidates; returns <= n feasible."""
    got: list[_Pop] = []
    have, tried = 0, 0
    for _ in range(max_attempts):
        cand = make(max(n, 1) * oversample)
        tried += len(cand)
        ok, metrics, acc, fit = problem.evaluate(cand, need=n - have, predict=predict)
        idx = np.nonzero(ok)[0][:n - have]
        if len(idx):
            got.append(_Pop(cand[idx], _take(metrics, idx), acc[idx], fit[idx]))
            have += len(idx)
        if have >= n:
            break
    return (_Pop.cat(got) if got else None), tried


# ----------------------------------------------------------------------------------------------------
# Single-objective search
# ----------------------------------------------------------------------------------------------------
def _check_feasible(spec, predictor, efficiency: Efficiency, cons: Constraints, space: _Space, seed: int
                    ) -> list[np.ndarray]:
    """Raise InfeasibleError at once for impossible limits; return known-feasible seed configs."""
    limits = cons.limits()
    for name in limits:
        if name not in efficiency.fns:
            raise ValueError(f"constraint on {name!r} but no such efficiency metric is available "
                             f"(have {efficiency.names})")
    minima, seeds = {}, []
    for name, lim in limits.items():
        v, enc = efficiency.minimum(name, tuple(int(r) for r in space.rs))
        if v > lim:
            minima[name] = v
        else:
            seeds.append(enc)
    if minima:
        raise InfeasibleError(minima, cons.to_dict())
    if seeds:
        seeds_arr = np.stack(seeds)
        ok = np.ones(len(seeds_arr), dtype=bool)
        for name, vals in efficiency.evaluate(seeds_arr, list(limits)).items():
            ok &= vals <= limits[name]
        seeds = list(seeds_arr[ok])
    return seeds


@dataclass(frozen=True)
class _Knobs:
    """The evolution's settings (see `evolutionary_search`)."""
    population_size: int
    generations: int
    parent_ratio: float
    mutation_ratio: float
    mutate_prob: float
    resolution_mutate_prob: float
    oversample: int
    max_attempts: int
    polish_steps: int
    dedup_parents: bool
    init_pool: int

    @property
    def n_par(self) -> int:
        return max(1, int(round(self.parent_ratio * self.population_size)))

    @property
    def n_mut(self) -> int:
        return int(round(self.mutation_ratio * self.population_size))

    @property
    def n_cross(self) -> int:
        return self.population_size - self.n_mut


def _objective_for(cons: Constraints, efficiency: Efficiency, objective: str | None) -> str:
    """'accuracy' (maximised) without an accuracy floor; with one, the metric to minimise (default: latency if
    available, else the first constrained metric)."""
    if cons.min_accuracy is None:
        return "accuracy"
    objective = objective or ("latency_ms" if "latency_ms" in efficiency.fns else
                              (next(iter(cons.limits()), None) or (efficiency.names or [None])[0]))
    if objective is None:
        raise ValueError("an accuracy floor needs an efficiency metric to minimise")
    if objective not in efficiency.fns:
        raise ValueError(f"objective {objective!r} is not an available metric ({efficiency.names})")
    return objective


def _seed_configs(spec, predictor, efficiency: Efficiency, cons: Constraints, space: _Space, knobs: _Knobs,
                  rng: np.random.Generator, resolutions, init, should_stop, check: bool) -> list[np.ndarray]:
    """Known-feasible configs that join the initial population: the cheapest config of each constraint, `init`,
    and, under an accuracy floor, the result of a short accuracy-maximising search under the other limits, whose
    predicted accuracy either proves the floor reachable or is reported in `InfeasibleError`."""
    seeds = _check_feasible(spec, predictor, efficiency, cons, space, 0) if check else []
    if init is not None and len(init):
        seeds += list(np.asarray(init, dtype=np.int32).reshape(-1, spec.enc_width))
    if cons.min_accuracy is not None and check:
        pre = evolutionary_search(spec, predictor, efficiency, Constraints(**cons.limits()),
                                  population_size=min(knobs.population_size, 100),
                                  generations=min(knobs.generations, 60), parent_ratio=knobs.parent_ratio,
                                  mutation_ratio=knobs.mutation_ratio, mutate_prob=knobs.mutate_prob,
                                  resolution_mutate_prob=knobs.resolution_mutate_prob, resolutions=resolutions,
                                  seed=rng, oversample=knobs.oversample, max_attempts=knobs.max_attempts,
                                  polish_steps=knobs.polish_steps, should_stop=should_stop, _check=False)
        if pre.predicted_acc < cons.min_accuracy:
            raise InfeasibleError({"min_accuracy": pre.predicted_acc}, cons.to_dict())
        seeds.append(pre.enc)
    return seeds


def _initial_population(problem: _Problem, space: _Space, knobs: _Knobs, rng: np.random.Generator,
                        seeds: list[np.ndarray], cons: Constraints) -> _Pop:
    """Half uniform (as published), half leaning small, plus the feasible seeds (with init_pool > 1: the best
    population_size of init_pool * population_size feasible samples), topped up by mutation (bounded)."""
    n, over, attempts = knobs.population_size, knobs.oversample, knobs.max_attempts
    pop, _ = _feasible_batch(problem, lambda m: np.concatenate([space.sample(m // 2, rng),
                                                                space.sample(m - m // 2, rng, skew=True)]),
                             n * max(1, knobs.init_pool), over, attempts)
    if pop is not None and len(pop) > n:
        pop = pop.take(np.argsort(-pop.fit, kind="stable")[:n])
    if seeds:
        s_enc = np.stack(seeds).astype(np.int32)
        ok, metrics, acc, fit = problem.evaluate(s_enc)
        if ok.any():
            sp = _Pop(s_enc[ok], _take(metrics, ok), acc[ok], fit[ok])
            pop = sp if pop is None else _Pop.cat([pop, sp])
    if pop is None:
        raise InfeasibleError({}, cons.to_dict(), "infeasible request: no sub-network satisfying all "
                              f"constraints together was found in {attempts} rounds of sampling")
    if len(pop) < n:
        more, _ = _feasible_batch(problem, lambda m: space.mutate(pop.enc, m, rng, 0.3, 0.5), n - len(pop), over,
                                  attempts)
        if more is not None:
            pop = _Pop.cat([pop, more])
    return pop


class _ParentPicker:
    """The `n_par` fittest parents, distinct by predictor-cache id (duplicates add nothing and cost diversity);
    duplicates fill up, best first, only when too few are distinct. Scratch arrays are kept between generations."""

    def __init__(self, n_par: int, population_size: int, dedup: bool):
        self.n_par, self.dedup = n_par, dedup
        self.stamp = np.zeros(0, dtype=np.intp)
        self.rank = np.arange(4 * population_size + 4 * n_par, dtype=np.intp)

    def pick(self, fit: np.ndarray, ids: np.ndarray, n_ids: int) -> tuple[np.ndarray, bool]:
        """(indices of the parents, whether they are all distinct)."""
        order = np.argsort(-fit, kind="stable")
        if not self.dedup:
            return order[:self.n_par], True
        s_ids = ids[order]
        if len(self.stamp) < n_ids:
            self.stamp = np.zeros(2 * n_ids, dtype=np.intp)
        if len(self.rank) < len(s_ids):
            self.rank = np.arange(2 * len(s_ids), dtype=np.intp)
        pos = self.rank[:len(s_ids)]
        self.stamp[s_ids[::-1]] = pos[::-1]  # the last write wins: each id's first position in s_ids
        first = self.stamp[s_ids] == pos
        sel = order[first][:self.n_par]
        if len(sel) < self.n_par:
            return np.concatenate([sel, order[~first]])[:self.n_par], False
        return sel, True


@dataclass
class _Brood:
    """The children made for up to `L` generations from the same parents (`n_ok`: feasible mutants and
    crossovers per generation; `made`: generations made before a short one cut the block)."""
    enc: np.ndarray
    codes: np.ndarray
    metrics: dict[str, np.ndarray]
    n_ok: np.ndarray
    L: int
    made: int


class _Evolution:
    """The generations of one search, from an initial population to the final one.

    Children: mutants + crossovers from a `_ChildPlan`, rejection-sampled against the limits (the plan is sized by
    the share that was feasible lately). The parents stay the same from one generation to the next unless a child
    beats the last of them (late in a search, in >90% of generations), and the plan does not depend on the parents,
    so the children of up to `block` generations are made, checked and predicted together; the generations after
    the first one that changes the parents are dropped (their predictions stay cached) and redone from the new
    parents. The result is that of one generation at a time."""

    def __init__(self, problem: _Problem, space: _Space, knobs: _Knobs, rng: np.random.Generator, pop: _Pop,
                 progress: Callable[[int, float, float], None] | None):
        self.problem, self.space, self.k, self.rng, self.progress = problem, space, knobs, rng, progress
        self.enc, self.acc, self.fit, self.mets = pop.enc.astype(np.int32), pop.acc, pop.fit, pop.metrics
        self.ids, _ = problem.lookup(self.enc)
        self.rate = [1.0 / max(knobs.oversample, 1)] * 2     # running feasible share of mutants / crossovers
        self.plan, self.plan_start, self.plan_gens, self.lim = None, 0, 0, None
        self.block = 1                                      # generations evaluated together
        self.picker = _ParentPicker(knobs.n_par, knobs.population_size, knobs.dedup_parents)
        self.history: list[float] = []

    def run(self, should_stop) -> _Pop:
        gen = 0
        while gen < self.k.generations:
            if _stop_requested(should_stop):
                raise SearchCancelled(gen)
            sel, distinct = self.picker.pick(self.fit, self.ids, self.problem.n_ids)
            par = _Pop(self.enc[sel], {k: v[sel] for k, v in self.mets.items()}, self.acc[sel], self.fit[sel])
            p_ids = self.ids[sel]
            epoch = self.problem.epoch      # the parents' ids stay valid unless the cache is reset
            self._ensure_plan(gen)
            brood = self._breed(par, gen, distinct)
            if self.problem.make_room(len(par) + len(brood.enc)) or self.problem.epoch != epoch:
                both, k_acc = self.problem.lookup(np.concatenate([par.enc, brood.enc]))   # the cache is reset:
                p_ids, k_ids, k_acc = both[:len(par)], both[len(par):], k_acc[len(par):]  # everyone gets new ids
            else:
                k_ids, k_acc = self.problem.lookup(brood.enc, brood.codes)  # one predictor call for all children
            gen += self._advance(gen, par, p_ids, brood, k_ids, k_acc)
        return _Pop(self.enc, self.mets, self.acc, self.fit)

    def _ensure_plan(self, gen: int) -> None:
        if self.plan is not None and gen - self.plan_start < self.plan_gens:
            return
        k = self.k
        ks_ = [min(n * k.oversample, max(n, math.ceil((n + 2 * math.sqrt(n)) / max(r_, 1e-3))))
               for n, r_ in ((k.n_mut, self.rate[0]), (k.n_cross, self.rate[1]))]
        # the first plan is short: the feasible shares it measures size the later ones
        self.plan_start, self.plan_gens = gen, min(_PLAN_CHUNK if gen else 5, k.generations - gen)
        self.plan = _ChildPlan(self.space, k.n_par, ks_[0], ks_[1], self.plan_gens, self.rng, k.mutate_prob,
                               k.resolution_mutate_prob)
        self.lim = np.concatenate([np.full(ks_[0], k.n_mut), np.full(ks_[1], k.n_cross)])

    def _breed(self, par: _Pop, gen: int, distinct: bool) -> _Brood:
        """Per generation of the block: the first n_mut feasible mutants, then the first n_cross crossovers; a
        short generation is done on its own, with bounded top-ups."""
        problem, plan, k = self.problem, self.plan, self.k
        km, K = plan.k_mut, plan.k_mut + plan.k_cross
        L = min(self.block, self.plan_start + self.plan_gens - gen) if distinct else 1
        g0 = gen - self.plan_start
        cand = plan.children(par.enc, g0, g0 + L)                                 # (L * K, W)
        made = L
        c_codes = problem.codes(cand)
        c_met = problem.metrics(cand, c_codes)
        ok = problem.feasible(c_met)
        if problem.min_acc is not None and ok.any():
            c_acc = np.full(len(cand), -np.inf)
            c_acc[ok] = problem.accuracy(cand[ok], c_codes[ok])
            ok &= c_acc >= problem.min_acc
        ok = ok.reshape(L, K)
        cnt = np.cumsum(ok, axis=1)
        n_ok = np.stack([cnt[:, km - 1] if km else np.zeros(L, dtype=cnt.dtype), cnt[:, -1]], axis=1)
        n_ok[:, 1] -= n_ok[:, 0]                                 # feasible mutants, crossovers per generation
        if km:
            cnt[:, km:] -= cnt[:, km - 1:km]
        short = (n_ok[:, 0] < k.n_mut) | (n_ok[:, 1] < k.n_cross)
        if short.any():
            L = max(int(short.argmax()), 1)
        idx = np.flatnonzero(ok[:L] & (cnt[:L] <= self.lim))
        parts = [(cand[idx], c_codes[idx], {name: v[idx] for name, v in c_met.items()})]
        if L == 1 and short[0]:
            parts += self._top_up(par, n_ok[0])
        if len(parts) == 1:
            enc, codes, mets = parts[0]
        else:
            enc, codes = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            mets = {name: np.concatenate([p[2][name] for p in parts]) for name in par.metrics}
        return _Brood(enc, codes, mets, n_ok, L, made)

    def _top_up(self, par: _Pop, n_ok: np.ndarray) -> list[tuple]:
        """Bounded extra sampling for a generation short of feasible mutants or crossovers; feasible parents fill
        what is still missing (never loops)."""
        k, problem, space, rng = self.k, self.problem, self.space, self.rng
        out = []
        for j, (have, n) in enumerate(((min(int(n_ok[0]), k.n_mut), k.n_mut),
                                       (min(int(n_ok[1]), k.n_cross), k.n_cross))):
            if have < n and k.max_attempts > 1:
                make = ((lambda m: space.mutate(par.enc, m, rng, k.mutate_prob, k.resolution_mutate_prob)) if j == 0
                        else (lambda m: space.crossover(par.enc, m, rng)))
                got, _ = _feasible_batch(problem, make, n - have, k.oversample, k.max_attempts - 1, predict=False)
                if got is not None:
                    out.append((got.enc, problem.codes(got.enc), got.metrics))
                    have += len(got)
            if have < n:
                pi = rng.integers(0, len(par.enc), size=n - have)
                out.append((par.enc[pi], problem.codes(par.enc[pi]), {name: v[pi] for name, v in par.metrics.items()}))
        return out

    def _advance(self, gen: int, par: _Pop, p_ids: np.ndarray, brood: _Brood, k_ids: np.ndarray,
                 k_acc: np.ndarray) -> int:
        """Keep the generations up to the first whose children change the parents (which they only do by beating
        the last parent: ties rank after the parents, as the sort is stable, and a copy of a parent is dropped by
        the dedup); the population becomes the parents + the last kept generation's children. Returns the number
        of generations kept."""
        problem, L = self.problem, brood.L
        n_kids = len(brood.enc) // L                              # n_mut + n_cross per generation
        k_fit = k_acc if problem.objective == "accuracy" else -brood.metrics[problem.objective]
        beats = k_fit > par.fit[-1]
        if self.k.dedup_parents:
            is_par = np.zeros(problem.n_ids, dtype=bool)
            is_par[p_ids] = True
            beats &= ~is_par[k_ids]
        changes = beats.reshape(L, n_kids).any(axis=1)
        changed = bool(changes.any())
        keep = int(changes.argmax()) + 1 if changed else L
        self.block = max(1, self.block // 2) if changed or L < brood.made else min(_MAX_BLOCK, 2 * self.block)
        km, K = self.plan.k_mut, self.plan.k_mut + self.plan.k_cross
        for i in range(keep):
            self.history.append(float(par.fit[0]))
            if self.progress is not None:
                lat = par.metrics.get("latency_ms")
                self.progress(gen + i, float(par.acc[0]), float(lat[0]) if lat is not None else float("nan"))
            self.rate[0] = 0.7 * self.rate[0] + 0.3 * int(brood.n_ok[i, 0]) / max(km, 1)
            self.rate[1] = 0.7 * self.rate[1] + 0.3 * int(brood.n_ok[i, 1]) / max(K - km, 1)
        last = slice((keep - 1) * n_kids, keep * n_kids)
        self.enc = np.concatenate([par.enc, brood.enc[last]])
        self.acc = np.concatenate([par.acc, k_acc[last]])
        self.ids = np.concatenate([p_ids, k_ids[last]])
        self.mets = {name: np.concatenate([par.metrics[name], brood.metrics[name][last]]) for name in par.metrics}
        self.fit = self.acc if problem.objective == "accuracy" else -self.mets[problem.objective]
        return keep


def _polish(problem: _Problem, space: _Space, best: _Pop, steps: int, should_stop, gens: int) -> _Pop:
    """Bounded greedy polish: the best one-gene change of the best config, repeated while it improves."""
    for _ in range(steps):
        if _stop_requested(should_stop):
            raise SearchCancelled(gens)
        nb = space.neighbours(best.enc[0])
        ok, metrics, acc, fit = problem.evaluate(nb)
        i = int(np.argmax(fit))
        if not ok[i] or fit[i] <= best.fit[0] + 1e-12:
            break
        best = _Pop(nb[i:i + 1], _take(metrics, slice(i, i + 1)), acc[i:i + 1], fit[i:i + 1])
    return best


def evolutionary_search(spec: SupernetSpec, predictor: Any, efficiency: Efficiency,
                        constraints: Constraints | Mapping[str, float] | None = None, *,
                        population_size: int = 100, generations: int = 500, parent_ratio: float = 0.25,
                        mutation_ratio: float = 0.5, mutate_prob: float = 0.1, resolution_mutate_prob: float = 0.5,
                        resolutions: Sequence[int] | None = None, seed: int | np.random.Generator = 0,
                        oversample: int = 4, max_attempts: int = 25, polish_steps: int = 20,
                        objective: str | None = None, dedup_parents: bool = True, init_pool: int = 1,
                        init: np.ndarray | None = None, progress: Callable[[int, float, float], None] | None = None,
                        should_stop: Any = None, top_k: int = 1, _check: bool = True) -> SearchResult:
    """Maximise predicted accuracy subject to `constraints` (published defaults: population 100, 500 generations,
    parents 25, 50 mutants + 50 uniform crossovers per generation, mutation prob 0.1 per gene, r 0.5).

    With `constraints.min_accuracy` set, minimises `objective` (default: latency if available, else the first
    constrained metric) subject to accuracy >= floor and the other limits. The initial population is the best
    `population_size` of `init_pool * population_size` feasible samples (1, the default, is the published random
    start; a greedier start converged to worse optima at 15 and 30 ms on Note10, over 8 seeds); `init` (encoded
    configs, e.g. known good neighbours) joins the initial population where feasible. After the
    generations, a bounded greedy polish tries every one-gene change of the best config (`polish_steps` rounds, 0
    to disable).
    Raises `InfeasibleError` at once for an impossible request, `SearchCancelled` when `should_stop` (a callable or
    a threading.Event) fires. Deterministic for a given integer seed.
    With `top_k` > 1, `result.candidates` also lists the best `top_k` distinct (canonical) feasible sub-networks of
    the final population and the polished best, best first (fewer when the population has fewer); the search
    itself, and so the result, is the same as with top_k = 1.
    """
    t0 = time.perf_counter()
    cons = Constraints.coerce(constraints)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    knobs = _Knobs(population_size, generations, parent_ratio, mutation_ratio, mutate_prob, resolution_mutate_prob,
                   oversample, max_attempts, polish_steps, dedup_parents, init_pool)
    space = _Space(spec, resolutions)
    objective = _objective_for(cons, efficiency, objective)
    seeds = _seed_configs(spec, predictor, efficiency, cons, space, knobs, rng, resolutions, init, should_stop,
                          _check)
    problem = _Problem(spec, predictor, efficiency, cons, objective, space.rs.tolist())
    evo = _Evolution(problem, space, knobs, rng, _initial_population(problem, space, knobs, rng, seeds, cons),
                      progress)
    pop = evo.run(should_stop)
    best = _polish(problem, space, pop.take(np.argsort(-pop.fit, kind="stable")[:1]), polish_steps, should_stop,
                   generations)
    out = _result(spec, predictor, efficiency, best.enc[0], generations, time.perf_counter() - t0, objective,
                  cons.to_dict(), evo.history)
    if top_k > 1:
        out.candidates = _top_candidates(spec, predictor, efficiency, _Pop.cat([best, pop]), top_k, out)
    return out


def _top_candidates(spec, predictor, efficiency: Efficiency, pool: _Pop, k: int, best: SearchResult
                    ) -> list[SearchResult]:
    """The best k distinct feasible rows of `pool` (by fitness, earlier rows first on ties; the first row is
    `best`), as results: one canonicalisation, one predictor call and one efficiency evaluation for them all."""
    ok = np.flatnonzero(np.isfinite(pool.fit))
    order = ok[np.argsort(-pool.fit[ok], kind="stable")]
    enc = canonicalize_encoded(spec, pool.enc[order])
    _, first = np.unique(enc, axis=0, return_index=True)
    enc = enc[np.sort(first)]
    enc = np.concatenate([best.enc[None], enc[~np.all(enc == best.enc, axis=1)]])[:k]   # distinct, best first
    acc = predictor.predict(enc)
    vals = efficiency.evaluate(enc)
    get = lambda n, i: float(vals[n][i]) if n in vals else None  # noqa: E731
    rest = [SearchResult(enc=e, config=SubnetConfig.from_encoded(spec, e), predicted_acc=float(acc[i]),
                         latency_ms=get("latency_ms", i), macs=get("macs", i), params=get("params", i),
                         peak_memory_bytes=get("peak_memory_bytes", i), generations=best.generations,
                         wall_time_s=best.wall_time_s, objective=best.objective, constraints=best.constraints)
            for i, e in enumerate(enc) if i > 0]
    return [best] + rest


def _result(spec, predictor, efficiency: Efficiency, enc_row: np.ndarray, gens: int, wall: float, objective: str,
            constraints: dict, history: list[float]) -> SearchResult:
    enc = canonicalize_encoded(spec, enc_row[None])
    vals = efficiency.evaluate(enc)
    get = lambda n: float(vals[n][0]) if n in vals else None
    return SearchResult(enc=enc[0], config=SubnetConfig.from_encoded(spec, enc[0]),
                        predicted_acc=float(predictor.predict(enc)[0]), latency_ms=get("latency_ms"), macs=get("macs"),
                        params=get("params"), peak_memory_bytes=get("peak_memory_bytes"), generations=gens,
                        wall_time_s=wall, objective=objective, constraints=constraints, history=history)


# ----------------------------------------------------------------------------------------------------
# Multi-objective: the accuracy/efficiency Pareto front in one run
# ----------------------------------------------------------------------------------------------------
@dataclass
class ParetoFront:
    """Non-dominated (predicted accuracy, metric) points, sorted by increasing metric (and accuracy)."""

    spec: SupernetSpec
    metric: str
    enc: np.ndarray          # (K, W) int32 canonical
    acc: np.ndarray          # (K,)
    values: np.ndarray       # (K,) the metric (e.g. latency in ms)
    wall_time_s: float
    generations: int
    efficiency: Efficiency | None = field(default=None, repr=False)
    predictor: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.acc)

    def lookup(self, budget: float) -> SearchResult | None:
        """Best predicted accuracy with metric <= budget (None if nothing on the front fits)."""
        idx = np.nonzero(self.values <= budget)[0]
        if not len(idx):
            return None
        i = idx[np.argmax(self.acc[idx])]
        if self.efficiency is not None and self.predictor is not None:
            return _result(self.spec, self.predictor, self.efficiency, self.enc[i], self.generations, self.wall_time_s,
                           "accuracy", {self.metric: float(budget)}, [])
        cfg = SubnetConfig.from_encoded(self.spec, self.enc[i])
        return SearchResult(self.enc[i], cfg, float(self.acc[i]),
                            float(self.values[i]) if self.metric == "latency_ms" else None, None, None, None,
                            self.generations, self.wall_time_s, "accuracy", {self.metric: float(budget)}, [])

    def gap_budgets(self, n: int) -> np.ndarray:
        """The budgets where the front answers worst: just below each of the `n` points with the largest accuracy
        step over the point before it (a budget there gets the point before; a search there may find better)."""
        if n <= 0 or len(self) < 2:
            return np.zeros(0)
        steps = np.diff(self.acc)
        top = np.argsort(-steps, kind="stable")[:n] + 1
        return np.nextafter(self.values[np.sort(top)], -np.inf)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "acc": self.acc.tolist(), "values": self.values.tolist(),
                "configs": [SubnetConfig.from_encoded(self.spec, e).to_dict() for e in self.enc]}


def _nondominated(values: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the (min value, max acc) non-dominated points, sorted by value."""
    order = np.lexsort((-acc, values))
    best = np.maximum.accumulate(acc[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = acc[order][1:] > best[:-1]
    return order[keep]


def pareto_search(spec: SupernetSpec, predictor: Any, efficiency: Efficiency, low: float, high: float, *,
                  metric: str = "latency_ms", constraints: Constraints | Mapping[str, float] | None = None,
                  n_bins: int = 200, generations: int = 500, children: int = 200, init_samples: int = 4000,
                  mutate_prob: float = 0.1, resolution_mutate_prob: float = 0.5, polish_rounds: int = 3,
                  resolutions: Sequence[int] | None = None, seed: int | np.random.Generator = 0,
                  progress: Callable[[int, float, float], None] | None = None, should_stop: Any = None
                  ) -> ParetoFront:
    """Predicted accuracy vs `metric` over [low, high] in one run (bucketed-budget evolution).

    The archive keeps the most accurate config in each of `n_bins` metric buckets over [low, high]; each generation
    mutates and crosses archive members (`children` candidates), and re-bins. A final bounded polish tries every
    one-gene change of the front's points. Other `constraints` (e.g. params) filter candidates.
    """
    t0 = time.perf_counter()
    if metric not in efficiency.fns:
        raise ValueError(f"metric {metric!r} is not available ({efficiency.names})")
    if not high > low:
        raise ValueError("need low < high")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    space = _Space(spec, resolutions)
    cons = Constraints.coerce(constraints)
    lims = cons.limits()
    lims[metric] = min(float(high), lims.get(metric, math.inf))
    cons_all = Constraints(**lims, min_accuracy=cons.min_accuracy)
    seeds = _check_feasible(spec, predictor, efficiency, Constraints(**lims), space, 0)
    problem = _Problem(spec, predictor, efficiency, cons_all, "accuracy", space.rs.tolist())
    width = (high - low) / n_bins
    W = spec.enc_width
    a_enc = np.zeros((n_bins, W), dtype=np.int32)
    a_acc = np.full(n_bins, -np.inf)
    a_val = np.full(n_bins, np.inf)

    def update(cand: np.ndarray) -> None:
        ok, metrics, acc, _ = problem.evaluate(cand)
        if not ok.any():
            return
        e = np.concatenate([a_enc, cand[ok]])
        ac = np.concatenate([a_acc, acc[ok]])
        va = np.concatenate([a_val, metrics[metric][ok]])
        bins = np.concatenate([np.arange(n_bins),
                               np.clip(((va[n_bins:] - low) // width).astype(np.int64), 0, n_bins - 1)])
        order = np.lexsort((va, -ac, bins))                        # per bin: best acc, then smaller metric
        first = np.ones(len(order), dtype=bool)
        first[1:] = bins[order][1:] != bins[order][:-1]
        sel = order[first]
        b = bins[sel]
        a_enc[b], a_acc[b], a_val[b] = e[sel], ac[sel], va[sel]

    init = np.concatenate([space.sample(init_samples // 2, rng), space.sample(init_samples - init_samples // 2, rng,
                                                                                skew=True)])
    update(np.concatenate([init, np.stack(seeds)]) if seeds else init)
    n_mut = children // 2
    for gen in range(generations):
        if _stop_requested(should_stop):
            raise SearchCancelled(gen)
        filled = np.nonzero(np.isfinite(a_acc))[0]
        par = a_enc[filled]
        kids = np.concatenate([space.mutate(par, n_mut, rng, mutate_prob, resolution_mutate_prob),
                               space.crossover(par, children - n_mut, rng)])
        update(kids)
        if progress is not None:
            i = filled[np.argmax(a_acc[filled])]
            progress(gen, float(a_acc[i]), float(a_val[i]))
    for _ in range(polish_rounds):
        if _stop_requested(should_stop):
            raise SearchCancelled(generations)
        filled = np.nonzero(np.isfinite(a_acc))[0]
        front = filled[_nondominated(a_val[filled], a_acc[filled])]
        update(np.concatenate([space.neighbours(a_enc[i]) for i in front]))
    filled = np.nonzero(np.isfinite(a_acc))[0]
    front = filled[_nondominated(a_val[filled], a_acc[filled])]
    enc = canonicalize_encoded(spec, a_enc[front])
    return ParetoFront(spec, metric, enc, a_acc[front].copy(), a_val[front].copy(), time.perf_counter() - t0,
                       generations, efficiency, predictor)


def refine_budgets(low: float, high: float, n: int) -> np.ndarray:
    """`n` budgets over [low, high] for `refine_front`: half evenly spaced, half geometrically (accuracy climbs
    fastest at small budgets, so they get denser there); `high` is always one of them."""
    if n <= 0:
        return np.zeros(0)
    if n == 1:
        return np.asarray([float(high)])
    lin = np.linspace(low, high, n - n // 2)
    geo = np.geomspace(max(low, 1e-12), high, n // 2 + 1)[1:] if low > 0 else np.linspace(low, high, n // 2 + 1)[1:]
    return np.unique(np.concatenate([lin, geo]))


def refine_front(front: ParetoFront, budgets: Sequence[float], *, population_size: int = 100,
                 generations: int = 100, neighbours: int = 8, polish_steps: int = 20,
                 constraints: Constraints | Mapping[str, float] | None = None,
                 resolutions: Sequence[int] | None = None, seed: int = 0, polish_rounds: int = 3,
                 should_stop: Any = None) -> ParetoFront:
    """The front, improved budget by budget: at each budget a single-budget `evolutionary_search` whose initial
    population holds the front's `neighbours` most accurate points within the budget (so it starts at least as
    good as the front there), its answer merged into the front. Budgets run from the largest down, each search
    also seeded with the answers found so far, and the non-dominated set of the front and all answers is returned
    (never worse than the front at any budget); then up to `polish_rounds` rounds merge in every non-dominated
    one-gene change of the front's points. Needs the front's efficiency and predictor."""
    t0 = time.perf_counter()
    spec, eff, pred, metric = front.spec, front.efficiency, front.predictor, front.metric
    if eff is None or pred is None:
        raise ValueError("refine_front needs a front that carries its efficiency and predictor (pareto_search's)")
    cons = Constraints.coerce(constraints).limits()
    enc, acc, val = front.enc, front.acc, front.values
    gens = front.generations
    for i, b in enumerate(sorted((float(x) for x in budgets), reverse=True)):
        if _stop_requested(should_stop):
            raise SearchCancelled(i)
        fit = np.nonzero(val <= b)[0]
        near = fit[np.argsort(-acc[fit], kind="stable")[:neighbours]]     # may be none (below the front's start)
        try:
            r = evolutionary_search(spec, pred, eff, {**cons, metric: min(b, cons.get(metric, math.inf))},
                                    population_size=population_size, generations=generations,
                                    resolutions=resolutions, seed=seed + 1 + i, init=enc[near],
                                    polish_steps=polish_steps, should_stop=should_stop)
        except InfeasibleError:
            continue
        v = float(getattr(r, metric))
        if not len(near) or r.predicted_acc > acc[near[0]] or (r.predicted_acc == acc[near[0]] and v < val[near[0]]):
            enc, acc, val = np.concatenate([enc, r.enc[None]]), np.append(acc, r.predicted_acc), np.append(val, v)
        gens += generations
    keep = _nondominated(val, acc)
    enc, acc, val = _polish_points(spec, pred, eff, metric, cons, resolutions, enc[keep], acc[keep], val[keep],
                                   polish_rounds, should_stop)
    keep = _nondominated(val, acc)
    return ParetoFront(spec, metric, canonicalize_encoded(spec, enc[keep]), acc[keep].copy(), val[keep].copy(),
                       front.wall_time_s + time.perf_counter() - t0, gens, eff, pred)


def _polish_points(spec, pred, eff, metric: str, limits: dict, resolutions, enc, acc, val, rounds: int, should_stop):
    """Merge the non-dominated one-gene changes of (enc, acc, val) into it, up to `rounds` times (stops early when
    nothing changes); only changes within the other limits and no larger in `metric` than the largest point."""
    if rounds <= 0 or not len(enc):
        return enc, acc, val
    space = _Space(spec, resolutions)
    problem = _Problem(spec, pred, eff, Constraints(**{**limits, metric: float(val.max())}), "accuracy",
                       space.rs.tolist())
    for r in range(rounds):
        if _stop_requested(should_stop):
            raise SearchCancelled(r)
        cand = np.concatenate([space.neighbours(e) for e in enc])
        ok, metrics, c_acc, _ = problem.evaluate(cand)
        n = len(enc)
        enc = np.concatenate([enc, canonicalize_encoded(spec, cand[ok])])
        acc, val = np.append(acc, c_acc[ok]), np.append(val, metrics[metric][ok])
        keep = _nondominated(val, acc)
        enc, acc, val = enc[keep], acc[keep], val[keep]
        if np.all(keep < n) and len(keep) == n:
            break
    return enc, acc, val
