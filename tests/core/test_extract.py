import json

import numpy as np
import pytest
import torch

from ofa_core.extract import StaticMobileNetV3, extract, extract_state_dict, net_config, run_config
from ofa_core.spec import SubnetConfig, get_spec, make_divisible

from ofa_test_utils import SPECS, supernet

torch.set_num_threads(1)

W10, W12, CIFAR = SPECS
# (spec, number of random configs, resolutions used) -- 110 configs in total
PLAN = [(W10, 40, (128, 132, 136, 140)), (W12, 30, (160, 176)), (CIFAR, 40, (24, 28, 32))]


def _cases():
    for name, n, res in PLAN:
        rng = np.random.default_rng(len(name) * 7919 + n)
        spec = get_spec(name)
        for i in range(n):
            yield name, spec.sample(rng, resolutions=[res[i % len(res)]])


@pytest.mark.parametrize("name", SPECS)
def test_extracted_matches_supernet(name):
    torch.manual_seed(0)
    net = supernet(name)
    worst = 0.0
    count = 0
    for sname, cfg in _cases():
        if sname != name:
            continue
        static = extract(net, cfg)
        x = torch.randn(2, 3, cfg.r, cfg.r)
        with torch.no_grad():
            net.set_active(cfg)
            ref = net(x)
            got = static(x)
        assert ref.shape == got.shape == (2, net.spec.n_classes)
        assert ref.abs().max() > 1e-3  # the comparison is not vacuous
        worst = max(worst, (ref - got).abs().max().item())
        count += 1
    assert count >= 30
    assert worst <= 1e-5, worst


def test_total_configs_at_least_100():
    assert sum(1 for _ in _cases()) >= 100


def test_published_key_names_and_shapes():
    spec = get_spec(W10)
    net = supernet(W10)
    sd = extract_state_dict(net, spec.max_config())
    assert sd["blocks.1.conv.inverted_bottleneck.conv.weight"].shape == (96, 16, 1, 1)
    assert sd["blocks.1.conv.inverted_bottleneck.bn.weight"].shape == (96,)
    assert sd["blocks.1.conv.depth_conv.conv.weight"].shape == (96, 1, 7, 7)
    assert sd["blocks.1.conv.depth_conv.bn.running_var"].shape == (96,)
    assert sd["blocks.1.conv.point_linear.conv.weight"].shape == (24, 96, 1, 1)
    assert sd["blocks.5.conv.depth_conv.se.fc.reduce.weight"].shape == (40, 144, 1, 1)
    assert sd["blocks.5.conv.depth_conv.se.fc.expand.bias"].shape == (144,)
    assert sd["blocks.0.conv.depth_conv.conv.weight"].shape == (16, 1, 3, 3)
    assert sd["first_conv.conv.weight"].shape == (16, 3, 3, 3)
    assert sd["final_expand_layer.conv.weight"].shape == (960, 160, 1, 1)
    assert sd["feature_mix_layer.conv.weight"].shape == (1280, 960, 1, 1)
    assert sd["classifier.linear.weight"].shape == (1000, 1280)
    assert "blocks.20.conv.point_linear.bn.num_batches_tracked" in sd and "blocks.21.conv.point_linear.conv.weight" not in sd
    # the doubled inner level and the kernel-transform matrices are gone
    assert not any(".conv.conv." in k or ".bn.bn." in k or "_matrix" in k for k in sd)
    assert "feature_mix_layer.bn.weight" not in sd
    # parameter count of the full network (reference: 7.68 M for the supernet incl. transform matrices)
    n_params = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    matrices = sum(p.numel() for k, p in net.named_parameters() if "_matrix" in k)
    assert n_params + matrices == sum(p.numel() for p in net.parameters())
    assert abs(n_params + matrices - 7.68e6) < 0.01e6


