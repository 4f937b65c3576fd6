"""Calibration from whole-network timings (issue 14): the project's hierarchical model vs the family NNLS baseline.

    cd /work/main && OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_calibration.py

Synthetic devices (`bench/calib_devices.py`: per-kernel roofline with launch overhead, channel and spatial tiling,
under-utilisation, per-operator quirks, 1.5-3% lognormal timing noise and 2% slow outliers) of the w1.0 space
(25 resolutions). For each device and seed: N training configs and 2,000 held-out configs, timed with noise; both
models are fitted on the same N timings in the same run and scored on the same held-out timings. Printed: the
held-out share within +-10% and +-5% (mean over seeds) at N = 10, 30, 100, 300, and the fit times (the model's
includes its 5-fold cross-validation, as the service runs it). Then: 30 timings chosen at random vs by
`suggest_configs` (from the cost model alone, or 10 random + 20 suggested conditioned on them).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.calib_devices import DEVICES, device_table, timings          # noqa: E402
from ofa_core.calibrate import agreement, family_baseline, fit_calibration, suggest_configs  # noqa: E402
from ofa_core.spec import get_spec                                       # noqa: E402


def run(spec, dev, ns, seeds, n_test, cv_folds, prior=None):
    rows = {n: {"base": [], "ours": [], "t_base": [], "t_ours": [], "cv": [], "prior": []} for n in ns}
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        true = device_table(dev, spec, seed)
        tr = spec.sample_encoded(max(ns), rng)
        te = spec.sample_encoded(n_test, rng)
        y_tr, y_te = timings(dev, true, tr, rng), timings(dev, true, te, rng)
        for n in ns:
            t0 = time.perf_counter()
            base = family_baseline(spec, tr[:n], y_tr[:n])
            t1 = time.perf_counter()
            res = fit_calibration(spec, tr[:n], y_tr[:n], batch_size=dev.batch, cv_folds=cv_folds, seed=seed)
            t2 = time.perf_counter()
            r = rows[n]
            r["base"].append(agreement(base.predict(te), y_te))
            r["ours"].append(agreement(res.table.predict(te), y_te))
            r["t_base"].append(t1 - t0)
            r["t_ours"].append(t2 - t1)
            if res.report["cv"]:
                r["cv"].append(res.report["cv"]["share_within_10"])
            if prior is not None:
                t = fit_calibration(spec, tr[:n], y_tr[:n], prior=prior, batch_size=dev.batch, cv_folds=0,
                                    seed=seed).table
                r["prior"].append(agreement(t.predict(te), y_te))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--cv-folds", type=int, default=5)
    ap.add_argument("--devices", nargs="*", default=None, help="substrings of device names (default: all)")
    ap.add_argument("--supernet", default="ofa_mbv3_d234_e346_k357_w1.0")
    ap.add_argument("--time-n", type=int, default=300, help="timings in the fit-time measurement")
    ap.add_argument("--time-repeats", type=int, default=5)
    ap.add_argument("--note10-prior", metavar="DIR", help="also fit with the published Note10 tables as the prior "
                    "(a related device's table; the w1.2 space, 5 resolutions)")
    ap.add_argument("--suggest", type=int, default=30, help="timings in the random-vs-suggested comparison (0: skip)")
    args = ap.parse_args(argv)
    prior = None
    if args.note10_prior:
        from ofa_core.latency import LatencyTable
        prior = LatencyTable.from_note10_dir(args.note10_prior)
        args.supernet = prior.spec.name
    spec = get_spec(args.supernet)
    print(f"supernet {spec.name} ({len(spec.resolutions)} resolutions); {args.seeds} seeds x {args.test} held-out "
          f"configs per device; share of held-out timings predicted within +-10% / +-5%")
    print(f"{'device':30s} {'N':>4s} | {'family NNLS':>13s} | {'ours':>13s} | {'ours CV':>7s} | "
          f"{'fit s base':>10s} {'fit s ours':>10s}")
    means = {n: {"base": [], "ours": []} for n in args.ns}
    for name, dev in DEVICES.items():
        if args.devices and not any(d in name for d in args.devices):
            continue
        rows = run(spec, dev, args.ns, range(args.seeds), args.test, args.cv_folds, prior)
        for n in args.ns:
            r = rows[n]
            b10, b5 = (np.mean([a[k] for a in r["base"]]) for k in ("share_within_10", "share_within_5"))
            o10, o5 = (np.mean([a[k] for a in r["ours"]]) for k in ("share_within_10", "share_within_5"))
            means[n]["base"].append(b10)
            means[n]["ours"].append(o10)
            cv = f"{np.mean(r['cv']):.3f}" if r["cv"] else "-"
            extra = ""
            if r["prior"]:
                p10, p5 = (np.mean([a[k] for a in r["prior"]]) for k in ("share_within_10", "share_within_5"))
                extra = f" | with Note10 prior {p10:.3f} / {p5:.3f}"
            print(f"{name:30s} {n:4d} | {b10:.3f} / {b5:.3f} | {o10:.3f} / {o5:.3f} | {cv:>7s} | "
                  f"{np.median(r['t_base']):10.3f} {np.median(r['t_ours']):10.3f}{extra}")
    print("mean over devices (+-10%): " + ", ".join(
        f"N={n}: family {np.mean(means[n]['base']):.3f} vs ours {np.mean(means[n]['ours']):.3f}" for n in args.ns))
    if args.suggest:
        suggestions(spec, args.suggest, range(args.seeds), args.test, args.devices)
    fit_time(spec, args.time_n, args.time_repeats, args.cv_folds)


def suggestions(spec, n, seeds, n_test, only):
    """Held-out +-10% / +-5% after `n` timings chosen at random vs by `suggest_configs`: all n suggested from the
    cost model, or a third random and the rest suggested conditioned on those (what the service does)."""
    print(f"\nactive timing requests ({n} timings; +-10% / +-5%, mean over seeds):")
    for name, dev in DEVICES.items():
        if only and not any(d in name for d in only):
            continue
        res = {"random": [], "suggested": [], "random+suggested": []}
        for seed in seeds:
            rng = np.random.default_rng(2000 + seed)
            true = device_table(dev, spec, seed)
            te = spec.sample_encoded(n_test, rng)
            y_te = timings(dev, true, te, rng)

            def score(enc):
                t = fit_calibration(spec, enc, timings(dev, true, enc, rng), batch_size=dev.batch, cv_folds=0,
                                    seed=seed).table
                a = agreement(t.predict(te), y_te)
                return a["share_within_10"], a["share_within_5"]
            res["random"].append(score(spec.sample_encoded(n, rng)))
            res["suggested"].append(score(suggest_configs(spec, n, batch_size=dev.batch, seed=seed)[0]))
            first = spec.sample_encoded(n // 3, rng)      # as the service suggests after timings: conditioned
            more = suggest_configs(spec, n - len(first), observed=first, batch_size=dev.batch, seed=seed)[0]
            res["random+suggested"].append(score(np.concatenate([first, more])))
        print(f"  {name:30s} " + " | ".join(f"{k} {np.mean([r[0] for r in v]):.3f} / {np.mean([r[1] for r in v]):.3f}"
                                            for k, v in res.items()))


def fit_time(spec, n, repeats, cv_folds):
    """Seconds to fit `n` timings (the model with its nested CV, as the service runs it; and the baseline):
    the fastest of `repeats` runs (a shared host only ever adds time) and the median."""
    dev = DEVICES["launch-bound (GPU, batch 1)"]
    rng = np.random.default_rng(7)
    enc = spec.sample_encoded(n, rng)
    y = timings(dev, device_table(dev, spec, 7), enc, rng)
    fit_calibration(spec, enc[:10], y[:10], cv_folds=0)        # builds the operator layout once (cached)
    ours, base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit_calibration(spec, enc, y, cv_folds=cv_folds)
        t1 = time.perf_counter()
        family_baseline(spec, enc, y)
        base.append(time.perf_counter() - t1)
        ours.append(t1 - t0)
    print(f"fit of {n} timings ({spec.name}): ours {min(ours):.2f} s fastest / {np.median(ours):.2f} s median of "
          f"{repeats} (incl. {cv_folds}-fold nested CV); family NNLS {min(base) * 1e3:.1f} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
