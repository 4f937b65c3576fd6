"""Small stand-ins for ofa_core modules the service needs, used only while those are not available.

Costs (MACs, params, peak activation memory), an MLP accuracy predictor with the published encoding, and a
vectorized evolutionary search with constraints, an accuracy floor, progress and cancellation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ofa_core.spec import SupernetSpec, active_mask, canonicalize_encoded, make_divisible

METRICS = ("latency_ms", "macs", "params", "peak_memory_bytes")


class FallbackInfeasible(Exception):
    def __init__(self, minima: dict[str, float], violated: list[str]):
        super().__init__(f"no sub-network meets {violated}; smallest achievable: {minima}")
        self.minima, self.violated = minima, violated


class SearchCancelled(Exception):
    pass


# ----------------------------------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------------------------------
class Costs:
    """Vectorized MACs / params / peak activation bytes (float32, batch 1) of encoded configs."""

    def __init__(self, spec: SupernetSpec):
        self.spec = spec
        wd, B = spec.widths, spec.n_blocks
        self.res = np.array(sorted(spec.resolutions))
        R, K, E = len(self.res), len(spec.ks_list), len(spec.expand_list)
        self.b_macs = np.zeros((R, B, K, E))
        self.b_params = np.zeros((B, K, E))
        self.b_mem = np.zeros((R, B, K, E))
        self.f_macs = np.zeros(R)
        self.f_mem = np.zeros(R)
        stem, fb, last_s, fe, last = wd["stem"], wd["first_block"], wd["stages"][-1], wd["final_expand"], wd["last"]
        self.f_params = (27 * stem + 2 * stem) + (9 * stem + 2 * stem + stem * fb + 2 * fb) + \
            (last_s * fe + 2 * fe) + fe * last + (last * spec.n_classes + spec.n_classes)
        for i, r in enumerate(self.res):
            sizes = spec.feature_sizes(int(r))
            f0, fl = sizes[0], sizes[-1]
            self.f_macs[i] = f0 * f0 * (27 * stem + 9 * stem + stem * fb) + fl * fl * last_s * fe + fe * last + last * spec.n_classes
            self.f_mem[i] = 4 * max(3 * r * r + stem * f0 * f0, 2 * stem * f0 * f0, fl * fl * (last_s + fe))
            for b, (cin, cout, stride, act, se) in enumerate(spec.block_in_out()):
                f = sizes[b]
                f2 = int((f - 1) / stride + 1)
                for ki, k in enumerate(spec.ks_list):
                    for ei, e in enumerate(spec.expand_list):
                        mid = spec.mid_channels(cin, e)
                        sem = make_divisible(mid // 4)
                        p = cin * mid + 2 * mid + mid * k * k + 2 * mid + mid * cout + 2 * cout
                        m = f * f * cin * mid + f2 * f2 * mid * k * k + f2 * f2 * mid * cout
                        if se:
                            p += mid * sem + sem + sem * mid + mid
                            m += 2 * mid * sem
                        self.b_params[b, ki, ei] = p
                        self.b_macs[i, b, ki, ei] = m
                        self.b_mem[i, b, ki, ei] = 4 * max(f * f * (cin + mid), f2 * f2 * mid + f * f * mid,
                                                           f2 * f2 * (mid + cout) + f * f * cin)
        self.ks_idx = np.zeros(max(spec.ks_list) + 1, np.int64)
        self.ks_idx[list(spec.ks_list)] = np.arange(K)
        self.e_idx = np.zeros(max(spec.expand_list) + 1, np.int64)
        self.e_idx[list(spec.expand_list)] = np.arange(E)

    def __call__(self, enc: np.ndarray) -> dict[str, np.ndarray]:
        B, S = self.spec.n_blocks, self.spec.n_stages
        enc = np.asarray(enc)
        ri = np.searchsorted(self.res, enc[:, -1])
        ki, ei = self.ks_idx[enc[:, :B]], self.e_idx[enc[:, B:2 * B]]
        mask = active_mask(self.spec, enc[:, 2 * B:2 * B + S])
        bi = np.arange(B)[None, :]
        macs = self.f_macs[ri] + np.where(mask, self.b_macs[ri[:, None], bi, ki, ei], 0).sum(1)
        params = self.f_params + np.where(mask, self.b_params[bi, ki, ei], 0).sum(1)
        mem = np.maximum(self.f_mem[ri], np.where(mask, self.b_mem[ri[:, None], bi, ki, ei], 0).max(1))
        return {"macs": macs.astype(np.int64), "params": params.astype(np.int64),
                "peak_memory_bytes": mem.astype(np.int64)}


# ----------------------------------------------------------------------------------------------------
# Predictor
# ----------------------------------------------------------------------------------------------------
class MLPPredictor:
    """MLP over [ks one-hot | e one-hot | resolution one-hot]; blocks skipped by depth are all zero."""

    def __init__(self, spec: SupernetSpec, state: dict[str, torch.Tensor], published_resolution_slots: bool):
        self.spec = spec
        ws = sorted(k for k in state if k.endswith(".weight"))
        ws.sort(key=lambda k: int(k.split(".")[0]))
        layers: list[nn.Module] = []
        for j, k in enumerate(ws):
            w = state[k]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data.copy_(w.float())
            lin.bias.data.copy_(state[k[:-len("weight")] + "bias"].float())
            layers.append(lin)
            if j < len(ws) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers).eval()
        self.in_dim = int(state[ws[0]].shape[1])
        self.published = published_resolution_slots
        self.n_res = self.in_dim - spec.n_blocks * (len(spec.ks_list) + len(spec.expand_list))

    def features(self, enc: np.ndarray) -> np.ndarray:
        spec, B, S = self.spec, self.spec.n_blocks, self.spec.n_stages
        enc = np.asarray(enc)
        N, K, E = len(enc), len(spec.ks_list), len(spec.expand_list)
        mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
        x = np.zeros((N, self.in_dim), np.float32)
        for ki, k in enumerate(spec.ks_list):
            x[:, ki:B * K:K] = (enc[:, :B] == k) & mask
        for ei, e in enumerate(spec.expand_list):
            x[:, B * K + ei:B * (K + E):E] = (enc[:, B:2 * B] == e) & mask
        if self.published:
            slot = (enc[:, -1] - 112) // 16
        else:
            slot = np.searchsorted(np.array(sorted(spec.resolutions)), enc[:, -1])
        x[np.arange(N), B * (K + E) + np.clip(slot, 0, self.n_res - 1)] = 1
        return x

    @torch.no_grad()
    def predict(self, enc: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(self.features(enc))).squeeze(-1).numpy().astype(np.float64)

    __call__ = predict


def load_predictor(spec: SupernetSpec, path: str) -> MLPPredictor:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
        published = False
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        published = True
    return MLPPredictor(spec, dict(state), published)


# ----------------------------------------------------------------------------------------------------
# Evolutionary search
# ----------------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    config: np.ndarray
    accuracy: float
    metrics: dict[str, float]
    generations: int = 0
    history: list[float] = field(default_factory=list)


def evaluate(evaluators: dict[str, Callable[[np.ndarray], np.ndarray]], enc: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, fn in evaluators.items():
        v = fn(enc)
        if isinstance(v, dict):
            out.update(v)
        else:
            out[name] = v
    return out


def minima(spec: SupernetSpec, evaluate_fn, resolutions: list[int]) -> dict[str, float]:
    encs = np.stack([spec.min_config(r).encode() for r in resolutions])
    m = evaluate_fn(encs)
    return {k: float(np.min(v)) for k, v in m.items() if k in METRICS}


def evolutionary_search(spec: SupernetSpec, evaluate_fn, predict, constraints: dict[str, float],
                        accuracy_floor: float | None, population: int, generations: int, seed: int,
                        resolutions: list[int], progress=None, should_cancel=None,
                        parent_ratio: float = 0.25, mutation_ratio: float = 0.5, mutate_prob: float = 0.1,
                        mins: dict[str, float] | None = None) -> SearchResult:
    rng = np.random.default_rng(seed)
    B, S = spec.n_blocks, spec.n_stages
    mins = mins if mins is not None else minima(spec, evaluate_fn, resolutions)
    violated = [k for k, lim in constraints.items() if mins.get(k, 0) > lim]
    if violated:
        raise FallbackInfeasible(mins, violated)

    def feasible(enc):
        m = evaluate_fn(enc)
        ok = np.ones(len(enc), bool)
        for k, lim in constraints.items():
            ok &= m[k] <= lim
        return ok

    def fill(n, gen_fn):
        out, tries = [], 0
        while sum(len(o) for o in out) < n:
            cand = canonicalize_encoded(spec, gen_fn(max(n * 2, 32)))
            out.append(cand[feasible(cand)])
            tries += 1
            if tries > 200 and not sum(len(o) for o in out):
                out.append(np.stack([spec.min_config(r).encode() for r in resolutions])[:1])
        return np.concatenate(out)[:n]

    pop = fill(population, lambda n: spec.sample_encoded(n, rng, resolutions))
    n_par, n_mut = max(1, int(population * parent_ratio)), int(population * mutation_ratio)
    best, best_acc, history = None, -np.inf, []
    for g in range(generations):
        if should_cancel is not None and should_cancel():
            raise SearchCancelled()
        acc = predict(pop)
        order = np.argsort(-acc)
        parents, pacc = pop[order[:n_par]], acc[order[:n_par]]
        if pacc[0] > best_acc:
            best, best_acc = parents[0].copy(), float(pacc[0])
        history.append(best_acc)
        if progress is not None:
            progress(g + 1, generations, best_acc, best)

        def mutate(n):
            base = parents[rng.integers(0, len(parents), n)]
            rnd = spec.sample_encoded(n, rng, resolutions)
            m = rng.random((n, B)) < mutate_prob
            out = base.copy()
            out[:, :B] = np.where(m, rnd[:, :B], base[:, :B])
            out[:, B:2 * B] = np.where(m, rnd[:, B:2 * B], base[:, B:2 * B])
            md = rng.random((n, S)) < mutate_prob
            out[:, 2 * B:2 * B + S] = np.where(md, rnd[:, 2 * B:2 * B + S], base[:, 2 * B:2 * B + S])
            mr = rng.random(n) < 0.5
            out[:, -1] = np.where(mr, rnd[:, -1], base[:, -1])
            return out

        def cross(n):
            a = parents[rng.integers(0, len(parents), n)]
            b = parents[rng.integers(0, len(parents), n)]
            return np.where(rng.random(a.shape) < 0.5, a, b)

        pop = np.concatenate([parents, fill(n_mut, mutate), fill(population - n_par - n_mut, cross)])
    acc = predict(pop)
    i = int(np.argmax(acc))
    if acc[i] > best_acc:
        best, best_acc = pop[i].copy(), float(acc[i])
    if accuracy_floor is not None and best_acc < accuracy_floor:
        raise FallbackInfeasible({**mins, "accuracy": best_acc}, ["accuracy_floor"])
    m = evaluate_fn(best[None])
    return SearchResult(best, best_acc, {k: float(v[0]) for k, v in m.items()}, generations, history)
