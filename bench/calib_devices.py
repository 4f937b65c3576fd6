"""Synthetic devices for the calibration benchmark and tests: a per-kernel roofline with launch overhead,
channel tiling, under-utilisation of small kernels, per-operator quirks and realistic timing noise.

Every operator runs its kernels (expand 1x1, depthwise kxk, SE pool/fc/fc/scale, project 1x1, residual add; the
fixed operators likewise), each costing ``launch + max(MACs / (peak * utilisation), traffic / bandwidth)``, where
utilisation falls for channel counts off the device's tile and for kernels too small to fill the device. Each
operator then gets a lognormal quirk (kernel selection, cache effects). A timing is the table's sum times lognormal
noise, with a few slow outliers (another process, a clock change). None of this is the calibration model's form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ofa_core.latency import LatencyTable, block_operator_key, fixed_operator_keys
from ofa_core.spec import SupernetSpec, make_divisible


@dataclass(frozen=True)
class Device:
    name: str
    peak_mac_per_ms: float      # dense conv throughput
    dw_efficiency: float        # depthwise throughput relative to dense
    elems_per_ms: float         # memory bandwidth in fp elements per ms
    launch_ms: float            # per kernel
    tile: int = 8               # channel tile
    saturation: float = 0.0     # outputs (batch x h x w x c) needed to fill the device; 0 = always full
    spatial_tile: int = 1       # output rows/columns are computed in tiles of this size
    batch: int = 1
    quirk: float = 0.06         # per-operator lognormal sigma
    noise: float = 0.02         # per-timing lognormal sigma
    outliers: float = 0.02      # share of timings 10-40% slow
    hswish_unfused: bool = False


DEVICES = {
    "compute-bound (mobile CPU)": Device("mobile-cpu", 2.0e7, 0.3, 2.5e6, 0.004, tile=4),
    "memory-bound (edge NPU)": Device("edge-npu", 4.0e8, 0.5, 4.0e5, 0.01, tile=16, hswish_unfused=True),
    "launch-bound (GPU, batch 1)": Device("gpu-b1", 1.0e10, 0.4, 1.5e8, 0.011, tile=32, saturation=2.0e5,
                                          spatial_tile=4, quirk=0.08, noise=0.03),
    "throughput (GPU, batch 64)": Device("gpu-b64", 1.2e10, 0.35, 2.0e8, 0.011, tile=32, saturation=2.0e5,
                                         spatial_tile=8, batch=64, noise=0.015),
}


def _kernel(dev: Device, macs: float, elems: float, cout: int, outputs: float, dw: bool = False, f: int = 0
            ) -> float:
    util = cout / (math.ceil(cout / dev.tile) * dev.tile) if cout else 1.0
    if f and dev.spatial_tile > 1:
        util *= (f / (math.ceil(f / dev.spatial_tile) * dev.spatial_tile)) ** 2
    if dev.saturation:
        util *= min(1.0, outputs / dev.saturation) ** 0.7
    peak = dev.peak_mac_per_ms * (dev.dw_efficiency if dw else 1.0)
    return dev.launch_ms + max(macs / (peak * max(util, 1e-3)), elems / dev.elems_per_ms)


def _block_ms(dev: Device, cin, cout, stride, act, se, f, k, mid) -> float:
    b = dev.batch
    fo = (f - 1) // stride + 1
    t = _kernel(dev, b * mid * cin * f * f, b * (cin + mid) * f * f + cin * mid, mid, b * mid * f * f, f=f)
    t += _kernel(dev, b * mid * k * k * fo * fo, b * mid * (f * f + fo * fo) + mid * k * k, mid, b * mid * fo * fo,
                 dw=True, f=fo + k - 1)
    if se:
        m = make_divisible(mid // 4)
        t += _kernel(dev, 0, b * mid * fo * fo, 0, b * mid)
        t += _kernel(dev, b * mid * m, mid * m, m, b * m) + _kernel(dev, b * mid * m, mid * m, mid, b * mid)
        t += _kernel(dev, 0, 2 * b * mid * fo * fo, 0, b * mid * fo * fo)
    t += _kernel(dev, b * cout * mid * fo * fo, b * (mid + cout) * fo * fo + mid * cout, cout, b * cout * fo * fo,
                 f=fo)
    if stride == 1 and cin == cout:
        t += _kernel(dev, 0, 3 * b * cout * fo * fo, 0, b * cout * fo * fo)
    if act == "h_swish" and dev.hswish_unfused:
        t += 2 * _kernel(dev, 0, 2 * b * mid * (f * f + fo * fo) / 2, 0, b * mid * fo * fo)
    return t


def _fixed_ms(dev: Device, spec: SupernetSpec, r: int) -> list[float]:
    wd, b = spec.widths, dev.batch
    c0, c1, c5, cfe, cl, n = (wd["stem"], wd["first_block"], wd["stages"][-1], wd["final_expand"], wd["last"],
                              spec.n_classes)
    f1, ff = (r - 1) // spec.stem_stride + 1, spec.feature_sizes(r)[-1]
    return [_kernel(dev, b * c0 * f1 * f1 * 27, b * (3 * r * r + c0 * f1 * f1), c0, b * c0 * f1 * f1),
            _kernel(dev, b * c0 * f1 * f1 * 9, 2 * b * c0 * f1 * f1, c0, b * c0 * f1 * f1, dw=True)
            + _kernel(dev, b * c1 * f1 * f1 * c0, b * (c0 + c1) * f1 * f1, c1, b * c1 * f1 * f1),
            _kernel(dev, b * cfe * ff * ff * c5, b * (c5 + cfe) * ff * ff + cfe * c5, cfe, b * cfe * ff * ff),
            _kernel(dev, 0, b * cfe * ff * ff, 0, b * cfe),
            _kernel(dev, b * cl * cfe, cl * cfe, cl, b * cl),
            _kernel(dev, b * cl * n, cl * n, n, b * n)]


def device_table(dev: Device, spec: SupernetSpec, seed: int = 0, resolutions=None) -> LatencyTable:
    """The device's true per-operator table (quirks drawn with `seed`)."""
    rng = np.random.default_rng(seed)
    geo = spec.block_in_out()
    tables = {}
    for r in (resolutions or spec.resolutions):
        t = {}
        for key, v in zip(fixed_operator_keys(spec, r), _fixed_ms(dev, spec, r)):
            t[key] = {"mean": v * float(np.exp(rng.normal(0, dev.quirk)))}
        sizes = spec.feature_sizes(r)
        for bi, (cin, cout, stride, act, se) in enumerate(geo):
            for k in spec.ks_list:
                for e in spec.expand_list:
                    key = block_operator_key(spec, r, bi, k, e)
                    if key not in t:
                        ms = _block_ms(dev, cin, cout, stride, act, se, sizes[bi], k, spec.mid_channels(cin, e))
                        t[key] = {"mean": ms * float(np.exp(rng.normal(0, dev.quirk)))}
        tables[r] = t
    return LatencyTable(spec, tables, source="measured", environment={"device": dev.name, "synthetic": True},
                        batch_size=dev.batch)


def timings(dev: Device, table: LatencyTable, enc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Measured ms of encoded configs: the table's sum, lognormal noise, a few slow outliers."""
    y = table.predict(enc) * np.exp(rng.normal(0, dev.noise, len(enc)))
    slow = rng.random(len(enc)) < dev.outliers
    return np.where(slow, y * rng.uniform(1.1, 1.4, len(enc)), y)