def test_renumbering_and_slicing():
    spec = get_spec(W10)
    net = supernet(W10)
    ks = [3, 5, 7, 5] * 5
    e = [3, 4, 6, 4] * 5
    cfg = SubnetConfig.create(spec, ks, e, [2, 3, 2, 4, 2], 128)
    sd = extract_state_dict(net, cfg)
    active = cfg.active_blocks()
    assert active == [1, 2, 5, 6, 7, 9, 10, 13, 14, 15, 16, 17, 18]
    n_blocks = 1 + len(active)
    assert {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")} == set(range(n_blocks))
    for new_i, b in enumerate(active, start=1):
        conv = net.blocks[b].conv
        mid = spec.mid_channels(conv.cin, cfg.e[b - 1])
        p = f"blocks.{new_i}.conv."
        assert torch.equal(sd[p + "inverted_bottleneck.conv.weight"], conv.inverted_bottleneck.conv.conv.weight[:mid])
        assert torch.equal(sd[p + "point_linear.conv.weight"], conv.point_linear.conv.conv.weight[:, :mid])
        assert torch.equal(sd[p + "depth_conv.bn.running_mean"], conv.depth_conv.bn.bn.running_mean[:mid])
        assert torch.equal(sd[p + "depth_conv.bn.num_batches_tracked"], conv.depth_conv.bn.bn.num_batches_tracked)
        assert sd[p + "depth_conv.conv.weight"].shape == (mid, 1, cfg.ks[b - 1], cfg.ks[b - 1])
        if conv.use_se:
            m = make_divisible(mid // 4)
            assert sd[p + "depth_conv.se.fc.reduce.weight"].shape == (m, mid, 1, 1)
    assert all(v.is_contiguous() and not v.requires_grad for v in sd.values())
    # 5x5 is the transformed centre crop of the 7x7 kernel, not a plain crop
    b = active[1]  # ks 5
    assert cfg.ks[b - 1] == 5
    w7 = net.blocks[b].conv.depth_conv.conv.conv.weight
    mid = spec.mid_channels(net.blocks[b].conv.cin, cfg.e[b - 1])
    crop = w7[:mid, :, 1:6, 1:6].reshape(mid, 25)
    expect = (crop @ net.blocks[b].conv.depth_conv.conv.get_parameter("7to5_matrix").T).view(mid, 1, 5, 5)
    assert torch.allclose(sd["blocks.2.conv.depth_conv.conv.weight"], expect, atol=1e-6)
    assert not torch.allclose(sd["blocks.2.conv.depth_conv.conv.weight"], w7[:mid, :, 1:6, 1:6])


def test_state_dict_key_order_matches_module():
    for name in SPECS:
        spec = get_spec(name)
        cfg = spec.sample(np.random.default_rng(3))
        sd = extract_state_dict(supernet(name), cfg)
        mod = StaticMobileNetV3.from_net_config(net_config(spec, cfg))
        assert list(sd) == list(mod.state_dict())


def test_net_config_shape_and_round_trip():
    spec = get_spec(W10)
    net = supernet(W10)
    cfg = SubnetConfig.create(spec, [7] * 20, [6] * 20, [2, 3, 4, 2, 3], 160)
    nc = net_config(spec, cfg)
    assert run_config(cfg) == {"image_size": 160}
    assert nc["name"] == "MobileNetV3" and nc["bn"] == {"momentum": 0.1, "eps": 1e-05}
    assert nc["first_conv"] == {"name": "ConvLayer", "kernel_size": 3, "stride": 2, "dilation": 1, "groups": 1,
                                "bias": False, "has_shuffle": False, "in_channels": 3, "out_channels": 16,
                                "use_bn": True, "act_func": "h_swish", "dropout_rate": 0, "ops_order": "weight_bn_act"}
    assert len(nc["blocks"]) == 1 + 14
    b0 = nc["blocks"][0]
    assert b0["mobile_inverted_conv"]["expand_ratio"] == 1 and b0["shortcut"]["name"] == "IdentityLayer"
    assert b0["shortcut"]["in_channels"] == [16]
    b1 = nc["blocks"][1]
    assert b1 == {"name": "MobileInvertedResidualBlock",
                  "mobile_inverted_conv": {"name": "MBConvLayer", "in_channels": 16, "out_channels": 24,
                                           "kernel_size": 7, "stride": 2, "expand_ratio": 6, "mid_channels": 96,
                                           "act_func": "relu", "use_se": False},
                  "shortcut": None}
    assert nc["blocks"][2]["shortcut"] == {"name": "IdentityLayer", "in_channels": [24], "out_channels": [24],
                                           "use_bn": False, "act_func": None, "dropout_rate": 0,
                                           "ops_order": "weight_bn_act"}
    assert nc["feature_mix_layer"]["use_bn"] is False and nc["final_expand_layer"]["use_bn"] is True
    assert nc["classifier"] == {"name": "LinearLayer", "in_features": 1280, "out_features": 1000, "bias": True,
                                "use_bn": False, "act_func": None, "dropout_rate": 0.1, "ops_order": "weight_bn_act"}
    text = json.dumps(nc)
    rebuilt = StaticMobileNetV3.from_net_config(json.loads(text)).eval()
    rebuilt.load_state_dict(extract_state_dict(net, cfg), strict=True)
    assert rebuilt.config() == nc
    # legacy conv name
    legacy = json.loads(text.replace('"MBConvLayer"', '"MBInvertedConvLayer"'))
    legacy_net = StaticMobileNetV3.from_net_config(legacy).eval()
    legacy_net.load_state_dict(extract_state_dict(net, cfg), strict=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        net.set_active(cfg)
        ref = net(x)
        assert (rebuilt(x) - ref).abs().max() <= 1e-5
        assert torch.equal(rebuilt(x), legacy_net(x))


def test_extract_is_independent_copy_and_bad_inputs():
    spec = get_spec(CIFAR)
    net = supernet(CIFAR)
    cfg = spec.max_config()
    static = extract(net, cfg)
    static.first_conv.conv.weight.data.add_(1.0)
    assert not torch.equal(static.first_conv.conv.weight, net.first_conv.conv.weight)
    with pytest.raises(ValueError):
        extract_state_dict(supernet(W10), cfg)   # cifar config on a w1.0 supernet
    with pytest.raises(ValueError):
        StaticMobileNetV3.from_net_config({**net_config(spec, cfg), "name": "ResNet"})


def test_off_grid_resolutions_extract_and_run():
    """w1.2's published specialized sizes (r = 236, 260) and a CIFAR size off its 24/28/32 grid extract and run
    like the supernet, and the net.config / run.config record the size."""
    torch.manual_seed(0)
    for name, r in ((W12, 236), (W12, 260), (CIFAR, 40)):
        spec = get_spec(name)
        cfg = SubnetConfig.create(spec, [3] * spec.n_blocks, [3] * spec.n_blocks, [2] * spec.n_stages, r)
        net = supernet(name)
        static = extract(net, cfg).eval()
        x = torch.randn(1, 3, r, r)
        with torch.no_grad():
            net.eval().set_active(cfg)
            torch.testing.assert_close(static(x), net(x), rtol=1e-4, atol=1e-4)
        assert run_config(cfg)["image_size"] == r
