"""Benchmark of ofa_core extraction / costs / export (issue 2). Run:

    cd /work/main && OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_core.py

Prints: direct state-dict extraction median/p90 (w1.0) vs module construction; cost model for 100,000 configs
vs a per-config Python loop; the largest extracted-vs-supernet output difference; safetensors streaming.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "core"))   # the tests' weight randomiser

from ofa_core.costs import CostModel, config_costs          # noqa: E402
from ofa_core.export import export_safetensors             # noqa: E402
from ofa_core.extract import extract, extract_state_dict   # noqa: E402
from ofa_core.mbv3 import build_supernet                    # noqa: E402
from ofa_core.spec import SubnetConfig, get_spec           # noqa: E402
from ofa_test_utils import randomize                        # noqa: E402

W10, W12, CIFAR = "ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2", "ofa_mbv3_cifar10"


def timeit(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return np.asarray(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=60)
    ap.add_argument("--equality-configs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, numpy {np.__version__}")

    spec = get_spec(W10)
    net = randomize(build_supernet(spec, seed=0), 1).eval()
    rng = np.random.default_rng(0)
    cfgs = [spec.sample(rng) for _ in range(args.configs)]
    for c in cfgs[:5]:
        extract_state_dict(net, c)
    it = iter(cfgs)
    direct = timeit(lambda: extract_state_dict(net, next(it)), len(cfgs))
    it = iter(cfgs)
    via_module = timeit(lambda: extract(net, next(it)).state_dict(), len(cfgs))
    print(f"[extract] w1.0 state dict, direct   : median {np.median(direct) * 1e3:7.2f} ms, "
          f"p90 {np.percentile(direct, 90) * 1e3:7.2f} ms over {len(cfgs)} random configs")
    print(f"[extract] w1.0 via module + load    : median {np.median(via_module) * 1e3:7.2f} ms, "
          f"p90 {np.percentile(via_module, 90) * 1e3:7.2f} ms  (baseline)")
    print(f"[extract] speed-up direct vs module  : {np.median(via_module) / np.median(direct):6.1f}x")

    # cost model
    model = CostModel(spec)
    enc = spec.sample_encoded(100_000, np.random.default_rng(1))
    model.all(enc[:10])
    t = time.perf_counter()
    out = model.all(enc)
    vec = time.perf_counter() - t
    t = time.perf_counter()
    out_nv = model.all(enc, validate=False)
    vec_nv = time.perf_counter() - t
    n_loop = 2000
    t = time.perf_counter()
    loop = [config_costs(spec, SubnetConfig.from_encoded(spec, row)) for row in enc[:n_loop]]
    per_cfg = (time.perf_counter() - t) / n_loop
    assert all(loop[i]["macs"] == out["macs"][i] and loop[i]["peak_memory"] == out["peak_memory"][i]
               for i in range(n_loop))
    assert all(np.array_equal(out[k], out_nv[k]) for k in out)
    print(f"[costs]   100,000 configs vectorized : {vec * 1e3:7.1f} ms (macs+params+peak, validated); "
          f"{vec_nv * 1e3:.1f} ms unvalidated")
    print(f"[costs]   per-config Python loop     : {per_cfg * 1e6:7.1f} us/config -> "
          f"{per_cfg * 1e5:.1f} s per 100,000 (baseline, measured on {n_loop}); speed-up {per_cfg * 1e5 / vec:.0f}x")
    print(f"[costs]   MACs range {out['macs'].min() / 1e6:.1f}-{out['macs'].max() / 1e6:.1f} M, params "
          f"{out['params'].min() / 1e6:.2f}-{out['params'].max() / 1e6:.2f} M, peak memory "
          f"{out['peak_memory'].min() / 2**20:.2f}-{out['peak_memory'].max() / 2**20:.2f} MiB")

    # equality
    worst, n = 0.0, 0
    for name, res in ((W10, (128, 160)), (W12, (160,)), (CIFAR, (24, 28, 32))):
        s = get_spec(name)
        sn = net if name == W10 else randomize(build_supernet(s, seed=0), 2).eval()
        r2 = np.random.default_rng(7)
        for i in range(args.equality_configs):
            c = s.sample(r2, resolutions=[res[i % len(res)]])
            x = torch.randn(1, 3, c.r, c.r)
            with torch.no_grad():
                sn.set_active(c)
                worst = max(worst, (extract(sn, c)(x) - sn(x)).abs().max().item())
            n += 1
    print(f"[equal]   largest |extracted - supernet| over {n} configs (w1.0, w1.2, cifar10): {worst:.3e}")

    # safetensors streaming
    full = spec.max_config(224)
    t = time.perf_counter()
    stream = export_safetensors(net, full)
    t_init = time.perf_counter() - t
    t = time.perf_counter()
    nbytes = sum(len(b) for b in stream.iter_bytes())
    t_iter = time.perf_counter() - t
    print(f"[export]  full w1.0 safetensors {nbytes / 2**20:.1f} MiB: construct (extract + data hash) "
          f"{t_init * 1e3:.1f} ms, stream all bytes {t_iter * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
