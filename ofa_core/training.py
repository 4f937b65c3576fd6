"""Progressive shrinking (reference §2): train the full network, then make kernel, depth and expand ratio
elastic in that order (channels sorted before the expand phases), elastic resolution throughout, several
sub-networks per step with accumulated gradients, knowledge distillation from the full network.

Everything is configuration (`TrainConfig`, `Phase`); defaults are scaled for small data sets on a CPU.
A run is resumable: the last checkpoint (our own format: tensors and plain values only, loaded with
``weights_only=True``) holds weights, optimizer, phase and step.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .bn import preserved_bn_stats, recalibrate_bn
from .cpu import native_bf16
from .data import ImageArray, iterate_batches, resize
from .extract import extract
from .jitscope import fresh_compilation_unit
from .mbv3 import OFAMobileNetV3, build_supernet, crop_depthwise_convs
from .spec import SubnetConfig, SupernetSpec
from .fileio import replacing


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: float
    lr: float
    n_subnets: int
    ks: tuple[int, ...] | None = None       # None: the supernet's full list
    e: tuple[int, ...] | None = None
    d: tuple[int, ...] | None = None
    sort_channels: bool = False
    sort_stage: int = 0                     # published expand_ratio_stage: how many expand slices stay fixed
    distill: bool = True
    warmup_epochs: float = 0.0

    def steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of this phase (at least one)."""
        return max(1, int(round(self.epochs * steps_per_epoch)))


def progressive_shrinking_phases(spec: SupernetSpec, scale: float = 1.0, base_lr: float = 0.1) -> list[Phase]:
    """The published schedule's phases, with epochs scaled for small data sets (`scale` multiplies them)."""
    K, E, D = spec.ks_list, spec.expand_list, spec.depth_list
    kmax, emax, dmax = max(K), max(E), max(D)
    return [
        Phase("full", 4 * scale, base_lr, 1, (kmax,), (emax,), (dmax,), distill=False, warmup_epochs=0.2 * scale),
        Phase("kernel", 1.5 * scale, base_lr * 0.3, 1, K, (emax,), (dmax,)),
        Phase("depth1", 0.5 * scale, base_lr * 0.1, 2, K, (emax,), tuple(D[-2:])),
        Phase("depth2", 1.5 * scale, base_lr * 0.2, 2, K, (emax,), D),
        Phase("expand1", 0.5 * scale, base_lr * 0.1, 2, K, tuple(E[-2:]), D, sort_channels=True),
        Phase("expand2", 1.5 * scale, base_lr * 0.2, 2, K, E, D, sort_channels=True, sort_stage=1),
    ]


def cifar_phases(spec: SupernetSpec, scale: float = 1.0, base_lr: float = 0.1) -> list[Phase]:
    """The default supernet's schedule for CIFAR-sized data: a long full-network phase (a strong teacher),
    then the shrinking phases with distillation; epochs at scale 1: 40 + 6 + 2 + 6 + 2 + 10."""
    K, E, D = spec.ks_list, spec.expand_list, spec.depth_list
    kmax, emax, dmax = max(K), max(E), max(D)
    return [
        Phase("full", 40 * scale, base_lr, 1, (kmax,), (emax,), (dmax,), distill=False, warmup_epochs=1 * scale),
        Phase("kernel", 6 * scale, base_lr * 0.3, 1, K, (emax,), (dmax,)),
        Phase("depth1", 2 * scale, base_lr * 0.1, 2, K, (emax,), tuple(D[-2:])),
        Phase("depth2", 6 * scale, base_lr * 0.3, 2, K, (emax,), D),
        Phase("expand1", 2 * scale, base_lr * 0.1, 2, K, tuple(E[-2:]), D, sort_channels=True),
        Phase("expand2", 10 * scale, base_lr * 0.3, 2, K, E, D, sort_channels=True, sort_stage=1),
    ]


def one_shot_phases(spec: SupernetSpec, total_epochs: float, base_lr: float = 0.1, n_subnets: int = 2) -> list[Phase]:
    """The baseline without shrinking: every dimension elastic from the start, same number of steps."""
    return [Phase("all-elastic", total_epochs, base_lr, n_subnets, distill=False, warmup_epochs=0.0)]


