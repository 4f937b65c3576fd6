
import numpy as np
import pytest
import torch
import torch.nn as nn

from ofa_core.costs import CostModel, config_costs
from ofa_core.extract import StaticMobileNetV3, net_config
from ofa_core.mbv3 import ResidualBlock, SEModule
from ofa_core.spec import ConfigError, SubnetConfig, encode_batch, get_spec

from ofa_test_utils import SPECS

torch.set_num_threads(1)


def hook_measure(net: StaticMobileNetV3, r: int) -> dict[str, int]:
    """Independent measurement on a real forward pass: MACs and peak memory by hooks, params by numel."""
    state = {"macs": 0, "peak": 0, "block_in": None, "se_in": None}
    handles = []

    def block_pre(mod, args):
        state["block_in"] = args[0] if mod.has_shortcut else None

    def block_post(mod, args, out):
        state["block_in"] = None

    def se_pre(mod, args):
        state["se_in"] = args[0]

    def se_post(mod, args, out):
        state["se_in"] = None

    def op_hook(mod, args, out):
        x = args[0]
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            state["macs"] += out.numel() * (mod.in_channels // mod.groups) * k
        else:
            state["macs"] += mod.in_features * mod.out_features * (out.numel() // mod.out_features)
        live = x.numel() + out.numel()
        bi = state["block_in"]
        if bi is not None and x is not bi:
            live += bi.numel()
        if state["se_in"] is not None:
            live += state["se_in"].numel()
        state["peak"] = max(state["peak"], live * 4)

    for m in net.modules():
        if isinstance(m, ResidualBlock):
            handles += [m.register_forward_pre_hook(block_pre), m.register_forward_hook(block_post)]
        elif isinstance(m, SEModule):
            handles += [m.register_forward_pre_hook(se_pre), m.register_forward_hook(se_post)]
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(op_hook))
    with torch.no_grad():
        net(torch.zeros(1, 3, r, r))
    for h in handles:
        h.remove()
    return {"macs": state["macs"], "params": sum(p.numel() for p in net.parameters()), "peak_memory": state["peak"]}


@pytest.mark.parametrize("name,n", [(SPECS[0], 30), (SPECS[1], 20), (SPECS[2], 50)])
def test_costs_equal_hook_counts(name, n):
    spec = get_spec(name)
    rng = np.random.default_rng(11)
    res = sorted(spec.resolutions)[:3] if name != SPECS[2] else spec.resolutions
    cfgs = [spec.sample(rng, resolutions=[res[i % len(res)]]) for i in range(n - 2)]
    cfgs += [spec.max_config(min(res)), spec.min_config(min(res))]
    model = CostModel(spec)
    got = model.all(encode_batch(cfgs))
    for i, cfg in enumerate(cfgs):
        net = StaticMobileNetV3.from_net_config(net_config(spec, cfg)).eval()
        ref = hook_measure(net, cfg.r)
        assert ref == {k: int(v[i]) for k, v in got.items()}, (name, cfg.to_dict())
        assert config_costs(spec, cfg) == ref


def test_full_network_reference_numbers():
    spec = get_spec(SPECS[0])
    model = CostModel(spec)
    full = spec.max_config(224)
    c = model.all(full)
    # full w1.0 network: ~7.66 M params (supernet 7.68 M minus the kernel-transform matrices)
    assert int(c["params"]) == 7664760  # BN affine included, buffers and transform matrices excluded
    assert 550e6 < int(c["macs"]) < 650e6
    small = model.all(spec.min_config(128))
    assert small["macs"] < c["macs"] and small["params"] < c["params"] and small["peak_memory"] < c["peak_memory"]


def test_single_and_batch_agree_and_masking():
    spec = get_spec(SPECS[2])
    model = CostModel(spec)
    enc = spec.sample_encoded(200, np.random.default_rng(5))
    batch = model.all(enc)
    for i in range(0, 200, 37):
        cfg = SubnetConfig.from_encoded(spec, enc[i])
        assert int(model.macs(cfg)) == batch["macs"][i]
        assert int(model.params(enc[i])) == batch["params"][i]
        assert int(model.peak_memory(enc[i])) == batch["peak_memory"][i]
    # entries of skipped blocks are ignored
    raw = enc.copy()
    B = spec.n_blocks
    raw[:, 2 * B:2 * B + spec.n_stages] = 2
    raw2 = raw.copy()
    mask_skipped = np.tile(np.arange(4) >= 2, 5)
    raw2[:, :B][:, mask_skipped] = 7
    raw2[:, B:2 * B][:, mask_skipped] = 6
    for k in ("macs", "params", "peak_memory"):
        assert np.array_equal(model.all(raw)[k], model.all(raw2)[k])
    with pytest.raises(ConfigError):
        model.macs(np.full((1, spec.enc_width), 2))


def test_vectorized_100k_batch():
    spec = get_spec(SPECS[0])
    model = CostModel(spec)
    enc = spec.sample_encoded(100_000, np.random.default_rng(0))
    model.all(enc[:100])
    out = model.all(enc)     # speed is shown by bench/bench_core.py, not asserted here
    assert out["macs"].shape == (100_000,) and out["macs"].dtype == np.int64
    idx = np.arange(0, 100_000, 9973)
    np.testing.assert_array_equal(out["macs"][idx], model.macs(enc[idx]))
