"""BN recalibration (reference §1) with the published ``set_running_statistics`` semantics.

After a sub-network is chosen, every BN layer it uses gets new running statistics: the mean and the *biased*
variance of its input over the calibration images, computed per batch and averaged over batches weighted by
batch size. While calibrating, each BN normalises with the batch's own statistics (as in training) and the
network is otherwise in eval mode (no dropout). BN layers the sub-network does not run (blocks skipped by depth)
and channels it does not use (beyond the active expand ratio) keep their values; ``num_batches_tracked`` is not
changed.

`subnet_bn_stats` returns a sub-network's statistics compactly (active channels only, keyed like the extracted
static network: kilobytes), `apply_bn_stats` puts them into an extracted network or its state dict, and
`bn_stats_to_bytes` / `bn_stats_from_bytes` store them as safetensors (no pickle).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mbv3 import DynamicBatchNorm2d

__all__ = ["recalibrate_bn", "preserved_bn_stats", "subnet_bn_stats", "bn_stats_of", "apply_bn_stats",
           "bn_stats_to_bytes", "bn_stats_from_bytes", "BN_STAT_KEYS"]

BN_STAT_KEYS = ("running_mean", "running_var")


def _bns(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_units(net: nn.Module) -> list[tuple[nn.Module, nn.modules.batchnorm._BatchNorm]]:
    """(module whose forward is the BN step, the BN holding the statistics): a `DynamicBatchNorm2d` slices its
    inner BN, so it is patched as a whole; any other BN is patched itself."""
    units, inner = [], set()
    for m in net.modules():
        if isinstance(m, DynamicBatchNorm2d):
            units.append((m, m.bn))
            inner.add(id(m.bn))
    units += [(m, m) for m in _bns(net) if id(m) not in inner]
    return units


@contextlib.contextmanager
def preserved_bn_stats(net: nn.Module):
    """Restore every BN's running statistics (and momentum) on exit: recalibrate a sub-network without
    disturbing the supernet shared by others."""
    saved = [(bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
             for bn in _bns(net)]
    try:
        yield net
    finally:
        for bn, m, v, n, mom in saved:
            bn.running_mean.copy_(m)
            bn.running_var.copy_(v)
            bn.num_batches_tracked.copy_(n)
            bn.momentum = mom


class _Accumulator:
    """Batch-size-weighted sums of one BN's per-batch mean and biased variance (float64)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        self.bn, self.count, self.channels = bn, 0, None
        self.mean_sum = self.var_sum = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, c, n = self.bn, x.size(1), x.size(0)
        w = bn.weight[:c] if bn.weight is not None else None
        b = bn.bias[:c] if bn.bias is not None else None
        m = x.numel() // c                                    # values per channel in this batch
        if m > 1:   # torch's fused kernel: normalises with the batch's biased variance, returns the unbiased one
            mean, var = x.new_zeros(c), x.new_ones(c)
            y = F.batch_norm(x, mean, var, w, b, True, 1.0, bn.eps)
            var = var * ((m - 1) / m)                         # biased, as published
        else:
            var, mean = torch.var_mean(x, [0] + list(range(2, x.dim())), correction=0)
            y = F.batch_norm(x, mean, var, w, b, False, 0.0, bn.eps)
        if self.channels is None:
            self.channels = c
            self.mean_sum = torch.zeros(c, dtype=torch.float64, device=x.device)
            self.var_sum = torch.zeros(c, dtype=torch.float64, device=x.device)
        elif c != self.channels:
            raise RuntimeError(f"a BN layer saw {c} channels after {self.channels}: the active sub-network changed "
                               "during recalibration")
        self.mean_sum += mean.double() * n
        self.var_sum += var.double() * n
        self.count += n
        return y

    @torch.no_grad()
    def store(self) -> None:
        if self.count == 0:
            return
        c, bn = self.channels, self.bn
        bn.running_mean[:c] = (self.mean_sum / self.count).to(bn.running_mean.dtype)
        bn.running_var[:c] = (self.var_sum / self.count).to(bn.running_var.dtype)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor | tuple], max_images: int | None = None) -> int:
    """Set the running statistics of every BN the active sub-network runs to the batch-size-weighted average of
    its per-batch mean and biased variance over `batches` (images, or (images, labels) tuples; at most
    `max_images` images). Other BN layers and channels are left as they are; ``num_batches_tracked`` too.
    Returns the number of images used. The net is left in eval mode."""
    units = _bn_units(net)
    accs = [_Accumulator(bn) for _, bn in units]
    for (m, _), acc in zip(units, accs):
        m.forward = acc.forward            # instance attribute: shadows the class's forward until deleted
    net.eval()
    seen = 0
    try:
        for b in batches:
            x = b[0] if isinstance(b, (tuple, list)) else b
            if max_images is not None and seen >= max_images:
                break
            if max_images is not None:
                x = x[:max_images - seen]
            if x.shape[0] == 0:
                continue
            net(x)
            seen += x.shape[0]
    finally:
        for m, _ in units:
            del m.forward
    if seen == 0:
        raise ValueError("BN recalibration needs at least one batch")
    for acc in accs:
        acc.store()
    return seen


