"""Operator layout and per-operator cost features for calibration (`ofa_core.calibrate`).

The unknowns of a calibration are the means of a latency table (`LatencyTable.block_lat` and `fixed_lat`): one
column per (resolution, elastic block, kernel size, expand ratio) plus one column per resolution for the sum of the
six fixed operators (first conv, block 0, final expand, pool, feature mix, logits), which every sub-network at that
resolution runs together and whose split timings cannot tell apart. A config's latency is `A[i] @ x` with `A` the
0/1 count matrix (`OperatorLayout.counts`, vectorized, sparse).

Each column gets features from the cost model's geometry (`costs.py` formulas, split by kind of work):

=============  =================================================================================================
pw_macs        pointwise (1x1 expand + project) multiply-accumulates
dw_macs_k<K>   depthwise MACs, one column per kernel size
se_macs        squeeze-excitation FC MACs
act_elems      activation elements read + written by the block's kernels (the memory traffic)
param_elems    weight elements read (the weight traffic, dominant for batch-1 GPUs)
blocks         1 per active block (launch overhead)
se_blocks      1 per active SE block (its extra launches)
hs_elems       elements passed through h-swish
fixed_macs     MACs of the fixed operators (fixed columns only)
fixed_act      activation elements of the fixed operators
fixed_const    1 (the fixed operators' launch overhead)
=============  =================================================================================================

Activation features scale with the batch size (`batch_size`), weights do not. Each column also carries its
*families* (block position, position x kernel size, position x expand, resolution, resolution x stage), the groups
whose shared deviations the hierarchical model estimates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .latency import LatencyTable, block_operator_key, fixed_operator_keys
from .spec import SupernetSpec, active_mask, as_encoded_batch, make_divisible

FIXED_FEATURES = ("fixed_macs", "fixed_act", "fixed_const")


def feature_names(spec: SupernetSpec) -> list[str]:
    return (["pw_macs"] + [f"dw_macs_k{k}" for k in spec.ks_list]
            + ["se_macs", "act_elems", "param_elems", "blocks", "se_blocks", "hs_elems"] + list(FIXED_FEATURES))


def _block_features(spec: SupernetSpec, b: int, f_in: int, k: int, e: int, batch: int) -> dict[str, float]:
    cin, cout, stride, act, se = spec.block_in_out()[b]
    f_out = (f_in - 1) // stride + 1
    mid = spec.mid_channels(cin, e)
    a_in, a_mid_in, a_mid_out, a_out = cin * f_in ** 2, mid * f_in ** 2, mid * f_out ** 2, cout * f_out ** 2
    skip = stride == 1 and cin == cout
    out = {"pw_macs": batch * (a_mid_in * cin + a_out * mid), f"dw_macs_k{k}": batch * a_mid_out * k * k,
           "act_elems": batch * (a_in + 2 * a_mid_in + 2 * a_mid_out + a_out + (2 * a_out if skip else 0)),
           "param_elems": cin * mid + mid * k * k + mid * cout, "blocks": 1.0,
           "hs_elems": batch * (a_mid_in + a_mid_out) if act == "h_swish" else 0.0}
    if se:
        m = make_divisible(mid // 4)
        out["se_macs"] = batch * 2 * mid * m
        out["param_elems"] += 2 * mid * m
        out["act_elems"] += batch * 2 * a_mid_out
        out["se_blocks"] = 1.0
    return out


def fixed_op_features(spec: SupernetSpec, r: int, batch: int = 1) -> np.ndarray:
    """(6, 3) [macs, act elems, 1] of the fixed operators at r, in `fixed_operator_keys` order."""
    wd = spec.widths
    c0, c1, c5, cfe, cl, ncls = (wd["stem"], wd["first_block"], wd["stages"][-1], wd["final_expand"], wd["last"],
                                 spec.n_classes)
    f1 = (r - 1) // spec.stem_stride + 1
    ff = spec.feature_sizes(r)[-1]
    rows = [(c0 * f1 * f1 * 27, 3 * r * r + c0 * f1 * f1),
            (c0 * f1 * f1 * 9 + c1 * f1 * f1 * c0, 3 * c0 * f1 * f1 + c1 * f1 * f1),
            (cfe * ff * ff * c5, c5 * ff * ff + cfe * ff * ff),
            (0, cfe * ff * ff + cfe),
            (cl * cfe, cfe + cl),
            (cl * ncls, cl + ncls)]
    return np.array([[batch * m, batch * a, 1.0] for m, a in rows], dtype=np.float64)


@dataclass
class OperatorLayout:
    """Columns of a calibration over `resolutions` of `spec` and their features / families."""

    spec: SupernetSpec
    resolutions: tuple[int, ...]
    batch_size: int = 1
    names: list[str] = field(init=False)
    F: np.ndarray = field(init=False)                    # (J, P) features
    groups: dict[str, np.ndarray] = field(init=False)    # family name -> (J,) group id

    def __post_init__(self):
        spec = self.spec
        self.resolutions = tuple(sorted(int(r) for r in self.resolutions))
        bad = [r for r in self.resolutions if r not in spec.resolutions]
        if bad:
            raise ValueError(f"resolution {bad[0]} is not a resolution of {spec.name} ({list(spec.resolutions)})")
        R, B, K, E = len(self.resolutions), spec.n_blocks, len(spec.ks_list), len(spec.expand_list)
        self.R, self.B, self.K, self.E = R, B, K, E
        # blocks of a stage after its first share an operator key (same geometry): one column per distinct key
        self.block_col = np.zeros((R, B, K, E), dtype=np.int64)
        self.keys: list[tuple[int, str]] = []
        first: list[tuple[int, int, int, int]] = []
        seen: dict[tuple[int, str], int] = {}
        for ri, r in enumerate(self.resolutions):
            for b in range(B):
                for ki, k in enumerate(spec.ks_list):
                    for ei, e in enumerate(spec.expand_list):
                        key = (r, block_operator_key(spec, r, b, k, e))
                        if key not in seen:
                            seen[key] = len(self.keys)
                            self.keys.append(key)
                            first.append((ri, b, ki, ei))
                        self.block_col[ri, b, ki, ei] = seen[key]
        self.n_block_cols = len(self.keys)
        self.n_cols = self.n_block_cols + R
        self.names = feature_names(spec)
        col = {n: i for i, n in enumerate(self.names)}
        F = np.zeros((self.n_cols, len(self.names)))
        for j, (ri, b, ki, ei) in enumerate(first):
            f_in = spec.feature_sizes(self.resolutions[ri])[b]
            for name, v in _block_features(spec, b, f_in, spec.ks_list[ki], spec.expand_list[ei],
                                           self.batch_size).items():
                F[j, col[name]] = v
        fcols = [col[n] for n in FIXED_FEATURES]
        self.fixed_ops = np.stack([fixed_op_features(spec, r, self.batch_size) for r in self.resolutions])  # (R,6,3)
        F[self.n_block_cols:, fcols] = self.fixed_ops.sum(axis=1)
        self.F = F
        ri, b, ki, ei = (np.array([f[i] for f in first], dtype=np.int64) for i in range(4))
        stage = np.concatenate([b // spec.max_depth, np.full(R, spec.n_stages)])
        rcol = np.concatenate([ri, np.arange(R)])
        bcol = np.concatenate([b, np.full(R, B)])
        kcol = np.concatenate([ki, np.full(R, K)])
        ecol = np.concatenate([ei, np.full(R, E)])
        self.groups = {"layer": bcol, "layer_kernel": bcol * (K + 1) + kcol, "layer_expand": bcol * (E + 1) + ecol,
                       "resolution": rcol, "resolution_stage": rcol * (spec.n_stages + 1) + stage}
        self._res_lut = np.full(max(spec.resolutions) + 1, -1, dtype=np.int64)
        self._res_lut[list(self.resolutions)] = np.arange(R)
        self._k_lut = np.full(max(spec.ks_list) + 1, -1, dtype=np.int64)
        self._k_lut[list(spec.ks_list)] = np.arange(K)
        self._e_lut = np.full(max(spec.expand_list) + 1, -1, dtype=np.int64)
        self._e_lut[list(spec.expand_list)] = np.arange(E)

    # -- configs -> columns -----------------------------------------------------------------------------
    def check_resolutions(self, enc: np.ndarray) -> np.ndarray:
        enc = as_encoded_batch(self.spec, enc)
        r = enc[:, -1]
        bad = (r < 0) | (r >= len(self._res_lut))
        bad[~bad] = self._res_lut[r[~bad]] < 0
        if bad.any():
            raise ValueError(f"config {int(np.argmax(bad))} has resolution {int(r[bad][0])}, not one of the "
                             f"calibrated resolutions {list(self.resolutions)}")
        return enc

    def counts(self, enc: np.ndarray) -> sp.csr_matrix:
        """(N, n_cols) sparse 0/1 operator counts of encoded configs."""
        spec = self.spec
        enc = self.check_resolutions(enc)
        N, B, S = len(enc), spec.n_blocks, spec.n_stages
        ri = self._res_lut[enc[:, -1]]
        ki, ei = self._k_lut[enc[:, :B]], self._e_lut[enc[:, B:2 * B]]
        if (ki < 0).any() or (ei < 0).any():
            raise ValueError("encoded configs hold a kernel size or expand ratio outside the supernet's lists")
        cols = self.block_col[ri[:, None], np.arange(B)[None, :], ki, ei]
        mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
        rows = np.repeat(np.arange(N), mask.sum(axis=1))
        c = np.concatenate([cols[mask], self.n_block_cols + ri])
        rr = np.concatenate([rows, np.arange(N)])
        return sp.csr_matrix((np.ones(len(c)), (rr, c)), shape=(N, self.n_cols))  # duplicates add up

    # -- tables <-> columns ---------------------------------------------------------------------------
    def from_table(self, table: LatencyTable) -> np.ndarray:
        """(n_cols,) the table's means in this layout (the table must cover `resolutions`)."""
        missing = [r for r in self.resolutions if r not in table.tables]
        if missing:
            raise ValueError(f"the prior table has no resolution {missing[0]} (has {list(table.resolutions)})")
        blocks = [table.tables[r][k].mean for r, k in self.keys]
        return np.array(blocks + [table.fixed_lat[table.resolutions.index(r)] for r in self.resolutions])

    def fixed_from_table(self, table: LatencyTable) -> np.ndarray:
        """(R, 6) the table's fixed-operator means."""
        return np.array([[table.tables[r][k].mean for k in fixed_operator_keys(self.spec, r)]
                         for r in self.resolutions])

    def to_means(self, x: np.ndarray, fixed_split: np.ndarray) -> dict[int, dict[str, float]]:
        """Column values -> {r: {operator key: mean}}; each fixed sum is split by `fixed_split` (R, 6) shares."""
        out: dict[int, dict[str, float]] = {r: {} for r in self.resolutions}
        for (r, key), v in zip(self.keys, x[:self.n_block_cols]):
            out[r][key] = float(v)
        for ri, r in enumerate(self.resolutions):
            share = fixed_split[ri] / max(float(fixed_split[ri].sum()), 1e-300)
            for key, s in zip(fixed_operator_keys(self.spec, r), share):
                out[r][key] = float(x[self.n_block_cols + ri] * s)
        return out


@functools.lru_cache(maxsize=16)
def layout_for(spec: SupernetSpec, resolutions: tuple[int, ...], batch_size: int = 1) -> OperatorLayout:
    """A shared layout (building one walks every operator key; read-only once built)."""
    return OperatorLayout(spec, tuple(resolutions), batch_size)
