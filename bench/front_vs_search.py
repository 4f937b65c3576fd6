"""Benchmark (issue 10, item 6): answers from the stored Pareto front vs single-budget searches.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/front_vs_search.py            # both tables
    ... --tables note10 | host   --budgets 17   --host-table t.json   --prof-repeats 8

Both sides run the service's own code: the front is built as the worker builds it (`SupernetEngine.pareto` with
the service's default settings: bins, generations, refinement) and answered as POST /specialize answers it
(`front_answer` on the stored points); each search is `SupernetEngine.search` as a worker runs it (the default
population and generations), seeds 0, 1 and 2. The budgets are evenly spaced from the smallest achievable latency
to the largest sub-network's, independent of the front.

Tables: "note10" is the published Note10 table with the published predictor (supernet
ofa_mbv3_d234_e346_k357_w1.2, files under ../shared/data/ofa-reference); "host" is this host's CPU, profiled by
ofa_core.profiler (in-context, a few rounds; `--host-table` reuses a saved one), with the default supernet
ofa_mbv3_cifar10 and its committed predictor.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ofa_core.latency import LatencyTable  # noqa: E402
from ofa_core.search import Efficiency  # noqa: E402
from ofa_core.spec import get_spec  # noqa: E402
from service.engine.adapter import SupernetEngine  # noqa: E402
from service.jobs.service import front_answer  # noqa: E402
from service.settings import Settings  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data", "ofa-reference")


def note10() -> tuple[SupernetEngine, LatencyTable]:
    table = LatencyTable.from_note10_dir(os.path.join(SHARED, "note10"))
    return SupernetEngine(table.spec, None, os.path.join(SHARED, "acc_predictor.pth")), table


def host(args) -> tuple[SupernetEngine, LatencyTable]:
    spec = get_spec("ofa_mbv3_cifar10")
    if args.host_table and os.path.exists(args.host_table):
        table = LatencyTable.from_json_file(args.host_table, spec)
        print(f"host table: {args.host_table} (profiled earlier)")
    else:
        import torch
        from ofa_core.profiler import profile_table
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        table = profile_table(spec, repeats=args.prof_repeats, threads=1, progress=False)
        print(f"host table: profiled by ofa_core.profiler ({args.prof_repeats} rounds) in "
              f"{time.perf_counter() - t0:.1f} s")
        if args.host_table:
            table.to_json(args.host_table)
    return SupernetEngine(spec, None, spec.predictor_path), table


def sweep(name: str, eng: SupernetEngine, table: LatencyTable, st: Settings, n_budgets: int, seeds: list[int]
          ) -> tuple[int, int]:
    eff = Efficiency.default(eng.spec, table)
    t0 = time.perf_counter()
    points = eng.pareto(eff, st.pareto_points, st.pareto_population, st.pareto_generations,
                        refine=st.pareto_refine_budgets, refine_population=st.pareto_refine_population,
                        refine_generations=st.pareto_refine_generations)
    build = time.perf_counter() - t0
    lo, hi = eng.minima(eff)["latency_ms"], eng.maxima(eff)["latency_ms"]
    print(f"\n== {name}: supernet {eng.spec.name}, latency {lo:.3f}-{hi:.3f} ms; front: {len(points)} points, "
          f"built in {build:.1f} s (bins {st.pareto_points}, {st.pareto_generations} generations, "
          f"{st.pareto_refine_budgets} + {st.pareto_refine_budgets} refined budgets x {st.pareto_refine_generations} "
          f"generations) ==")
    print(f"searches: population {st.default_population}, {st.default_generations} generations, seeds {seeds}")
    print(f"{'budget':>9} | {'front acc':>9} {'front ms':>9} | " + " ".join(f"{'seed ' + str(s):>8}" for s in seeds)
          + f" {'median':>8} | {'margin pp':>9} {'ok':>3}")
    wins, times = 0, []
    budgets = np.linspace(lo, hi, n_budgets)
    for b in budgets:
        p = front_answer(points, {"latency_ms": float(b)}, None)
        accs = []
        for s in seeds:
            t = time.perf_counter()
            r = eng.search(eff, {"latency_ms": float(b)}, None, st.default_population, st.default_generations, s)
            times.append(time.perf_counter() - t)
            accs.append(r.predicted_acc)
        med = statistics.median(accs)
        fa = p["accuracy"] if p is not None else float("-inf")
        ok = fa >= med
        wins += ok
        print(f"{b:>9.3f} | {fa:>9.4f} {(p or {}).get('latency_ms', float('nan')):>9.3f} | "
              + " ".join(f"{a:>8.4f}" for a in accs) + f" {med:>8.4f} | {100 * (fa - med):>+9.3f} {'yes' if ok else 'NO':>3}",
              flush=True)
    print(f"{name}: front >= median of {len(seeds)} searches at {wins} of {len(budgets)} budgets; front build "
          f"{build:.1f} s; one search {statistics.median(times):.2f} s (median)")
    return wins, len(budgets)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", choices=["note10", "host"], default=["note10", "host"])
    ap.add_argument("--budgets", type=int, default=17, help="budgets, evenly spaced over the whole latency range")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--host-table", default=None, help="JSON of a profiled host table (written if missing)")
    ap.add_argument("--prof-repeats", type=int, default=8, help="profiler rounds for the host table")
    args = ap.parse_args(argv)
    st = Settings()
    total = [0, 0]
    for name in args.tables:
        eng, table = note10() if name == "note10" else host(args)
        w, n = sweep("Note10 table, published predictor" if name == "note10" else "host-cpu (profiled)", eng, table,
                     st, args.budgets, args.seeds)
        total[0] += w
        total[1] += n
    print(f"\nall tables: front >= median search at {total[0]} of {total[1]} budgets")
    return 0 if total[0] == total[1] else 1


if __name__ == "__main__":
    sys.exit(main())