TEACHER_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    phases: list[Phase]
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    resolutions: tuple[int, ...] | None = None   # None: the supernet's list
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    checkpoint_every_s: float = 300.0
    eval_images: int = 2000                       # held-out images for the per-phase accuracy log
    bn_images: int = 2000                         # BN recalibration images
    channels_last: bool = True                    # NHWC activations: oneDNN's fast layouts, 1x1 convs as GEMMs
    teacher_precision: str = "float32"            # the frozen teacher's: "float32", "bfloat16" or "auto" (bf16
                                                  # where the CPU has it natively): see `teacher_dtype`

    def __post_init__(self):
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher_precision {self.teacher_precision!r}: expected one of {TEACHER_PRECISIONS}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
FREEZE_FROM = 1000      # evaluations on at least this many images run the frozen cut-out sub-network
EVAL_BATCH = 128        # a batch's activations stay in the CPU's caches: 1.3x the images/s of batch 500 on 2 cores


class _InPrecision(nn.Module):
    """Runs `net` in another float precision: float32 in, float32 out."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net.to(dtype), dtype

    def forward(self, x):
        return self.net(x.to(self.dtype)).float()


@torch.no_grad()
def frozen_subnet(supernet: OFAMobileNetV3, cfg: SubnetConfig,
                  dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    """The sub-network cut out (its current BN statistics), traced and frozen for inference: BN folded into
    the convs, constants inlined, depthwise kernels cropped to the taps that reach a pixel at resolution
    cfg.r; about twice as fast as the supernet's eval forward on a CPU. Exact at input resolutions up to
    cfg.r (not above). Used for the teacher's soft targets and for accuracy evaluation. With `dtype`
    bfloat16 it computes in bf16 (float32 in and out): for soft targets, never for measured accuracy."""
    with torch.random.fork_rng(devices=[]):      # building the static net draws init weights: keep the
        net = extract(supernet, cfg).eval()      # training's random stream (dropout) as it was
    example = torch.zeros(2, 3, cfg.r, cfg.r)
    crop_depthwise_convs(net, example)
    if dtype != torch.float32:
        net = _InPrecision(net, dtype).eval()
    with fresh_compilation_unit():               # else every call leaves ~24 MB in the global unit for good
        return torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))


def like_net(x: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """`x` in the memory format of the net's weights (NHWC for a channels-last net)."""
    w = next(net.parameters(), None)
    if w is not None and w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(net: nn.Module, data: ImageArray, r: int, batch_size: int = EVAL_BATCH, device: str = "cpu") -> float:
    """Top-1 accuracy of `net` (a module or a frozen sub-network) on `data` at resolution r (the batch size does
    not change it: each image is scored on its own)."""
    net.eval()
    correct = 0
    for x, y in iterate_batches(data, batch_size, train=False):
        correct += (net(like_net(resize(x, r).to(device), net)).argmax(1).cpu() == y).sum().item()
    return correct / len(data)


def bn_batches(train: ImageArray, r: int, n_images: int, batch_size: int = 200, seed: int = 0, device="cpu"):
    """Training-transform batches for BN recalibration (fixed seed)."""
    idx = np.random.default_rng(seed).permutation(len(train))[:n_images]
    for x, _ in iterate_batches(train.subset(np.sort(idx)), batch_size, train=True, seed=seed, drop_last=False):
        yield resize(x, r).to(device)


def evaluate_subnet(supernet: OFAMobileNetV3, cfg: SubnetConfig, train: ImageArray, holdout: ImageArray,
                    bn_images: int = 2000, device: str = "cpu") -> float:
    """Accuracy of one sub-network on `holdout` after BN recalibration on `train`; the supernet's own BN
    statistics are left untouched."""
    return evaluate_subnet_on(supernet, cfg, train, [holdout], bn_images, device=device)[0]


