"""Training throughput of one progressive-shrinking step on the default supernet's geometry: today's loop
(NCHW, plain convs) against the optimized one, side by side in one run, and each lever on its own.

A step is the teacher's forward (where the phase distils) + each sampled sub-network's forward/backward + the
optimizer step (`ofa_core.training.train_step`, the function the trainer runs). Variants are timed in
interleaved rounds, so a slow spell of the host is spread over all of them; the figure is images per second of
the median round (and of the best round). Then BN recalibration + evaluation of one sub-network, and a short
training run of today's loop and the optimized one from the same seed (same losses, same held-out accuracy).

    python bench/bench_training.py                       # 2 threads, batch 128, 5 rounds
    python bench/bench_training.py --threads 1 --rounds 3 --curve-steps 0
    python bench/bench_training.py --geometries 0.5:2,1.0:2,0.5:1 --rounds 3   # the trade of a larger geometry

With --geometries (width multiplier:stem stride, ...), only the optimized loop is timed, once per geometry (same
elastic space and strides otherwise), beside the largest and smallest sub-networks' MACs and parameters: the
cost side of choosing a larger CIFAR geometry.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ofa_core.bn import preserved_bn_stats, recalibrate_bn  # noqa: E402
from ofa_core.cpu import native_bf16  # noqa: E402
from ofa_core.checkpoint import load_supernet_weights  # noqa: E402
from ofa_core.data import ImageArray, holdout_split, iterate_batches, load_dataset, resize  # noqa: E402
from ofa_core.mbv3 import build_supernet, plain_kernels  # noqa: E402
from ofa_core.spec import get_spec  # noqa: E402
from ofa_core.training import (TrainConfig, Phase, ProgressiveShrinkingTrainer, _param_groups,  # noqa: E402
                               _sample_config, bn_batches, cifar_phases, evaluate, evaluate_subnet,
                               frozen_subnet, like_net, train_step)

CIFAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar10",
                     "cifar10-jpeg.tar.gz")


@dataclass(frozen=True)
class Variant:
    threads: int
    channels_last: bool = False
    fast_kernels: bool = False
    frozen_teacher: bool = False
    teacher_bf16: bool = False
    bf16: bool = False
    batch_mult: int = 1        # batch size x this (the learning rate scales with it: see the loss-curve section)


TODAY = "today (1 thread, NCHW, plain convs)"
OPTIMIZED = "optimized"


# Levers added one at a time; the last three are measured on top of the optimized loop and are not kept: a bf16
# teacher (only where the CPU has native bf16; it changes the soft targets: see print_teacher_precision), a larger
# batch (images/s of a batch twice as large, the learning rate scaled with it) and bf16 autocast. Today's loop is
# what `python -m ofa_core.recipe` ran before: one thread (its --threads default), NCHW, plain convs, the supernet
# itself as the teacher.
def variants(threads: int) -> dict[str, Variant]:
    v = {
        TODAY: Variant(1),
        f"+ {threads} threads": Variant(threads),
        "+ channels_last": Variant(threads, True),
        "+ fast kernels": Variant(threads, True, True),
        "+ frozen teacher": Variant(threads, True, True, True),
    }
    best = v[OPTIMIZED] = v["+ frozen teacher"]
    if native_bf16():
        v["optimized + bf16 teacher"] = dataclasses.replace(best, teacher_bf16=True)
    v["optimized + batch x2"] = dataclasses.replace(best, batch_mult=2)
    if native_bf16():
        v["optimized + bf16 autocast"] = dataclasses.replace(best, bf16=True)
    return v


def last_lever(threads: int) -> str:
    """The column the optimized loop repeats (the last lever kept)."""
    names = list(variants(threads))
    return names[names.index(OPTIMIZED) - 1]


class StepRunner:
    """One variant's supernet, teacher and optimizer, stepping on fixed batches."""

    def __init__(self, spec, phase: Phase, variant: Variant, batch: int, seed: int = 0):
        self.v = variant
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        self.spec, self.phase = spec, phase
        self.net = build_supernet(spec, seed=seed).to(memory_format=fmt).train()
        self.teacher = None
        if phase.distill:
            teacher = copy.deepcopy(self.net).eval()
            teacher.set_max()
            dtype = torch.bfloat16 if variant.teacher_bf16 else torch.float32
            self.teacher = frozen_subnet(teacher, spec.max_config(), dtype) if variant.frozen_teacher else teacher
        self.opt = torch.optim.SGD(_param_groups(self.net, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
        g = torch.Generator().manual_seed(seed)
        self.batch = batch * variant.batch_mult
        self.x = torch.randn(self.batch, 3, 32, 32, generator=g).contiguous(memory_format=fmt)
        self.y = torch.randint(0, spec.n_classes, (self.batch,), generator=g)
        self.rng = np.random.default_rng(seed)

    def step(self) -> None:
        torch.set_num_threads(self.v.threads)
        configs = [_sample_config(self.spec, self.phase, self.rng, 32) for _ in range(self.phase.n_subnets)]
        kernels = contextlib.nullcontext() if self.v.fast_kernels else plain_kernels()
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.v.bf16)
        with kernels, amp:
            train_step(self.net, self.teacher, self.x, self.y, configs, self.opt)


def time_variants(spec, phase: Phase, variants: dict, batch: int, rounds: int, steps: int) -> dict:
    runners = {k: StepRunner(spec, phase, v, batch) for k, v in variants.items()}
    for r in runners.values():
        r.step()                                  # warm-up: allocator, oneDNN primitives
    per_round = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            t = time.perf_counter()
            for _ in range(steps):
                r.step()
            per_round[k].append(r.batch * steps / (time.perf_counter() - t))
    return {k: (statistics.median(v), max(v)) for k, v in per_round.items()}


def print_throughput(spec, a) -> None:
    variants_ = variants(a.threads)
    variants_.pop(OPTIMIZED)                      # the same loop as its last lever: timed once
    if not native_bf16():
        print("bf16: this CPU has no native bf16 (AVX512-BF16/AMX): the bf16 teacher and autocast are skipped")
    phases = {p.name: p for p in cifar_phases(spec)}
    cases = [("full (1 sub-network, no teacher)", phases["full"]),
             ("kernel (1 sub-network + teacher)", phases["kernel"]),
             ("depth/expand (2 sub-networks + teacher)", phases["expand2"])]
    print(f"\n## Throughput of one step, images/s (batch {a.batch}, median of {a.rounds} interleaved rounds of "
          f"{a.steps} steps; best round in brackets; each column adds one lever)\n")
    names = list(variants_)
    best = last_lever(a.threads)
    print(f"optimized: everything up to and including '{best}'")
    print("| phase | " + " | ".join(names) + " | optimized / today |")
    print("|---" * (len(names) + 2) + "|")
    for label, phase in cases:
        res = time_variants(spec, phase, variants_, a.batch, a.rounds, a.steps)
        cells = [f"{res[n][0]:.0f} ({res[n][1]:.0f})" for n in names]
        ratio = res[best][0] / res[TODAY][0]
        print(f"| {label} | " + " | ".join(cells) + f" | **{ratio:.2f}x** |", flush=True)


def geometry(spec, width: float, stem_stride: int):
    """The spec with another width multiplier / stem stride (registered under a derived name)."""
    from ofa_core.spec import register
    if width == spec.width_mult and stem_stride == spec.stem_stride:
        return spec
    return register(dataclasses.replace(spec, name=f"{spec.name}-w{width:g}-s{stem_stride}", width_mult=width,
                                        stem_stride=stem_stride, weights_path=None, predictor_path=None))


def print_geometries(spec, a) -> None:
    from ofa_core.costs import config_costs
    r = max(spec.resolutions)
    phases = {p.name: p for p in cifar_phases(spec)}
    opt = {OPTIMIZED: variants(a.threads)[OPTIMIZED]}
    print(f"\n## Geometries: the optimized loop, images/s (batch {a.batch}, median of {a.rounds} rounds of "
          f"{a.steps} steps), and the cost of the largest / smallest sub-network at r {r}\n")
    print("| width | stem stride | MACs largest | MACs smallest | params largest | full (1 sub-network) | "
          "depth/expand (2 + teacher) | full, relative to the first |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for item in a.geometries.split(","):
        w, st = item.split(":")
        g = geometry(spec, float(w), int(st))
        big, small = config_costs(g, g.max_config(r)), config_costs(g, g.min_config(r))
        full = time_variants(g, phases["full"], opt, a.batch, a.rounds, a.steps)[OPTIMIZED][0]
        shrink = time_variants(g, phases["expand2"], opt, a.batch, a.rounds, a.steps)[OPTIMIZED][0]
        base = base or full
        print(f"| {float(w):g} | {st} | {big['macs'] / 1e6:.1f} M | {small['macs'] / 1e6:.1f} M | "
              f"{big['params'] / 1e6:.2f} M | {full:.0f} | {shrink:.0f} | {full / base:.2f}x |", flush=True)


def real_data(a) -> tuple[ImageArray, ImageArray] | None:
    if not os.path.exists(a.data):
        print(f"\n(no CIFAR-10 archive at {a.data}: skipping the sections on real images)")
        return None
    splits = load_dataset(a.data, cache_dir=a.cache_dir, progress=False)
    train, hold = holdout_split(splits["train"], 10000, seed=0)
    return train, hold


def print_eval_cost(spec, train: ImageArray, hold: ImageArray, a) -> None:
    print(f"\n## BN recalibration ({a.bn_images} images) + evaluation ({a.eval_images} images) of one "
          "sub-network, seconds (median of 3)\n")
    held = hold.sample(a.eval_images, seed=0)
    cfg = spec.sample(np.random.default_rng(1), resolutions=[32])
    out = {}
    for name in ("today", "optimized"):
        torch.set_num_threads(1 if name == "today" else a.threads)
        net = build_supernet(spec, seed=0)
        times, acc = [], None
        for _ in range(3):
            t = time.perf_counter()
            if name == "today":      # the supernet recalibrated and evaluated in place, NCHW, plain convs
                with plain_kernels(), preserved_bn_stats(net):
                    net.set_active(cfg)
                    recalibrate_bn(net, bn_batches(train, cfg.r, a.bn_images))
                    acc = evaluate(net, held, cfg.r, batch_size=500)   # today's batch
            else:                    # channels-last recalibration, then the frozen cut-out sub-network
                net = net.to(memory_format=torch.channels_last)
                acc = evaluate_subnet(net, cfg, train, held, a.bn_images)
            times.append(time.perf_counter() - t)
        out[name] = (statistics.median(times), acc)
    print("| loop | seconds | accuracy (random weights: checks both agree) |\n|---|---|---|")
    for k, (t, acc) in out.items():
        print(f"| {k} | {t:.2f} | {acc:.4f} |")
    print(f"\nspeed-up: **{out['today'][0] / out['optimized'][0]:.2f}x**")


@torch.no_grad()
def print_teacher_precision(spec, hold: ImageArray, a) -> None:
    """How far the bf16 teacher's soft targets are from the float32 teacher's, on held-out images, with the
    supernet's trained weights where they are on disk."""
    net = build_supernet(spec, seed=0)
    source = "random weights"
    if spec.weights_path and os.path.exists(spec.weights_path):
        load_supernet_weights(net, spec.weights_path)
        source = os.path.basename(spec.weights_path)
    net = net.to(memory_format=torch.channels_last).eval()
    cfg = spec.max_config(32)
    held = hold.sample(a.eval_images, seed=0)
    teachers = {d: frozen_subnet(net, cfg, d) for d in (torch.float32, torch.bfloat16)}
    p = {d: torch.cat([F.softmax(t(like_net(resize(x, cfg.r), net)), 1)
                       for x, _ in iterate_batches(held, 500, train=False)]) for d, t in teachers.items()}
    p32, p16 = p[torch.float32], p[torch.bfloat16]
    kl = (p32 * (p32.clamp_min(1e-12).log() - p16.clamp_min(1e-12).log())).sum(1)
    print(f"\n## The teacher's soft targets in bf16 vs float32 ({len(held)} held-out images, r {cfg.r}, {source})\n")
    print("| top-1 agreement | mean abs difference of a probability | largest | mean KL(float32 || bf16) |\n"
          "|---|---|---|---|")
    print(f"| {(p32.argmax(1) == p16.argmax(1)).float().mean().item():.4f} | {(p32 - p16).abs().mean().item():.2e} | "
          f"{(p32 - p16).abs().max().item():.3f} | {kl.mean().item():.2e} |")


def print_curves(spec, train: ImageArray, hold: ImageArray, a) -> None:
    """Today's loop and the optimized one trained from the same seed on the same images (the optimized one at
    its variant's batch, the learning rate scaled linearly with it, so fewer steps over the same epoch)."""
    sub = train.sample(a.curve_steps * a.batch, seed=3)
    held = hold.sample(a.eval_images, seed=0)
    m = variants(a.threads)[OPTIMIZED].batch_mult
    print(f"\n## Same loss curve: one epoch of {len(sub)} training images in the full phase (today: batch "
          f"{a.batch}, lr 0.05, {a.curve_steps} steps; optimized: batch {m * a.batch}, lr {0.05 * m:g}, "
          f"{a.curve_steps // m} steps), held-out accuracy on {len(held)} images\n")
    rows = {}
    for name, (cl, fast, mult) in {"today": (False, False, 1), "optimized": (True, True, m)}.items():
        torch.set_num_threads(1 if name == "today" else a.threads)
        phases = [Phase("full", 1.0, 0.05 * mult, 1, (7,), (6,), (4,), distill=False, warmup_epochs=0.1)]
        cfg = TrainConfig(phases=phases, batch_size=a.batch * mult, seed=0, channels_last=cl,
                          eval_images=len(held), bn_images=min(2000, len(sub)), checkpoint_every_s=1e9)
        losses = []
        out_dir = os.path.join(a.tmp, f"curve-{name}")
        trainer = ProgressiveShrinkingTrainer(spec, cfg, sub, held, out_dir, progress=False)
        kernels = contextlib.nullcontext() if fast else plain_kernels()
        x, y = next(iterate_batches(sub, a.batch, train=False))
        t = time.perf_counter()
        with kernels:
            for _ in range(a.curve_steps // 10):            # a loss every 10 x 128 images seen
                trainer.run(resume=True, max_steps=10 // mult)
                with torch.no_grad():
                    trainer.net.eval()
                    losses.append(torch.nn.functional.cross_entropy(trainer.net(x), y).item())
                    trainer.net.train()
            acc = trainer.phase_eval()["acc_largest"]
        rows[name] = (losses, acc, time.perf_counter() - t)
    print(f"| loop | loss every {10 * a.batch} images (first batch, eval mode) | held-out acc | seconds |\n"
          "|---|---|---|---|")
    for k, (losses, acc, t) in rows.items():
        print(f"| {k} | {' '.join(f'{v:.3f}' for v in losses)} | {acc:.4f} | {t:.0f} |")
    diff = max(abs(p - q) for p, q in zip(rows["today"][0], rows["optimized"][0]))
    print(f"\nlargest loss difference: {diff:.4f}; accuracy difference: "
          f"{100 * (rows['optimized'][1] - rows['today'][1]):+.2f} pp")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--curve-steps", type=int, default=100, help="0: skip the loss-curve comparison")
    p.add_argument("--bn-images", type=int, default=2000)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--data", default=CIFAR)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--tmp", default="/tmp/bench_training")
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--geometries", default=None, metavar="W:S,...",
                   help="time only the optimized loop for each width multiplier W and stem stride S")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = get_spec(a.supernet)
    print(f"# bench_training: {spec.name}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, mkldnn {torch.backends.mkldnn.is_available()}")
    if a.geometries:
        print_geometries(spec, a)
        return
    print_throughput(spec, a)
    data = real_data(a)
    if data is not None:
        print_eval_cost(spec, *data, a)
        print_teacher_precision(spec, data[1], a)
        if a.curve_steps:
            import shutil
            shutil.rmtree(a.tmp, ignore_errors=True)
            print_curves(spec, *data, a)


if __name__ == "__main__":
    main()