def subnet_bn_stats(supernet: nn.Module, cfg, batches: Iterable, max_images: int | None = None
                    ) -> tuple["OrderedDict[str, torch.Tensor]", int]:
    """(statistics, images used) of sub-network `cfg` recalibrated on `batches`: only the running mean and
    variance of the BN layers the extracted network has, active channels only, keyed like the extracted static
    network (``blocks.3.conv.depth_conv.bn.running_var``). The supernet's own statistics are left untouched."""
    from .extract import extract_state_dict
    supernet.set_active(cfg)
    with preserved_bn_stats(supernet):
        n = recalibrate_bn(supernet, batches, max_images)
        sd = extract_state_dict(supernet, cfg, clone=True)
    return OrderedDict((k, v) for k, v in sd.items() if k.rsplit(".", 1)[-1] in BN_STAT_KEYS), n


def bn_stats_of(net: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The running mean and variance of every BN of a (static, extracted) network, cloned, in state-dict order:
    after `recalibrate_bn(extract(supernet, cfg), batches)` these are `subnet_bn_stats(supernet, cfg, batches)`
    (up to float rounding), computed without touching the shared supernet."""
    return OrderedDict((k, v.detach().clone()) for k, v in net.state_dict().items()
                       if k.rsplit(".", 1)[-1] in BN_STAT_KEYS)


def _check(stats: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    want = {k for k in target if k.rsplit(".", 1)[-1] in BN_STAT_KEYS}
    missing, unexpected = sorted(want - set(stats)), sorted(set(stats) - want)
    if missing or unexpected:
        raise KeyError(f"BN statistics do not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k in want if tuple(stats[k].shape) != tuple(target[k].shape)]
    if bad:
        raise ValueError(f"BN statistics have the wrong shape for {bad[:3]}")


@torch.no_grad()
def apply_bn_stats(target: nn.Module | Mapping[str, torch.Tensor], stats: Mapping[str, torch.Tensor]):
    """Put `stats` (from `subnet_bn_stats`) into an extracted network (in place; returned) or into its state dict
    (a new ordered dict, same order, the other tensors shared). Every BN statistic must be covered exactly."""
    if isinstance(target, nn.Module):
        own = dict(target.named_buffers())
        _check(stats, own)
        for k, v in stats.items():
            own[k].copy_(v)
        return target
    _check(stats, target)
    return OrderedDict((k, stats[k].to(v.dtype).contiguous() if k in stats else v) for k, v in target.items())


def bn_stats_to_bytes(stats: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    from safetensors.torch import save
    return save({k: v.detach().cpu().contiguous() for k, v in stats.items()},
                metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)


def bn_stats_from_bytes(data: bytes) -> "OrderedDict[str, torch.Tensor]":
    from safetensors.torch import load
    t = load(bytes(data))
    return OrderedDict((k, t[k]) for k in sorted(t))
