"""How the accuracy predictor's held-out ranking grows with the number of measured sub-networks.

    python -m bench.predictor_curve [--data ofa_core/assets/ofa_mbv3_cifar10_predictor_data.jsonl]

One fixed held-out split (`--val` rows, drawn by `--split-seed`); the training rows are the first n of a
seeded permutation of the rest, for each n in `--ns` and each seed in `--seeds`. Every fit is
`ofa_core.predictor.train_predictor` with the service's defaults. Prints held-out RMSE (pp) and Kendall tau per
n (mean and spread over seeds), then the tau a predictor with no error other than independent Gaussian label
noise of sd sigma would reach on these labels, for a few sigma: where the curve flattens against that line,
more rows stop paying and only less label noise (more held-out images per row) does.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from ofa_core.predictor import LABELS, kendall_tau, read_predictor_dataset, read_rows, rmse_pp, train_predictor
from ofa_core.spec import get_spec

DEFAULT_DATA = "ofa_core/assets/ofa_mbv3_cifar10_predictor_data.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--supernet", default="ofa_mbv3_cifar10")
    ap.add_argument("--label", choices=sorted(LABELS), default="acc",
                    help="what the predictor trains on (mirror_avg: rows with acc_mirrored, see ofa_core.predictor)")
    ap.add_argument("--val-label", choices=sorted(LABELS), default=None,
                    help="what the held-out rows are scored against (default: --label); training on mirror_avg and "
                         "scoring against acc tells whether the ranking of the plain measurements improved")
    ap.add_argument("--val", type=int, default=200, help="held-out rows (fixed for every fit)")
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 200, 400, 600, 800])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def noise_ceiling(acc: np.ndarray, sigma_pp: float, rng: np.random.Generator, reps: int = 20) -> float:
    """Kendall tau between `acc` and `acc` plus N(0, sigma) noise: what a predictor that knew each sub-network's
    accuracy on infinitely many images would score against labels with independent noise sigma (pp)."""
    return float(np.mean([kendall_tau(acc, acc + rng.normal(0, sigma_pp / 100, len(acc))) for _ in range(reps)]))


def _two_views(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(acc, acc_mirrored) of every row, if every row has both."""
    rows = read_rows(path)
    if not rows or any("acc_mirrored" not in r for r in rows):
        return None
    return np.array([r["acc"] for r in rows]), np.array([r["acc_mirrored"] for r in rows])


def curve(enc: np.ndarray, acc: np.ndarray, val_acc: np.ndarray, spec, args) -> list[dict]:
    """Fits on `acc` (early stopping on the held-out rows' `acc`), scored against `val_acc` on the held-out rows."""
    n = len(acc)
    perm = np.random.default_rng(args.split_seed).permutation(n)
    val, pool = perm[:args.val], perm[args.val:]
    rows = []
    for n_train in args.ns:
        if n_train > len(pool):
            print(f"n={n_train}: only {len(pool)} training rows, skipped")
            continue
        res = []
        for seed in range(args.seeds):
            tr = np.random.default_rng(1000 + seed).permutation(pool)[:n_train]
            idx = np.concatenate([tr, val])                       # val last: indices n_train.. in the subset
            t0 = time.perf_counter()
            pred, _ = train_predictor(enc[idx], acc[idx], spec, val_indices=np.arange(n_train, len(idx)),
                                      seed=seed, epochs=args.epochs)
            p = pred.predict(enc[val])
            res.append((rmse_pp(p, val_acc[val]), kendall_tau(p, val_acc[val]),
                        time.perf_counter() - t0))
        r = np.asarray(res)
        row = {"n_train": n_train, "rmse": r[:, 0].mean(), "rmse_sd": r[:, 0].std(), "tau": r[:, 1].mean(),
               "tau_sd": r[:, 1].std(), "seconds": r[:, 2].mean()}
        print(f"n_train {n_train:5d}: held-out RMSE {row['rmse']:.3f} pp (sd {row['rmse_sd']:.3f}), "
              f"tau {row['tau']:.3f} (sd {row['tau_sd']:.3f}), {row['seconds']:.1f} s per fit", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = get_spec(args.supernet)
    enc, acc = read_predictor_dataset(args.data, spec, label=args.label)
    val_label = args.val_label or args.label
    _, val_acc = read_predictor_dataset(args.data, spec, label=val_label)
    print(f"{len(acc)} rows from {args.data}, trained on label {args.label}, scored against {val_label}: accuracy "
          f"{acc.min() * 100:.2f}-{acc.max() * 100:.2f}%, sd {acc.std() * 100:.2f} pp; {args.val} held out (split "
          f"seed {args.split_seed}), {args.seeds} seeds")
    rows = curve(enc, acc, val_acc, spec, args)
    views = _two_views(args.data)
    held = np.random.default_rng(args.split_seed).permutation(len(acc))[:args.val]
    if views is not None:
        a, b = views[0][held], views[1][held]
        print(f"two measurements of the same held-out rows (the images, and their mirror images): tau "
              f"{kendall_tau(a, b):.3f}, RMSE {rmse_pp(a, b):.3f} pp "
              f"(all rows: tau {kendall_tau(*views):.3f}): a predictor that ranks as well as that is at the ceiling "
              "the labels' sampling noise sets")
    rng = np.random.default_rng(0)
    val = val_acc[held]
    for s in (0.15, 0.2, 0.25, 0.3):
        gauss = (2 / math.pi) * math.asin(val.std() / math.hypot(val.std(), s / 100))
        print(f"label noise sd {s:.2f} pp: a perfect predictor's tau on these held-out labels "
              f"{noise_ceiling(val, s, rng):.3f} (Gaussian formula {gauss:.3f})")
    return rows


if __name__ == "__main__":
    main()
