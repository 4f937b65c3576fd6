"""BN recalibration (reference §1): after choosing a sub-network, reset the BN running statistics by
forwarding training images in train mode and averaging per-batch means and variances."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn


def _bns(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


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


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor | tuple], max_images: int | None = None) -> int:
    """Reset BN statistics and re-estimate them as the average of per-batch statistics over `batches`
    (momentum=None gives exactly that cumulative average; dynamic BN slices update in place).
    Returns the number of images used. The net is left in eval mode."""
    bns = _bns(net)
    moms = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = net.training
    net.train()
    seen = 0
    try:
        for b in batches:
            x = b[0] if isinstance(b, (tuple, list)) else b
            if max_images is not None and seen >= max_images:
                break
            if max_images is not None:
                x = x[:max_images - seen]
            net(x)
            seen += x.shape[0]
    finally:
        for bn, m in zip(bns, moms):
            bn.momentum = m
        net.train(was_training)
    net.eval()
    if seen == 0:
        raise ValueError("BN recalibration needs at least one batch")
    return seen