def evaluate_subnet_on(supernet: OFAMobileNetV3, cfg: SubnetConfig, train: ImageArray, evals: Sequence[ImageArray],
                       bn_images: int = 2000, bn_seed: int = 0, device: str = "cpu") -> list[float]:
    """`evaluate_subnet` on each of `evals` after one BN recalibration (the images drawn by `bn_seed`)."""
    supernet.set_active(cfg)
    with preserved_bn_stats(supernet):
        batches = bn_batches(train, cfg.r, bn_images, seed=bn_seed, device=device)
        recalibrate_bn(supernet, (like_net(x, supernet) for x in batches))
        # freezing costs about a second; it pays from about a thousand images on
        freeze = device == "cpu" and sum(len(h) for h in evals) >= FREEZE_FROM
        net = frozen_subnet(supernet, cfg) if freeze else supernet
        return [evaluate(net, h, cfg.r, device=device) for h in evals]


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
def _param_groups(net: nn.Module, wd: float):
    decay, no_decay = [], []
    for n, p in net.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and conv/linear biases
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _sample_config(spec: SupernetSpec, phase: Phase, rng: np.random.Generator, r: int) -> SubnetConfig:
    K = phase.ks or spec.ks_list
    E = phase.e or spec.expand_list
    D = phase.d or spec.depth_list
    return SubnetConfig.create(spec, rng.choice(K, spec.n_blocks).tolist(), rng.choice(E, spec.n_blocks).tolist(),
                               rng.choice(D, spec.n_stages).tolist(), r)


