"""Does progressive shrinking help? Train the same supernet twice for the same number of steps — once with
the progressive-shrinking schedule, once with every dimension elastic from the start (no shrinking, no
distillation) — then measure the same 8 sub-networks (2 depths x 2 expand ratios x 2 kernel sizes) on a
held-out split after BN recalibration. Prints a table and writes JSON. Reports whatever it finds.

    python bench/shrinking_ablation.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out runs/ablation
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ofa_core.data import holdout_split, load_dataset
from ofa_core.recipe import probe_configs
from ofa_core.spec import get_spec
from ofa_core.training import (ProgressiveShrinkingTrainer, TrainConfig, evaluate_subnet, one_shot_phases,
                               progressive_shrinking_phases)


def run(args) -> dict:
    spec = get_spec(args.supernet)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.data, cache_dir=args.cache_dir, progress=False)
    train, hold = holdout_split(splits["train"], args.holdout, seed=0)
    train = train.sample(args.train_images, seed=args.seed)
    ps = progressive_shrinking_phases(spec, args.scale, args.lr)
    steps_per_epoch = len(train) // args.batch_size
    ps_steps = sum(p.steps(steps_per_epoch) for p in ps)
    schedules = {   # the same number of optimizer steps for both
        "progressive": ps,
        "one-shot": one_shot_phases(spec, ps_steps / steps_per_epoch, args.lr, n_subnets=2),
    }
    results = {"train_images": len(train), "holdout_images": len(hold), "batch_size": args.batch_size,
               "steps": {k: sum(p.steps(steps_per_epoch) for p in v) for k, v in schedules.items()},
               "acc": {}, "wall_s": {}}
    for name, phases in schedules.items():
        t = time.time()
        cfg = TrainConfig(phases=phases, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                          eval_images=1000, bn_images=1000)
        tr = ProgressiveShrinkingTrainer(spec, cfg, train, hold, os.path.join(args.out, name),
                                         progress=not args.no_progress)
        tr.run(resume=True)
        results["wall_s"][name] = round(time.time() - t, 1)
        results["acc"][name] = {}
        for key, c in probe_configs(spec, max(spec.resolutions)):
            results["acc"][name][key] = evaluate_subnet(tr.net, c, train, hold, args.bn_images)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--holdout", type=int, default=5000)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bn-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    res = run(a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ablation.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    print(f"train images {res['train_images']}, held-out {res['holdout_images']}, steps {res['steps']}, "
          f"wall {res['wall_s']}")
    print("| sub-network (d-e-k) | progressive shrinking | one-shot (no shrinking) | difference (pp) |")
    print("|---|---|---|---|")
    for key in res["acc"]["progressive"]:
        a_ps, a_os = res["acc"]["progressive"][key], res["acc"]["one-shot"][key]
        print(f"| {key} | {a_ps:.2%} | {a_os:.2%} | {100 * (a_ps - a_os):+.2f} |")
    ps, os_ = np.mean(list(res["acc"]["progressive"].values())), np.mean(list(res["acc"]["one-shot"].values()))
    print(f"| mean | {ps:.2%} | {os_:.2%} | {100 * (ps - os_):+.2f} |")
    return res


if __name__ == "__main__":
    main()
