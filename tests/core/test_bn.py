"""BN recalibration against an independent computation: the extracted static network run in torch's own train-mode
BN, each BN input captured by a forward hook, per-batch mean and biased variance in float64, averaged with batch-size
weights. Also: layers and channels outside the sub-network untouched, num_batches_tracked unchanged, compact
statistics applied to an extracted network and to its state dict."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ofa_test_utils import randomize  # noqa: E402

from ofa_core.bn import (apply_bn_stats, bn_stats_from_bytes, bn_stats_to_bytes, preserved_bn_stats,  # noqa: E402
                         recalibrate_bn, subnet_bn_stats)
from ofa_core.extract import extract, extract_state_dict  # noqa: E402
from ofa_core.mbv3 import build_supernet  # noqa: E402
from ofa_core.spec import SubnetConfig, get_spec  # noqa: E402

SPEC = get_spec("ofa_mbv3_cifar10")


@pytest.fixture(scope="module")
def net():
    return randomize(build_supernet(SPEC, seed=0), seed=3).eval()


def _cfg(r=24):
    # mixed kernels and expand ratios, depth 2 in two stages (skipped blocks), 3 and 4 elsewhere
    ks = [3, 5, 7, 3] * 5
    e = [3, 4, 6, 4, 3] * 4
    return SubnetConfig.create(SPEC, ks, e, [2, 3, 4, 2, 3], r)


def _batches(r, sizes=(7, 5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, r, r, generator=g) * 1.3 + 0.2 for n in sizes]


def _independent_stats(supernet, cfg, batches, unbiased=False) -> dict[str, torch.Tensor]:
    """Per-BN weighted average of per-batch mean and biased variance of the BN's input, via torch's own BN."""
    static = extract(supernet, cfg)
    static.train()
    for m in static.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    names = {m: n for n, m in static.named_modules() if isinstance(m, nn.BatchNorm2d)}
    sums: dict[str, list] = {}

    def hook(m, inp):
        x = inp[0].double()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=unbiased)
        s = sums.setdefault(names[m], [0.0, 0.0, 0])
        s[0] = s[0] + mean * x.shape[0]
        s[1] = s[1] + var * x.shape[0]
        s[2] += x.shape[0]

    handles = [m.register_forward_pre_hook(hook) for m in names]
    with torch.no_grad():
        for x in batches:
            static(x)
    for h in handles:
        h.remove()
    out = {}
    for n, (ms, vs, c) in sums.items():
        out[f"{n}.running_mean"] = (ms / c).float()
        out[f"{n}.running_var"] = (vs / c).float()
    return out


def test_statistics_match_an_independent_computation(net):
    cfg = _cfg()
    batches = _batches(cfg.r)
    want = _independent_stats(net, cfg, batches)
    stats, n = subnet_bn_stats(net, cfg, batches)
    assert n == 15
    assert set(stats) == set(want) and len(stats) > 40
    for k in want:
        torch.testing.assert_close(stats[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    # the biased variance, not torch's unbiased running estimate (they differ by n*h*w/(n*h*w-1) per batch:
    # clearly on the last BN layers, whose maps are small)
    unbiased = _independent_stats(net, cfg, batches, unbiased=True)
    k = "final_expand_layer.bn.running_var"
    assert not torch.allclose(stats[k], unbiased[k], rtol=1e-3, atol=0)


def test_outside_the_subnet_untouched_and_batches_tracked_unchanged(net):
    cfg = _cfg()
    before = copy.deepcopy(net.state_dict())
    with preserved_bn_stats(net):
        net.set_active(cfg)
        recalibrate_bn(net, _batches(cfg.r))
        after = net.state_dict()
        active = set(cfg.active_blocks())
        changed_active = 0
        for k, v in after.items():
            if k.endswith("num_batches_tracked"):
                assert torch.equal(v, before[k]), k
            if not (k.endswith("running_mean") or k.endswith("running_var")):
                assert torch.equal(v, before[k]), k
                continue
            parts = k.split(".")
            if parts[0] == "blocks" and int(parts[1]) > 0 and int(parts[1]) not in active:
                assert torch.equal(v, before[k]), f"skipped block changed: {k}"
            elif parts[0] == "blocks" and int(parts[1]) > 0 and ".point_linear." not in k:
                b = int(parts[1])
                mid = SPEC.mid_channels(SPEC.block_in_out()[b - 1][0], cfg.e[b - 1])
                assert torch.equal(v[mid:], before[k][mid:]), f"inactive channels changed: {k}"
                assert not torch.equal(v[:mid], before[k][:mid]), k
                changed_active += 1
            else:
                assert not torch.equal(v, before[k]), k
        assert changed_active > 10
        assert not net.training
    for k, v in net.state_dict().items():          # preserved_bn_stats restored everything
        assert torch.equal(v, before[k]), k


def test_recalibrated_supernet_equals_applied_stats(net):
    """The statistics written into the supernet (sliced) are the compact ones; applying them to the extracted
    network or its state dict gives the network recalibrated in place."""
    cfg = _cfg(28)
    batches = _batches(cfg.r, (4, 6), seed=2)
    stats, _ = subnet_bn_stats(net, cfg, batches)
    with preserved_bn_stats(net):
        net.set_active(cfg)
        recalibrate_bn(net, batches)
        ref_sd = extract_state_dict(net, cfg, clone=True)
        ref = extract(net, cfg)
    sd = apply_bn_stats(extract_state_dict(net, cfg), stats)
    assert list(sd) == list(ref_sd)
    for k in ref_sd:
        assert torch.equal(sd[k], ref_sd[k]), k
    static = apply_bn_stats(extract(net, cfg), bn_stats_from_bytes(bn_stats_to_bytes(stats)))
    x = torch.randn(3, 3, cfg.r, cfg.r, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(static(x), ref(x))
        assert not torch.allclose(extract(net, cfg)(x), ref(x))    # the uncalibrated network differs
    assert sum(v.numel() * 4 for v in stats.values()) < 64 * 1024   # compact: kilobytes


def test_max_images_and_bad_inputs(net):
    cfg = _cfg()
    batches = _batches(cfg.r, (7, 5, 3))
    a, n = subnet_bn_stats(net, cfg, batches, max_images=9)
    b, _ = subnet_bn_stats(net, cfg, [batches[0], batches[1][:2]])
    assert n == 9
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError):
        recalibrate_bn(net, [])
    stats, _ = subnet_bn_stats(net, cfg, batches)
    other = _cfg(24)
    other = SubnetConfig.create(SPEC, other.ks, [6] * 20, other.d, 24)
    with pytest.raises((KeyError, ValueError)):
        apply_bn_stats(extract_state_dict(net, other), stats)
    with pytest.raises(KeyError):
        apply_bn_stats(extract(net, cfg), {k: v for k, v in list(stats.items())[1:]})


def test_static_route_equals_supernet_route(net):
    """Recalibrating the extracted network (what the service does: the shared supernet is never modified) gives
    the statistics of recalibrating the supernet in place."""
    from ofa_core.bn import bn_stats_of
    cfg = _cfg(32)
    batches = _batches(cfg.r, (6, 4), seed=4)
    want, _ = subnet_bn_stats(net, cfg, batches)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    static = extract(net, cfg)
    recalibrate_bn(static, batches)
    got = bn_stats_of(static)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