def train_step(net: OFAMobileNetV3, teacher: OFAMobileNetV3 | None, x: torch.Tensor, y: torch.Tensor,
               configs: list[SubnetConfig], opt: torch.optim.Optimizer, label_smoothing: float = 0.1,
               kd_ratio: float = 1.0) -> float:
    """One progressive-shrinking step: the teacher's soft targets (if any), then each sub-network's forward and
    backward with gradients accumulated, then one optimizer step. Returns the mean loss over the sub-networks."""
    soft = None
    if teacher is not None:
        with torch.no_grad():
            soft = F.softmax(teacher(x), dim=1)                          # (N, classes)
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for c in configs:
        net.set_active(c)
        out = net(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
        if soft is not None:
            loss = loss + kd_ratio * torch.sum(-soft * F.log_softmax(out, dim=1), dim=1).mean()
        loss.backward()
        loss_sum += loss.item()
    opt.step()
    return loss_sum / len(configs)


def teacher_dtype(precision: str) -> torch.dtype:
    """The frozen teacher's dtype for a `TrainConfig.teacher_precision`. A bf16 teacher costs half as much where
    the CPU computes bf16 natively, but it is another teacher: on the default supernet its top-1 agrees with the
    float32 one on 96.75% of held-out images (`bench/bench_training.py` measures it), so it is not the default."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ActiveClock:
    """Training time of a run: wall time less its pauses. An interval between two ticks longer than `pause_s`
    (a process stopped with SIGSTOP while other work used the cores, a suspended machine) is added to `paused`
    instead of `elapsed`; a step, a checkpoint save or a phase-end evaluation takes far less."""

    def __init__(self, elapsed: float = 0.0, paused: float = 0.0, pause_s: float = 120.0,
                 now: Callable[[], float] = time.monotonic):
        self.elapsed, self.paused, self.pause_s, self._now = elapsed, paused, pause_s, now
        self._last = now()

    def tick(self) -> float:
        """Count the time since the last tick; returns the training time so far."""
        t = self._now()
        dt, self._last = t - self._last, t
        if dt > self.pause_s:
            self.paused += dt
        else:
            self.elapsed += dt
        return self.elapsed


class ProgressiveShrinkingTrainer:
    """Runs the phases of a `TrainConfig` on one supernet, writing `out_dir/{last.pt,log.jsonl}`."""

    def __init__(self, spec: SupernetSpec, cfg: TrainConfig, train: ImageArray, holdout: ImageArray, out_dir: str,
                 supernet: OFAMobileNetV3 | None = None, progress: bool = True,
                 log_fn: Callable[[dict], None] | None = None):
        self.spec, self.cfg, self.train_data, self.holdout = spec, cfg, train, holdout
        self.out_dir = out_dir
        self.device = _resolve_device(cfg.device)
        self.progress = progress
        self.log_fn = log_fn
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.net = (supernet or build_supernet(spec, seed=cfg.seed)).to(self.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.resolutions = tuple(cfg.resolutions or spec.resolutions)
        self.steps_per_epoch = len(train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"training set has {len(train)} images, fewer than one batch of {cfg.batch_size}")
        self.state = {"phase": 0, "step": 0, "done": False, "elapsed_s": 0.0, "paused_s": 0.0}
        self.pause_s = 120.0         # see ActiveClock
        self.teacher: OFAMobileNetV3 | None = None
        os.makedirs(out_dir, exist_ok=True)

    def _teacher_fn(self):
        """The teacher as a frozen inference module (built once per process; the teacher never changes)."""
        if self.teacher is None:
            return None
        if getattr(self, "_frozen_teacher", None) is None:
            if self.device == "cpu":
                dtype = teacher_dtype(self.cfg.teacher_precision)
                # traced at the largest resolution trained on: the cropped kernels are exact up to it
                self._frozen_teacher = frozen_subnet(self.teacher, self.spec.max_config(max(self.resolutions)), dtype)
            else:
                dtype, self._frozen_teacher = torch.float32, self.teacher
            self.log({"event": "teacher", "phase": self.cfg.phases[self.state["phase"]].name,
                      "precision": str(dtype).removeprefix("torch.")})
        return self._frozen_teacher

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.out_dir, "last.pt")

    def save(self, optimizer: torch.optim.Optimizer | None) -> None:
        payload = {"state_dict": self.net.state_dict(), "state": dict(self.state),
                   "optimizer": optimizer.state_dict() if optimizer is not None else {},
                   "teacher": self.teacher.state_dict() if self.teacher is not None else {},
                   "config": json.dumps(self.cfg.to_json()), "spec": self.spec.name,
                   "torch_rng": torch.get_rng_state()}
        with replacing(self.ckpt_path) as tmp:
            torch.save(payload, tmp)

    def try_resume(self) -> dict | None:
        if not os.path.exists(self.ckpt_path):
            return None
        payload = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        if payload.get("spec") != self.spec.name:
            raise ValueError(f"{self.ckpt_path} is for supernet {payload.get('spec')}, not {self.spec.name}")
        self.net.load_state_dict(payload["state_dict"])
        self.state = dict(payload["state"])
        if "torch_rng" in payload:
            torch.set_rng_state(payload["torch_rng"].cpu())
        if payload["teacher"]:
            self.teacher = copy.deepcopy(self.net)
            self.teacher.load_state_dict(payload["teacher"])
            self.teacher.eval()
        return payload

    def log(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        with open(os.path.join(self.out_dir, "log.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.log_fn:
            self.log_fn(record)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, resume: bool = True, max_steps: int | None = None) -> dict:
        """Train to the end (or stop after `max_steps` optimizer steps in this call, checkpointed, so that a
        later `run()` resumes exactly where this one stopped)."""
        payload = self.try_resume() if resume else None
        if payload is None:
            torch.manual_seed(self.cfg.seed)          # dropout draws; restored from the checkpoint on resume
        self._budget = max_steps
        cfg = self.cfg
        clock = ActiveClock(self.state["elapsed_s"], self.state.get("paused_s", 0.0), self.pause_s)
        while self.state["phase"] < len(cfg.phases):
            pi = self.state["phase"]
            phase = cfg.phases[pi]
            total = phase.steps(self.steps_per_epoch)
            if self.state.get("initialised_phase", -1) < pi:
                self.state["initialised_phase"] = pi
                if phase.sort_channels:
                    self.net.sort_channels(phase.sort_stage)
                if phase.distill and self.teacher is None and cfg.kd_ratio > 0:
                    self.teacher = copy.deepcopy(self.net).eval()
                    self.teacher.set_max()
            opt = torch.optim.SGD(_param_groups(self.net, cfg.weight_decay), lr=phase.lr, momentum=cfg.momentum,
                                  nesterov=True)
            if payload is not None and payload.get("optimizer"):
                opt.load_state_dict(payload["optimizer"])
            payload = None
            self._run_phase(pi, phase, total, opt, clock)
            self._tick(clock)
            if self.state["step"] < total:          # stopped by max_steps
                self.save(opt)
                return dict(self.state)
            acc = self.phase_eval()
            self._tick(clock)
            self.log({"event": "phase_end", "phase": phase.name, "elapsed_s": round(self.state["elapsed_s"], 1),
                      **acc})
            self.state.update(phase=pi + 1, step=0)
            self.save(None)
            shutil.copyfile(self.ckpt_path, os.path.join(self.out_dir, f"after_{phase.name}.pt"))  # e.g. ablation start
        self.state["done"] = True
        self.save(None)
        return dict(self.state)

    def _lr(self, phase: Phase, step: int, total: int) -> float:
        warm = int(phase.warmup_epochs * self.steps_per_epoch)
        if step < warm:
            return phase.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * phase.lr * (1 + math.cos(math.pi * t))

    def _tick(self, clock: ActiveClock) -> None:
        self.state["elapsed_s"] = clock.tick()
        self.state["paused_s"] = clock.paused

    def _run_phase(self, pi: int, phase: Phase, total: int, opt, clock: ActiveClock) -> None:
        cfg, net = self.cfg, self.net
        rng = np.random.default_rng([cfg.seed, pi])
        step = self.state["step"]
        rng_state_steps = step  # advance the sampler deterministically to the resume point
        for _ in range(rng_state_steps):
            rng.integers(0, 2**31, size=1)
        last_ckpt = time.time()
        bar = tqdm(total=total, initial=step, desc=f"[{pi + 1}/{len(cfg.phases)}] {phase.name}",
                   disable=not self.progress, unit="step", dynamic_ncols=True)
        epoch = step // self.steps_per_epoch
        batches = iterate_batches(self.train_data, cfg.batch_size, train=True, seed=cfg.seed * 31 + pi, epoch=epoch)
        for _ in range(step % self.steps_per_epoch):
            next(batches)
        t_last, imgs = time.time(), 0
        net.train()
        while step < total:
            if self._budget is not None and self._budget <= 0:
                break
            try:
                x, y = next(batches)
            except StopIteration:
                epoch += 1
                batches = iterate_batches(self.train_data, cfg.batch_size, train=True, seed=cfg.seed * 31 + pi,
                                          epoch=epoch)
                continue
            step_rng = np.random.default_rng(int(rng.integers(0, 2**31)))
            r = int(step_rng.choice(self.resolutions))
            x, y = like_net(resize(x, r).to(self.device), self.net), y.to(self.device)
            lr = self._lr(phase, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            teacher = self._teacher_fn() if phase.distill and cfg.kd_ratio > 0 else None
            configs = [_sample_config(self.spec, phase, step_rng, r) for _ in range(phase.n_subnets)]
            loss_sum = train_step(net, teacher, x, y, configs, opt, cfg.label_smoothing, cfg.kd_ratio)
            if self._budget is not None:
                self._budget -= 1
            step += 1
            self.state["step"] = step
            imgs += x.shape[0]
            if step % 10 == 0 or step == total:
                now = time.time()
                bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.4f}",
                                img_s=f"{imgs / max(1e-9, now - t_last):.0f}")
                t_last, imgs = now, 0
            bar.update(1)
            self._tick(clock)
            if time.time() - last_ckpt > cfg.checkpoint_every_s:
                self.save(opt)
                last_ckpt = time.time()
        bar.close()

    def phase_eval(self) -> dict:
        """Held-out accuracy of the largest and smallest sub-networks (BN recalibrated) at the largest res."""
        r = max(self.resolutions)
        hold = self.holdout.sample(self.cfg.eval_images, seed=self.cfg.seed)
        out = {}
        for name, c in (("largest", self.spec.max_config(r)), ("smallest", self.spec.min_config(r))):
            out[f"acc_{name}"] = round(evaluate_subnet(self.net, c, self.train_data, hold, self.cfg.bn_images,
                                                       self.device), 4)
        self.net.set_max()
        self.net.train()
        return out
