"""Shared helpers for the ofa_core extraction / export / cost tests."""
from __future__ import annotations

import torch
import torch.nn as nn

from ofa_core.mbv3 import DynamicSeparableConv2d, OFAMobileNetV3, build_supernet
from ofa_core.spec import get_spec

SPECS = ("ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2", "ofa_mbv3_cifar10")
_CACHE: dict[str, OFAMobileNetV3] = {}


@torch.no_grad()
def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affine, kernel-transform matrices, biases and classifier, so that
    slicing or transform mistakes change the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        elif isinstance(m, DynamicSeparableConv2d):
            for _, p in m.named_parameters(recurse=False):
                p.copy_(torch.eye(p.shape[0]) + torch.randn(p.shape, generator=g) * 0.2)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net


def supernet(name: str) -> OFAMobileNetV3:
    """A randomised eval-mode supernet, cached per process (tests must not modify it)."""
    if name not in _CACHE:
        _CACHE[name] = randomize(build_supernet(get_spec(name), seed=0), seed=1).eval()
    return _CACHE[name]
