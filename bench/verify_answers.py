"""Searched answers against measurement (issue 10, "Numbers it must show"): for N searched answers of the default
supernet on this host, predicted vs measured accuracy (RMSE in pp, Kendall tau) and predicted vs measured latency
(share within +-10%).

1. A host latency table is profiled here (ofa_core.profiler, network mode, as `ofa profile-host`; a short profile by
   default: --repeats rounds).
2. N budgets spread evenly across the table's latency range (smallest achievable to the largest sub-network);
   each is searched as the service searches (SupernetEngine.search, the service's default population and
   generations).
3. The N answers are timed end to end together (ofa_core.profiler.time_subnets: the profiler's protocol,
   interleaved rounds, the fastest run, 1 thread, batch 1), right after the searches (little host drift).
4. Each answer is BN-recalibrated on the packaged calibration images and scored on the packaged evaluation images
   (service.engine.calibration.ImageSets.measure, what the service stores and serves).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m bench.verify_answers [--n 50] [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ofa_core.imagepack import packaged_sets  # noqa: E402
from ofa_core.measure import BNRecipe  # noqa: E402
from ofa_core.profiler import agreement, profile_table, time_subnets  # noqa: E402
from ofa_core.spec import get_spec  # noqa: E402
from service.engine.adapter import SupernetEngine  # noqa: E402
from service.engine.calibration import ImageSets  # noqa: E402
from service.settings import Settings  # noqa: E402

SUPERNET = "ofa_mbv3_cifar10"


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(a, b).statistic)


def profile(spec, supernet, repeats: int, check: int) -> tuple:
    """The host table; with `check`, that many random sub-networks timed in the same rounds (the table's own
    agreement, without the drift of the host between the profile and the answers' timing)."""
    t0 = time.perf_counter()
    lt = profile_table(spec, repeats=repeats, threads=1, supernet=supernet, progress=False, check=check)
    return lt, time.perf_counter() - t0


def search_all(eng: SupernetEngine, eff, budgets: np.ndarray, population: int, generations: int) -> list:
    out = []
    for i, b in enumerate(budgets):
        out.append(eng.search(eff, {"latency_ms": float(b)}, None, population, generations, seed=i))
    return out


def measure_all(sets: ImageSets, eng: SupernetEngine, answers: list) -> np.ndarray:
    return np.asarray([sets.measure(eng.supernet, r.config).accuracy for r in answers])


def report(budgets, answers, acc_meas, lat_meas, n_eval: int) -> None:
    acc_pred = np.asarray([r.predicted_acc for r in answers])
    lat_pred = np.asarray([r.latency_ms for r in answers])
    print(f"\n{'#':>3} {'budget ms':>9} {'pred ms':>8} {'meas ms':>8} {'ratio':>6} {'pred acc':>8} {'meas acc':>8} "
          f"{'r':>3}  subnet")
    for i, r in enumerate(answers):
        print(f"{i:>3} {budgets[i]:9.3f} {lat_pred[i]:8.3f} {lat_meas[i]:8.3f} {lat_pred[i] / lat_meas[i]:6.3f} "
              f"{acc_pred[i]:8.4f} {acc_meas[i]:8.4f} {r.config.r:>3}  {r.config.content_id()}")
    err = (acc_pred - acc_meas) * 100
    lat = agreement(lat_pred / lat_meas, 0.10)
    distinct = len({r.config.content_id() for r in answers})
    print(f"\n{len(answers)} searched answers ({distinct} distinct sub-networks), measured accuracy on {n_eval} "
          f"packaged evaluation images after BN recalibration")
    print(f"accuracy: predicted vs measured RMSE {np.sqrt(np.mean(err ** 2)):.2f} pp, mean error (pred - meas) "
          f"{err.mean():+.2f} pp, max |error| {np.abs(err).max():.2f} pp, Kendall tau {kendall_tau(acc_pred, acc_meas):.3f}")
    print(f"latency: predicted vs measured on this host: {lat['share_within'] * 100:.0f}% within +-10% "
          f"(median |rel. error| {lat['median_abs_rel_err'] * 100:.1f}%, median pred/meas {lat['median_ratio']:.3f}, "
          f"range {lat['min_ratio']:.3f}..{lat['max_ratio']:.3f}); answers over their budget when measured: "
          f"{int(np.sum(lat_meas > budgets))} of {len(answers)}")
    res = np.asarray([r.config.r for r in answers])
    print("median pred/meas latency by resolution: " + ", ".join(
        f"r {v}: {np.median(lat_pred[res == v] / lat_meas[res == v]):.3f} (n {int(np.sum(res == v))})"
        for v in sorted(set(res.tolist()))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="searched answers (budgets)")
    ap.add_argument("--repeats", type=int, default=20, help="profiling rounds of the host table")
    ap.add_argument("--timing-rounds", type=int, default=40, help="end-to-end timing rounds of the answers")
    ap.add_argument("--check", type=int, default=10, help="random sub-networks timed within the profile's rounds")
    ap.add_argument("--population", type=int, default=None, help="default: the service's")
    ap.add_argument("--generations", type=int, default=None, help="default: the service's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    settings = Settings()
    pop, gens = args.population or settings.default_population, args.generations or settings.default_generations
    spec = get_spec(SUPERNET)
    eng = SupernetEngine(spec, spec.resolve_weights(), spec.predictor_path)
    assert eng.has_weights and eng.search_ready, "the default supernet's weights and predictor are packaged"
    packaged = packaged_sets(SUPERNET)
    sets = ImageSets(spec, packaged["calibration"], packaged["evaluation"], BNRecipe())
    lt, t_prof = profile(spec, eng.supernet, args.repeats, args.check)
    eff = eng.efficiency(-1, lambda: lt.tables)
    lo, hi = eng.minima(eff)["latency_ms"], eng.maxima(eff)["latency_ms"]
    budgets = np.linspace(lo, hi, args.n + 1)[1:]          # evenly across (min, max]
    print(f"host table: profiled in {t_prof:.1f} s ({args.repeats} rounds, 1 thread); latency range "
          f"{lo:.3f}..{hi:.3f} ms; {args.n} budgets {budgets[0]:.3f}..{budgets[-1]:.3f} ms; "
          f"search population {pop}, generations {gens}; weights {os.path.basename(eng.weights_path)}, "
          f"predictor {os.path.basename(eng.predictor_path)}")
    chk = lt.environment.get("check")
    if chk:
        print(f"the table vs {chk['n']} random sub-networks timed within the profile's rounds: "
              f"{chk['share_within'] * 100:.0f}% within +-10% (median pred/meas {chk['median_ratio']:.3f})")
    t0 = time.perf_counter()
    answers = search_all(eng, eff, budgets, pop, gens)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    lat_meas = time_subnets(eng.supernet, [r.config for r in answers], repeats=args.timing_rounds, threads=1,
                            statistic="min", seed=0)
    t_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc_meas = measure_all(sets, eng, answers)
    t_meas = time.perf_counter() - t0
    report(budgets, answers, acc_meas, lat_meas, len(sets._load("evaluation")))
    print(f"wall time {time.perf_counter() - t_all:.1f} s (profile {t_prof:.1f} s, {args.n} searches {t_search:.1f} s, "
          f"end-to-end timing {t_time:.1f} s, recalibration + evaluation {t_meas:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
