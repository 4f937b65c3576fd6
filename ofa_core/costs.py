"""Analytic costs of sub-networks (MACs, parameters, peak activation memory), vectorized over encoded batches.

All three are exact properties of the *extracted static network* (`ofa_core.extract`) at batch size 1:

* **MACs**: multiply-accumulates of every `Conv2d` and `Linear`, nothing else (no BN, activations, pooling,
  SE multiply, residual add, bias). A conv costs ``out_elems * (in_ch / groups) * k * k`` with
  ``out_elems = out_ch * H_out * W_out``; a linear costs ``in_features * out_features``.
* **params**: number of elements of the static network's parameters (conv weights and biases, BN affine
  weight/bias, SE biases, classifier) - not buffers (BN running stats, num_batches_tracked), not the
  supernet-only kernel-transform matrices.
* **peak_memory** (bytes, fp32 = 4 bytes/element, batch 1): the maximum, over every `Conv2d`/`Linear` op in
  execution order, of ``bytes(op input) + bytes(op output) + bytes(tensors held for later)``, where the
  tensors held for later are
    - the block input, for an op inside a block with an identity shortcut, unless that op's input *is* the
      block input (i.e. the block's first op), since it is needed for the residual add;
    - the SE input (depthwise output, full spatial size), for the SE `reduce` and `expand` 1x1 convs, since
      it is needed for the excitation multiply.
  Weights, BN/activation temporaries and the allocator are not counted. Inside a block the op inputs are:
  expand (block input), depthwise (expanded map), SE reduce (pooled 1x1 map), SE expand (reduced 1x1 map),
  project (depthwise/SE output).

Tables: per elastic block, small arrays indexed by (resolution index, ks index, e index) are precomputed once;
a batch is then a flat gather plus a masked sum (MACs, params) or masked max (memory).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import SubnetConfig, SupernetSpec, active_mask, make_divisible, validate_encoded

__all__ = ["CostModel", "config_costs"]

BYTES = 4  # fp32


def _conv_out(f: int, stride: int) -> int:
    return (f - 1) // stride + 1


def _fixed_costs(spec: SupernetSpec, r: int) -> tuple[int, int, int]:
    """(macs, params, peak bytes) of everything outside the elastic blocks at resolution r."""
    wd = spec.widths
    c0, c1, c5 = wd["stem"], wd["first_block"], wd["stages"][-1]
    cfe, clast, ncls = wd["final_expand"], wd["last"], spec.n_classes
    f1 = _conv_out(r, spec.stem_stride)
    ff = spec.feature_sizes(r)[-1]
    macs = params = 0
    mem = []
    # stem conv 3x3 s2 + BN
    macs += c0 * f1 * f1 * 3 * 9
    params += c0 * 3 * 9 + 2 * c0
    mem.append(3 * r * r + c0 * f1 * f1)
    # block 0: depthwise 3x3 (mid = c0) + project 1x1, identity shortcut when c0 == c1
    sc0 = c0 == c1
    macs += c0 * f1 * f1 * 9 + c1 * f1 * f1 * c0
    params += c0 * 9 + 2 * c0 + c0 * c1 + 2 * c1
    mem.append(c0 * f1 * f1 + c0 * f1 * f1)                                      # depthwise (input = block input)
    mem.append(c0 * f1 * f1 + c1 * f1 * f1 + (c0 * f1 * f1 if sc0 else 0))     # project
    # final expand 1x1 + BN
    macs += cfe * ff * ff * c5
    params += cfe * c5 + 2 * cfe
    mem.append(c5 * ff * ff + cfe * ff * ff)
    # feature mix 1x1 on the pooled map (no BN, no bias)
    macs += clast * cfe
    params += clast * cfe
    mem.append(cfe + clast)
    # classifier
    macs += clast * ncls
    params += clast * ncls + ncls
    mem.append(clast + ncls)
    return macs, params, max(mem) * BYTES


def _block_costs(cin: int, cout: int, stride: int, use_se: bool, f_in: int, k: int, mid: int
                 ) -> tuple[int, int, int]:
    """(macs, params, peak bytes) of one active elastic block with the given geometry."""
    f_out = _conv_out(f_in, stride)
    shortcut = stride == 1 and cin == cout
    hold_in = cin * f_in * f_in if shortcut else 0
    a_in, a_mid_in, a_mid_out, a_out = cin * f_in * f_in, mid * f_in * f_in, mid * f_out * f_out, cout * f_out * f_out
    macs = a_mid_in * cin + a_mid_out * k * k + a_out * mid
    params = cin * mid + 2 * mid + mid * k * k + 2 * mid + mid * cout + 2 * cout
    mem = [a_in + a_mid_in, a_mid_in + a_mid_out + hold_in, a_mid_out + a_out + hold_in]
    if use_se:
        m = make_divisible(mid // 4)
        macs += 2 * mid * m
        params += 2 * mid * m + m + mid
        mem += [mid + m + a_mid_out + hold_in, m + mid + a_mid_out + hold_in]
    return macs, params, max(mem) * BYTES


def config_costs(spec: SupernetSpec, cfg: SubnetConfig) -> dict[str, int]:
    """Plain-Python costs of one config (the per-config reference the vectorized `CostModel` must equal)."""
    macs, params, mem = _fixed_costs(spec, cfg.r)
    geo = spec.block_in_out()
    sizes = spec.feature_sizes(cfg.r)
    for b in cfg.active_blocks():
        cin, cout, stride, _, se = geo[b - 1]
        e = cfg.e[b - 1]
        bm, bp, bmem = _block_costs(cin, cout, stride, se, sizes[b - 1], cfg.ks[b - 1], spec.mid_channels(cin, e))
        macs += bm
        params += bp
        mem = max(mem, bmem)
    return {"macs": macs, "params": params, "peak_memory": mem}


class CostModel:
    """Vectorized MACs / params / peak memory of encoded configs ``(N, 2B+S+1)`` (see module docstring)."""

    def __init__(self, spec: SupernetSpec):
        self.spec = spec
        B, S = spec.n_blocks, spec.n_stages
        self._B, self._S = B, S
        kss, ers = list(spec.ks_list), list(spec.expand_list)
        R, K, E = spec.input_range[1] + 1, len(kss), len(ers)   # indexed by the resolution itself
        self._R, self._K, self._E = R, K, E
        self._geo = spec.block_in_out()
        # per-resolution rows are filled on first use (`_fill`): the trained grid now, any other accepted size
        # when a config asks for it; a trailing zero entry is what inactive blocks point at
        self._macs_flat = np.zeros(B * R * K * E + 1, dtype=np.int64)
        self._params_flat = np.zeros(B * K * E + 1, dtype=np.int64)
        self._mem_flat = np.zeros(B * R * E + 1, dtype=np.int64)
        self._fixed_macs, self._fixed_params, self._fixed_mem = np.zeros((3, R), dtype=np.int64)
        self._ready = np.zeros(R, dtype=bool)
        self.tables = {"macs": self._macs_flat[:-1].reshape(B, R, K, E),
                       "params": self._params_flat[:-1].reshape(B, K, E),
                       "peak_memory": self._mem_flat[:-1].reshape(B, R, E)}

        def lut(values: Sequence[int]) -> np.ndarray:
            t = np.full(max(values) + 1, -1, dtype=np.int64)
            t[list(values)] = np.arange(len(values))
            return t

        self._k_lut, self._e_lut = lut(kss), lut(ers)
        self._b = np.arange(B, dtype=np.int64)
        self._fill(spec.resolutions)

    def _fill(self, resolutions) -> None:
        """Compute the cost rows of these resolutions (idempotent: a concurrent fill writes the same values)."""
        spec, macs, params, mem = self.spec, self.tables["macs"], self.tables["params"], self.tables["peak_memory"]
        for r in resolutions:
            r = int(r)
            if self._ready[r]:
                continue
            self._fixed_macs[r], self._fixed_params[r], self._fixed_mem[r] = _fixed_costs(spec, r)
            sizes = spec.feature_sizes(r)
            for b, (cin, cout, stride, _, se) in enumerate(self._geo):
                for ki, k in enumerate(spec.ks_list):
                    for ei, e in enumerate(spec.expand_list):
                        bm, bp, bmem = _block_costs(cin, cout, stride, se, sizes[b], k, spec.mid_channels(cin, e))
                        macs[b, r, ki, ei], params[b, ki, ei], mem[b, r, ei] = bm, bp, bmem
            self._ready[r] = True

    # -- indices ------------------------------------------------------------------------------------
    def _prepare(self, enc, validate: bool):
        if isinstance(enc, SubnetConfig):
            enc = enc.encode()
        enc = np.asarray(enc)
        single = enc.ndim == 1
        if single:
            enc = enc[None]
        if validate:
            enc = validate_encoded(self.spec, enc)
        B, S = self._B, self._S
        mask = active_mask(self.spec, enc[:, 2 * B:2 * B + S])
        ri = enc[:, -1].astype(np.int64)
        if len(ri) and not self._ready[ri].all():
            self._fill(np.unique(ri[~self._ready[ri]]))
        ki = self._k_lut[enc[:, :B]]
        ei = self._e_lut[enc[:, B:2 * B]]
        return single, mask, ri, ki, ei

    def _finish(self, x: np.ndarray, single: bool):
        return x[0] if single else x

    # -- costs ----------------------------------------------------------------------------------------
    def _macs(self, mask, ri, ki, ei):
        R, K, E = self._R, self._K, self._E
        idx = ((self._b * R + ri[:, None]) * K + ki) * E + ei
        idx = np.where(mask, idx, self._macs_flat.size - 1)
        return self._fixed_macs[ri] + self._macs_flat[idx].sum(axis=1)

    def _params(self, mask, ri, ki, ei):
        K, E = self._K, self._E
        idx = (self._b * K + ki) * E + ei
        idx = np.where(mask, idx, self._params_flat.size - 1)
        return self._fixed_params[ri] + self._params_flat[idx].sum(axis=1)

    def _mem(self, mask, ri, ki, ei):
        R, E = self._R, self._E
        idx = (self._b * R + ri[:, None]) * E + ei
        idx = np.where(mask, idx, self._mem_flat.size - 1)
        return np.maximum(self._fixed_mem[ri], self._mem_flat[idx].max(axis=1))

    def macs(self, enc, validate: bool = True) -> np.ndarray:
        """MACs (int64) of each config: (N,) for an (N, W) batch, a scalar for one config."""
        single, *a = self._prepare(enc, validate)
        return self._finish(self._macs(*a), single)

    def params(self, enc, validate: bool = True) -> np.ndarray:
        """Parameter count (int64) of each extracted network."""
        single, *a = self._prepare(enc, validate)
        return self._finish(self._params(*a), single)

    def peak_memory(self, enc, validate: bool = True) -> np.ndarray:
        """Peak activation memory in bytes (int64, fp32, batch 1) as defined in the module docstring."""
        single, *a = self._prepare(enc, validate)
        return self._finish(self._mem(*a), single)

    def all(self, enc, validate: bool = True) -> dict[str, np.ndarray]:
        """{"macs", "params", "peak_memory"} arrays, sharing the index computation."""
        single, *a = self._prepare(enc, validate)
        return {"macs": self._finish(self._macs(*a), single), "params": self._finish(self._params(*a), single),
                "peak_memory": self._finish(self._mem(*a), single)}
