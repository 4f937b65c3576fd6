"""How noisy is the order of two rows of the predictor's data set, and would scoring each held-out image and its
mirror image together make it less so?

    python bench/pairwise_noise.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --n 40

For the data set's first `--n` sub-networks (BN recalibrated as the recipe does), the per-image correctness on
the `--holdout` held-out images, as they are and mirrored left-right. For every pair of sub-networks, the
sampling sd of their accuracy difference over a set of that many images drawn from the same distribution is
sd_j(c_ij - c_kj) / sqrt(N): it is what decides whether a measured order is the true one, and it is small for
similar sub-networks, which disagree on few images. Printed for the plain rows and for rows scored on each image
and its mirror (mean of the two; CIFAR-10 is mirror-symmetric, training augments with mirrors, so the mirrored
images are draws from the same distribution and the mean estimates the same accuracy), with the mean
plain-minus-mirror difference as a check that it does.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ofa_core.bn import preserved_bn_stats, recalibrate_bn  # noqa: E402
from ofa_core.data import ImageArray, iterate_batches, resize  # noqa: E402
from bench import remeasure  # noqa: E402
from ofa_core.spec import SubnetConfig  # noqa: E402
from ofa_core.training import bn_batches, frozen_subnet, like_net  # noqa: E402


@torch.no_grad()
def correctness(net, data: ImageArray, r: int, batch_size: int = 500) -> np.ndarray:
    """(2, N) bool: whether `net` is right on each image as it is (row 0) and mirrored left-right (row 1)."""
    out = [], []
    for x, y in iterate_batches(data, batch_size, train=False):
        x = resize(x, r)
        for view, xv in enumerate((x, x.flip(3))):
            out[view].append((net(like_net(xv, net)).argmax(1) == y).numpy())
    return np.stack([np.concatenate(o) for o in out])


def measure(supernet, cfg: SubnetConfig, train: ImageArray, hold: ImageArray, bn_images: int) -> np.ndarray:
    supernet.set_active(cfg)
    with preserved_bn_stats(supernet):
        recalibrate_bn(supernet, (like_net(x, supernet) for x in bn_batches(train, cfg.r, bn_images)))
        return correctness(frozen_subnet(supernet, cfg), hold, cfg.r)


def pair_sd(c: np.ndarray) -> np.ndarray:
    """(n, N) per-image scores -> sampling sd (pp) of each pair's accuracy difference, i < k."""
    n, N = c.shape
    i, k = np.triu_indices(n, 1)
    return 100 * (c[i] - c[k]).std(1, ddof=1) / np.sqrt(N)


def summarize(plain: np.ndarray, mirrored: np.ndarray) -> dict:
    """(n, N) bool per view -> the pairwise noise of plain rows against mirror-averaged rows."""
    sd_plain = pair_sd(plain.astype(np.float64))
    sd_mirror = pair_sd((plain.astype(np.float64) + mirrored) / 2)
    return {"n": len(plain), "images": plain.shape[1],
            "acc_plain_pp": (100 * plain.mean(1)).tolist(),
            "acc_mirror_avg_pp": (50 * (plain.mean(1) + mirrored.mean(1))).tolist(),
            "pair_sd_plain_pp": float(np.sqrt(np.mean(sd_plain ** 2))),
            "pair_sd_mirror_avg_pp": float(np.sqrt(np.mean(sd_mirror ** 2))),
            "sd_ratio_median": float(np.median(sd_mirror / np.maximum(sd_plain, 1e-12))),
            "plain_minus_mirrored_pp": float(100 * (plain.mean() - mirrored.mean())),
            "view_agreement": float((plain == mirrored).mean())}


def main(argv=None) -> dict:
    a = remeasure.parser(__doc__.splitlines()[0]).parse_args(argv)
    m = remeasure.load(a)
    spec, rows, net, train, hold = m.spec, m.rows[:a.n], m.net, m.train, m.hold
    views = []
    for i, row in enumerate(rows):
        c = measure(net, SubnetConfig.from_dict(spec, row["config"]), train, hold, a.bn_images)
        views.append(c)
        print(f"{i + 1}/{len(rows)}: row {row['acc']:.4f}, plain {c[0].mean():.4f}, mirrored {c[1].mean():.4f}",
              flush=True)
    v = np.stack(views)                                           # (n, 2, N)
    out = summarize(v[:, 0], v[:, 1])
    out["rows_reproduced_max_diff_pp"] = float(max(abs(100 * r["acc"] - p) for r, p in zip(rows, out["acc_plain_pp"])))
    print(f"\n{out['n']} sub-networks, {out['images']} held-out images; rows reproduced to "
          f"{out['rows_reproduced_max_diff_pp']:.3f} pp")
    print(f"sampling sd of a pair's accuracy difference (rms over {out['n'] * (out['n'] - 1) // 2} pairs): plain "
          f"{out['pair_sd_plain_pp']:.3f} pp, image + mirror averaged {out['pair_sd_mirror_avg_pp']:.3f} pp "
          f"(median ratio {out['sd_ratio_median']:.3f})")
    print(f"plain minus mirrored accuracy: {out['plain_minus_mirrored_pp']:+.3f} pp; the two views agree on "
          f"{100 * out['view_agreement']:.1f}% of the images")
    return out


if __name__ == "__main__":
    main()
