"""Measure a sub-network as it is served: cut it out, recalibrate its BN statistics on calibration images, score
its top-1 on evaluation images.

The recalibration runs on the extracted static network (its own copy of the weights), so the supernet shared
by other threads is never modified. Calibration batches follow the reference (§1, "BN recalibration") and the
training code's `bn_batches`: a seeded sample of at most `n_images` images, training transforms (random crop with
4-pixel padding, horizontal flip) with a fixed seed, batches of 200, resized to the sub-network's resolution.
Evaluation: pixels / 255, normalised, bilinear resize to the resolution (antialiased when shrinking), no
augmentation, argmax of the logits.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from .bn import bn_stats_of, recalibrate_bn
from .data import CIFAR_MEAN, CIFAR_STD, ImageArray, Normalizer, iterate_batches, resize
from .extract import extract
from .spec import SubnetConfig, SupernetSpec

__all__ = ["BNRecipe", "preprocessing", "calibration_batches", "evaluate_top1", "Measurement", "measure_subnet",
           "set_key"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BNRecipe:
    n_images: int = 2000
    batch_size: int = 200
    seed: int = 0
    transform: str = "pad4-crop+hflip"
    method: str = "set_running_statistics: batch-size-weighted mean and biased variance per BN"

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "batch_size": self.batch_size, "seed": self.seed,
                "transform": self.transform, "method": self.method}


def preprocessing(spec: SupernetSpec) -> dict[str, Any]:
    """Input normalisation of a supernet: ImageNet statistics for the published 1000-class supernets, CIFAR-10's
    otherwise (the default's training data)."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if spec.n_classes == 1000 else (CIFAR_MEAN, CIFAR_STD)
    return {"scale": "pixels / 255", "mean": list(mean), "std": list(std),
            "resize": "bilinear, align_corners=False, antialias when shrinking", "layout": "NCHW float32 RGB"}


def _normalizer(spec: SupernetSpec) -> Normalizer:
    p = preprocessing(spec)
    return Normalizer(tuple(p["mean"]), tuple(p["std"]))


def set_key(file_sha256: str, **params: Any) -> str:
    """Identity of an image set used one way (its file's sha256 plus how it is used): the storage key of results."""
    blob = json.dumps({"sha256": file_sha256, **params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def calibration_batches(data: ImageArray, r: int, recipe: BNRecipe = BNRecipe(), normalizer: Normalizer | None = None
                        ) -> Iterator[torch.Tensor]:
    """Training-transform batches of a seeded sample of the calibration images (the same batches as
    `ofa_core.training.bn_batches` for the CIFAR normalisation)."""
    idx = np.random.default_rng(recipe.seed).permutation(len(data))[:recipe.n_images]
    for x, _ in iterate_batches(data.subset(np.sort(idx)), recipe.batch_size, train=True, seed=recipe.seed,
                                drop_last=False, normalizer=normalizer):
        yield resize(x, r)


@torch.no_grad()
def evaluate_top1(net: nn.Module, data: ImageArray, r: int, batch_size: int = 500,
                  normalizer: Normalizer | None = None) -> int:
    """Number of images of `data` whose argmax prediction is the label."""
    net.eval()
    correct = 0
    for x, y in iterate_batches(data, batch_size, train=False, normalizer=normalizer):
        correct += int((net(resize(x, r)).argmax(1) == y).sum())
    return correct


@dataclass
class Measurement:
    stats: dict[str, torch.Tensor]
    n_calib: int
    calib_seconds: float
    correct: int | None = None
    n_eval: int | None = None
    eval_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return None if not self.n_eval else self.correct / self.n_eval


def measure_subnet(supernet: nn.Module, cfg: SubnetConfig, calib: ImageArray, evaluation: ImageArray | None = None,
                   recipe: BNRecipe = BNRecipe()) -> Measurement:
    """BN statistics of `cfg` recalibrated on `calib` (compact: active channels only, static key names) and,
    with `evaluation`, the recalibrated network's top-1 on it. The supernet is read, never modified."""
    norm = _normalizer(supernet.spec)
    t0 = time.perf_counter()
    net = extract(supernet, cfg).to(memory_format=torch.channels_last)    # oneDNN's faster layout
    n = recalibrate_bn(net, (x.contiguous(memory_format=torch.channels_last)
                             for x in calibration_batches(calib, cfg.r, recipe, norm)))
    m = Measurement(bn_stats_of(net), n, time.perf_counter() - t0)
    net = net.to(memory_format=torch.contiguous_format)   # scored as a user runs the download
    if evaluation is not None:
        t1 = time.perf_counter()
        m.correct, m.n_eval = evaluate_top1(net, evaluation, cfg.r, normalizer=norm), len(evaluation)
        m.eval_seconds = time.perf_counter() - t1
    return m
