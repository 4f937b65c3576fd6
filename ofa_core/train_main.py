"""Command line: train an OFA supernet by progressive shrinking on an ImageFolder tree or archive.

    python -m ofa_core.train_main --data path/to/cifar10-jpeg.tar.gz --supernet ofa_mbv3_cifar10 --out runs/c10
"""
from __future__ import annotations

import argparse
import json
import os
import sys


from .data import holdout_split, load_dataset
from .spec import get_spec
from .training import TEACHER_PRECISIONS, ProgressiveShrinkingTrainer, TrainConfig, one_shot_phases, \
    progressive_shrinking_phases


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ofa_core.train_main", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ImageFolder directory (train/, test/ splits) or .tar(.gz)")
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--out", required=True, help="output directory (checkpoint, log.jsonl)")
    p.add_argument("--schedule", choices=["progressive", "one-shot"], default="progressive")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every phase's epochs")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--holdout", type=int, default=5000, help="training images held out (BN recal., predictor)")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images (0: all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--teacher-precision", choices=TEACHER_PRECISIONS, default="float32",
                   help="the frozen teacher's precision (auto: bfloat16 where the CPU has native bf16; a bf16 "
                        "teacher is faster there but gives slightly different soft targets)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    spec = get_spec(a.supernet)
    splits = load_dataset(a.data, cache_dir=a.cache_dir, progress=not a.no_progress)
    train, holdout = holdout_split(splits["train"], a.holdout, seed=a.seed)
    if a.limit_train:
        train = train.sample(a.limit_train, seed=a.seed)
    if a.schedule == "progressive":
        phases = progressive_shrinking_phases(spec, a.scale, a.lr)
    else:
        total = sum(p.epochs for p in progressive_shrinking_phases(spec, a.scale, a.lr))
        phases = one_shot_phases(spec, total, a.lr)
    cfg = TrainConfig(phases=phases, batch_size=a.batch_size, seed=a.seed, threads=a.threads or None,
                      device=a.device, teacher_precision=a.teacher_precision)
    trainer = ProgressiveShrinkingTrainer(spec, cfg, train, holdout, a.out, progress=not a.no_progress,
                                          log_fn=lambda r: print(json.dumps(r), file=sys.stderr, flush=True))
    state = trainer.run(resume=not a.no_resume)
    print(json.dumps({"out": os.path.abspath(a.out), **state}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
