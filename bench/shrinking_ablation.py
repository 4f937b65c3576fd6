"""Does progressive shrinking help? From the same trained full network (the teacher), train the supernet twice
with the same number of sub-network forward/backward passes: once with the shrinking phases (kernel, then
depth, then expand ratio, channels re-sorted, distillation from the teacher), once with every dimension
elastic from the start (one-shot, two sub-networks per step, the same distillation), then measure the same 8
sub-networks (2 depths x 2 expand ratios x 2 kernel sizes) on a held-out split after BN recalibration. Prints a
table and writes JSON. Reports whatever it finds.

    python bench/shrinking_ablation.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out runs/ablation \
        --from /var/tmp/ofa-runs/ofa_mbv3_cifar10/after_full.pt --scale 0.25

`--from` is a checkpoint whose full phase is done (a run keeps one as `after_full.pt`; a later phase's last.pt
serves too: its teacher is the full phase's network); without it the full phase is trained here first (one run,
shared by both arms).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from ofa_core.data import holdout_split, load_dataset
from ofa_core.mbv3 import build_supernet
from ofa_core.recipe import probe_configs
from ofa_core.spec import get_spec
from ofa_core.training import Phase, ProgressiveShrinkingTrainer, TrainConfig, cifar_phases, evaluate_subnet


def passes(phases: list[Phase], steps_per_epoch: int) -> int:
    """Sub-network forward/backward passes of a schedule."""
    return sum(p.steps(steps_per_epoch) * p.n_subnets for p in phases)


def schedules(spec, scale: float, lr: float, steps_per_epoch: int) -> dict[str, list[Phase]]:
    shrink = cifar_phases(spec, scale, lr)[1:]
    n = passes(shrink, steps_per_epoch)
    # the same passes, 2 per step (one more where n is odd)
    one_shot = Phase("all-elastic", math.ceil(n / 2) / steps_per_epoch, lr * 0.3, 2)
    return {"progressive": shrink, "one-shot": [one_shot]}


def teacher_net(spec, args, train, hold):
    """The shared starting point: a checkpoint's weights, or a full phase trained here."""
    net = build_supernet(spec, seed=args.seed)
    if args.start:
        payload = torch.load(args.start, map_location="cpu", weights_only=True)
        if payload.get("state", {}).get("phase", 0) < 1:
            raise SystemExit(f"{args.start}: its full phase is not finished (phase {payload['state']['phase']})")
        # a later phase's checkpoint carries the full phase's network as its teacher (the committed run's
        # last.pt, restored with run_status --restore, serves where after_full.pt is gone)
        net.load_state_dict(payload["teacher"] if payload.get("teacher") else payload["state_dict"])
        return net
    full = cifar_phases(spec, args.scale, args.lr)[:1]
    cfg = TrainConfig(phases=full, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                      eval_images=args.eval_images, bn_images=args.bn_images)
    tr = ProgressiveShrinkingTrainer(spec, cfg, train, hold, os.path.join(args.out, "full"), supernet=net,
                                     progress=not args.no_progress)
    tr.run(resume=True)
    return tr.net


def run(args) -> dict:
    spec = get_spec(args.supernet)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.data, cache_dir=args.cache_dir, progress=False)
    train, hold = holdout_split(splits["train"], args.holdout, seed=0)
    if args.train_images:
        train = train.sample(args.train_images, seed=args.seed)
    steps_per_epoch = len(train) // args.batch_size
    start = teacher_net(spec, args, train, hold)
    r = max(spec.resolutions)
    results = {"train_images": len(train), "holdout_images": len(hold), "batch_size": args.batch_size,
               "teacher_holdout_acc": evaluate_subnet(start, spec.max_config(r), train, hold, args.bn_images),
               "steps": {}, "passes": {}, "acc": {}, "wall_s": {}}
    for name, phases in schedules(spec, args.scale, args.lr, steps_per_epoch).items():
        t = time.time()
        net = build_supernet(spec, seed=args.seed)
        net.load_state_dict(start.state_dict())
        cfg = TrainConfig(phases=phases, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                          eval_images=args.eval_images, bn_images=args.bn_images)
        tr = ProgressiveShrinkingTrainer(spec, cfg, train, hold, os.path.join(args.out, name), supernet=net,
                                         progress=not args.no_progress)
        tr.run(resume=True)
        results["wall_s"][name] = round(time.time() - t, 1)
        results["steps"][name] = sum(p.steps(steps_per_epoch) for p in phases)
        results["passes"][name] = passes(phases, steps_per_epoch)
        results["acc"][name] = {key: evaluate_subnet(tr.net, c, train, hold, args.bn_images)
                                for key, c in probe_configs(spec, r)}
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--from", dest="start", default=None, help="checkpoint with the full phase done (the teacher)")
    p.add_argument("--train-images", type=int, default=0, help="0: the whole training split")
    p.add_argument("--holdout", type=int, default=10000)
    p.add_argument("--scale", type=float, default=0.25, help="multiplies the shrinking phases' epochs")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bn-images", type=int, default=2000)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    res = run(a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ablation.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    print(f"train images {res['train_images']}, held-out {res['holdout_images']}, teacher held-out "
          f"{res['teacher_holdout_acc']:.2%}, steps {res['steps']}, sub-network passes {res['passes']}, "
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
