"""How far is one row of the predictor's data set from the sub-network's accuracy? Re-measures the data set's
first sub-networks with another BN recalibration draw, and on each half of the held-out split, and prints the
two parts of a row's error that differ between sub-networks (a part common to all of them cannot change a
ranking) beside the spread of the data set's accuracies.

    python bench/label_noise.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --n 40

A row is: BN recalibrated on `--bn-images` training images (seed 0), top-1 on the `--holdout` held-out training
images (`holdout_split(train, holdout, seed=0)`), as `ofa_core.recipe` measures it; the first check is that the
rows are reproduced exactly. The held-out part is estimated from the two halves' difference, less the part of it
that grows linearly with accuracy (an easier half lifts better sub-networks more, which keeps their order): it is the sampling error of a fixed image set, which is the same every time a sub-network is
measured, so similar sub-networks share much of it and a predictor can learn that much of it too.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import remeasure  # noqa: E402
from ofa_core.spec import SubnetConfig  # noqa: E402
from ofa_core.training import evaluate_subnet_on  # noqa: E402


def main(argv=None) -> dict:
    a = remeasure.parser(__doc__.splitlines()[0]).parse_args(argv)
    m = remeasure.load(a)
    spec, rows, net, train, hold = m.spec, m.rows, m.net, m.train, m.hold
    half = len(hold) // 2
    halves = [hold.subset(np.arange(half)), hold.subset(np.arange(half, 2 * half))]
    got = []
    for i, row in enumerate(rows[:a.n]):
        cfg = SubnetConfig.from_dict(spec, row["config"])
        s0 = evaluate_subnet_on(net, cfg, train, halves, a.bn_images, bn_seed=0)
        s1 = evaluate_subnet_on(net, cfg, train, halves, a.bn_images, bn_seed=1)
        got.append((row["acc"], *s0, *s1))
        print(f"{i + 1}/{len(rows[:a.n])}: row {row['acc']:.4f}; BN draw 0: halves {s0[0]:.4f} {s0[1]:.4f}, mean "
              f"{np.mean(s0):.4f}; BN draw 1: halves {s1[0]:.4f} {s1[1]:.4f}, mean {np.mean(s1):.4f}", flush=True)
    g = 100 * np.asarray(got)                                     # pp: row, A0, B0, A1, B1
    full0, full1 = g[:, 1:3].mean(1), g[:, 3:5].mean(1)
    bn_sd = float(np.std(full0 - full1, ddof=1) / math.sqrt(2))   # one row's BN-draw noise
    d = (g[:, 1] - g[:, 2]) + (g[:, 3] - g[:, 4])                 # half A - half B, both draws
    # an easier half lifts the better sub-networks more (a difference that grows with accuracy keeps their order):
    # the part of the halves' difference that a straight line in accuracy does not explain is what can reorder
    mean_acc = (full0 + full1) / 2
    resid = d / 2 - np.polyval(np.polyfit(mean_acc, d / 2, 1), mean_acc)
    eval_sd = float(np.sqrt(np.sum(resid ** 2) / (len(resid) - 2)) / 2)
    noise = math.hypot(bn_sd, eval_sd)
    spread = float(np.std([100 * r["acc"] for r in rows]))
    out = {"n": len(got), "rows_reproduced_max_diff_pp": float(np.max(np.abs(full0 - g[:, 0]))),
           "bn_draw_sd_pp": bn_sd, "eval_split_sd_pp": eval_sd, "label_noise_sd_pp": noise,
           "dataset_sd_pp": spread}
    print("\n| part of a row's noise | sd, pp |\n|---|---|")
    print(f"| BN recalibration draw ({a.bn_images} images) | {bn_sd:.3f} |")
    print(f"| which {2 * half} held-out images (sub-network-specific part) | {eval_sd:.3f} |")
    print(f"| both | {noise:.3f} |")
    print(f"\nthe data set's accuracies: sd {spread:.3f} pp over {len(rows)} rows; the first {len(got)} rows reproduced "
          f"to {out['rows_reproduced_max_diff_pp']:.3f} pp")
    return out


if __name__ == "__main__":
    main()
