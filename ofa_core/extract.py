"""Cut a static sub-network out of the OFA MobileNetV3 supernet (reference §1, "Extracted sub-network").

Two routes, producing identical weights:

* `extract_state_dict(supernet, cfg)` goes straight to the state dict of the static sub-network without
  building any module (the streaming path: a download never needs an `nn.Module`).
* `extract(supernet, cfg)` builds a `StaticMobileNetV3` from `net_config(spec, cfg)` and loads that state dict
  strictly.

Static key layout (published): the doubled inner level of the dynamic layers is dropped
(`blocks.1.conv.inverted_bottleneck.conv.conv.weight` -> `blocks.1.conv.inverted_bottleneck.conv.weight`,
`...depth_conv.bn.bn.weight` -> `...depth_conv.bn.weight`), skipped blocks are dropped and the remaining ones
renumbered consecutively (`blocks.0` is always the fixed first block).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn as nn

from .mbv3 import ConvLayer, LinearLayer, MBConvLayer, OFAMobileNetV3, ResidualBlock
from .spec import SubnetConfig, SupernetSpec, make_divisible

__all__ = ["extract_state_dict", "net_config", "run_config", "StaticMobileNetV3", "extract",
           "static_block_plan"]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------------------------------
# net.config (the OFA JSON description of a static network)
# ----------------------------------------------------------------------------------------------------
def _conv_layer_cfg(cin: int, cout: int, k: int, stride: int, use_bn: bool, act: str | None) -> dict:
    return {"name": "ConvLayer", "kernel_size": k, "stride": stride, "dilation": 1, "groups": 1,
            "bias": False, "has_shuffle": False, "in_channels": cin, "out_channels": cout, "use_bn": use_bn,
            "act_func": act, "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _linear_cfg(fin: int, fout: int, dropout: float) -> dict:
    return {"name": "LinearLayer", "in_features": fin, "out_features": fout, "bias": True,
            "use_bn": False, "act_func": None, "dropout_rate": dropout, "ops_order": "weight_bn_act"}


def _mbconv_cfg(cin: int, cout: int, k: int, stride: int, expand_ratio: float, mid: int, act: str,
                use_se: bool) -> dict:
    return {"name": "MBConvLayer", "in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride,
            "expand_ratio": expand_ratio, "mid_channels": mid, "act_func": act, "use_se": use_se}


def _block_cfg(conv: dict, shortcut: bool) -> dict:
    c = conv["in_channels"]
    sc = ({"name": "IdentityLayer", "in_channels": [c], "out_channels": [c], "use_bn": False, "act_func": None,
           "dropout_rate": 0, "ops_order": "weight_bn_act"} if shortcut else None)
    return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv, "shortcut": sc}


def static_block_plan(spec: SupernetSpec, cfg: SubnetConfig) -> list[tuple[int, dict]]:
    """[(supernet block index, MBConv config dict with 'shortcut' flag)] of the static network, in order.

    Entry 0 is the fixed block 0; the rest are the active elastic blocks.
    """
    wd = spec.widths
    plan = [(0, dict(_mbconv_cfg(wd["stem"], wd["first_block"], 3, 1, 1, wd["stem"], "relu", False),
                     shortcut=wd["stem"] == wd["first_block"]))]
    geo = spec.block_in_out()
    for b in cfg.active_blocks():
        cin, cout, stride, act, se = geo[b - 1]
        e = cfg.e[b - 1]
        plan.append((b, dict(_mbconv_cfg(cin, cout, cfg.ks[b - 1], stride, e, spec.mid_channels(cin, e), act, se),
                             shortcut=stride == 1 and cin == cout)))
    return plan


def net_config(spec: SupernetSpec, cfg: SubnetConfig) -> dict[str, Any]:
    """The OFA `net.config` of the sub-network `cfg` (reference §1)."""
    _check_cfg(spec, cfg)
    wd = spec.widths
    blocks = []
    for _, p in static_block_plan(spec, cfg):
        p = dict(p)
        sc = p.pop("shortcut")
        blocks.append(_block_cfg(p, sc))
    return {
        "name": "MobileNetV3",
        "bn": {"momentum": spec.bn_momentum, "eps": spec.bn_eps},
        "first_conv": _conv_layer_cfg(3, wd["stem"], 3, spec.stem_stride, True, "h_swish"),
        "blocks": blocks,
        "final_expand_layer": _conv_layer_cfg(wd["stages"][-1], wd["final_expand"], 1, 1, True, "h_swish"),
        "feature_mix_layer": _conv_layer_cfg(wd["final_expand"], wd["last"], 1, 1, False, "h_swish"),
        "classifier": _linear_cfg(wd["last"], spec.n_classes, spec.dropout),
    }


def run_config(cfg: SubnetConfig) -> dict[str, int]:
    """The OFA `run.config` of a sub-network: only the input image size."""
    return {"image_size": int(cfg.r)}


def _check_cfg(spec: SupernetSpec, cfg: SubnetConfig) -> None:
    if not isinstance(cfg, SubnetConfig):
        raise TypeError(f"expected a SubnetConfig, got {type(cfg).__name__}")
    if len(cfg.ks) != spec.n_blocks or len(cfg.d) != spec.n_stages:
        raise ValueError(f"config does not fit {spec.name}: {len(cfg.ks)} blocks / {len(cfg.d)} stages, "
                         f"expected {spec.n_blocks} / {spec.n_stages}")
    if cfg.spec.name != spec.name and cfg.spec.widths != spec.widths:
        raise ValueError(f"config is for {cfg.spec.name}, supernet is {spec.name}")


# ----------------------------------------------------------------------------------------------------
# Direct state-dict extraction (no module construction)
# ----------------------------------------------------------------------------------------------------
def _bn(out: "OrderedDict[str, torch.Tensor]", prefix: str, bn: nn.BatchNorm2d, c: int | None = None) -> None:
    if c is None or c == bn.num_features:
        out[prefix + "weight"] = bn.weight.detach()
        out[prefix + "bias"] = bn.bias.detach()
        out[prefix + "running_mean"] = bn.running_mean
        out[prefix + "running_var"] = bn.running_var
    else:
        out[prefix + "weight"] = bn.weight.detach()[:c]
        out[prefix + "bias"] = bn.bias.detach()[:c]
        out[prefix + "running_mean"] = bn.running_mean[:c]
        out[prefix + "running_var"] = bn.running_var[:c]
    out[prefix + "num_batches_tracked"] = bn.num_batches_tracked


def _fixed(out: "OrderedDict[str, torch.Tensor]", prefix: str, module: nn.Module) -> None:
    for k, v in module.state_dict(prefix=prefix, keep_vars=True).items():
        out[k] = v.detach()


@torch.no_grad()
def extract_state_dict(supernet: OFAMobileNetV3, cfg: SubnetConfig, clone: bool = False
                       ) -> "OrderedDict[str, torch.Tensor]":
    """State dict of the static sub-network `cfg`, keys exactly those of the published static network.

    Tensors are detached and contiguous. Those that need no computation (whole or leading-slice tensors)
    are views sharing storage with the supernet; pass ``clone=True`` for tensors owned by the result
    (needed only if the supernet will be modified while the state dict is still in use).
    """
    spec = supernet.spec
    _check_cfg(spec, cfg)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    _fixed(out, "first_conv.", supernet.first_conv)
    _fixed(out, "blocks.0.", supernet.blocks[0])
    for new_i, b in enumerate(cfg.active_blocks(), start=1):
        conv = supernet.blocks[b].conv
        cin = conv.cin
        ks, e = cfg.ks[b - 1], cfg.e[b - 1]
        mid = spec.mid_channels(cin, e)
        p = f"blocks.{new_i}.conv."
        ib = conv.inverted_bottleneck
        out[p + "inverted_bottleneck.conv.weight"] = ib.conv.conv.weight.detach()[:mid]
        _bn(out, p + "inverted_bottleneck.bn.", ib.bn.bn, mid)
        dc = conv.depth_conv
        out[p + "depth_conv.conv.weight"] = dc.conv.active_filter(mid, ks).detach()
        _bn(out, p + "depth_conv.bn.", dc.bn.bn, mid)
        if conv.use_se:
            rw, rb, ew, eb = dc.se.active_params(mid)
            out[p + "depth_conv.se.fc.reduce.weight"] = rw.detach()
            out[p + "depth_conv.se.fc.reduce.bias"] = rb.detach()
            out[p + "depth_conv.se.fc.expand.weight"] = ew.detach()
            out[p + "depth_conv.se.fc.expand.bias"] = eb.detach()
        pl = conv.point_linear
        out[p + "point_linear.conv.weight"] = pl.conv.conv.weight.detach()[:, :mid]
        _bn(out, p + "point_linear.bn.", pl.bn.bn, None)
    _fixed(out, "final_expand_layer.", supernet.final_expand_layer)
    _fixed(out, "feature_mix_layer.", supernet.feature_mix_layer)
    _fixed(out, "classifier.", supernet.classifier)
    for k, v in out.items():
        if not v.is_contiguous():
            out[k] = v.contiguous()
        elif clone:
            out[k] = v.clone()
    return out


# ----------------------------------------------------------------------------------------------------
# The static network
# ----------------------------------------------------------------------------------------------------
_MBCONV_NAMES = ("MBConvLayer", "MBInvertedConvLayer")


class StaticMobileNetV3(nn.Module):
    """A plain (non-elastic) MobileNetV3 with the published static key layout, built from a `net.config`."""

    def __init__(self, first_conv: ConvLayer, blocks: list[ResidualBlock], final_expand_layer: ConvLayer,
                 feature_mix_layer: ConvLayer, classifier: LinearLayer, bn: Mapping[str, float] | None = None):
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier
        bn = dict(bn or {"momentum": 0.1, "eps": 1e-5})
        self.bn_param = {"momentum": float(bn.get("momentum", 0.1)), "eps": float(bn.get("eps", 1e-5))}
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = self.bn_param["momentum"], self.bn_param["eps"]

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))

    # -- net.config -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        def conv_cfg(layer: ConvLayer) -> dict:
            return _conv_layer_cfg(layer.cin, layer.cout, layer.k, layer.stride, layer.use_bn, layer.act_name)

        blocks = []
        for blk in self.blocks:
            c = blk.conv
            blocks.append(_block_cfg(_mbconv_cfg(c.cin, c.cout, c.k, c.stride, c.expand_ratio, c.mid, c.act_name,
                                                 c.use_se), blk.has_shortcut))
        return {"name": "MobileNetV3", "bn": dict(self.bn_param), "first_conv": conv_cfg(self.first_conv),
                "blocks": blocks, "final_expand_layer": conv_cfg(self.final_expand_layer),
                "feature_mix_layer": conv_cfg(self.feature_mix_layer),
                "classifier": _linear_cfg(self.classifier.fin, self.classifier.fout, self.classifier.dropout_rate)}

    @classmethod
    def from_net_config(cls, config: Mapping[str, Any]) -> "StaticMobileNetV3":
        """Build from an OFA `net.config` dict (also accepts the legacy `MBInvertedConvLayer` name)."""
        if config.get("name", "MobileNetV3") != "MobileNetV3":
            raise ValueError(f"net.config name {config.get('name')!r} is not MobileNetV3")
        first_conv = _build_conv_layer(config["first_conv"], "first_conv")
        blocks = [_build_block(b, i) for i, b in enumerate(config["blocks"])]
        final_expand = _build_conv_layer(config["final_expand_layer"], "final_expand_layer")
        feature_mix = _build_conv_layer(config["feature_mix_layer"], "feature_mix_layer")
        cl = config["classifier"]
        if cl.get("name", "LinearLayer") != "LinearLayer":
            raise ValueError(f"classifier: unsupported layer {cl.get('name')!r}")
        if cl.get("use_bn") or cl.get("act_func") or not cl.get("bias", True):
            raise ValueError("classifier: only a plain biased LinearLayer is supported")
        classifier = LinearLayer(int(cl["in_features"]), int(cl["out_features"]), float(cl.get("dropout_rate", 0)))
        return cls(first_conv, blocks, final_expand, feature_mix, classifier, config.get("bn"))


def _build_conv_layer(c: Mapping[str, Any], where: str) -> ConvLayer:
    if c.get("name") != "ConvLayer":
        raise ValueError(f"{where}: unsupported layer {c.get('name')!r}")
    if c.get("groups", 1) not in (1, None) or c.get("dilation", 1) != 1 or c.get("has_shuffle"):
        raise ValueError(f"{where}: only plain convolutions are supported")
    if c.get("ops_order", "weight_bn_act") != "weight_bn_act":
        raise ValueError(f"{where}: unsupported ops_order {c.get('ops_order')!r}")
    return ConvLayer(int(c["in_channels"]), int(c["out_channels"]), int(c["kernel_size"]), int(c.get("stride", 1)),
                     use_bn=bool(c.get("use_bn", True)), act=c.get("act_func"), bias=bool(c.get("bias", False)))


def _build_block(b: Mapping[str, Any], i: int) -> ResidualBlock:
    if b.get("name") not in ("MobileInvertedResidualBlock", "ResidualBlock"):
        raise ValueError(f"blocks[{i}]: unsupported block {b.get('name')!r}")
    c = b["mobile_inverted_conv"] if "mobile_inverted_conv" in b else b["conv"]
    if c.get("name") not in _MBCONV_NAMES:
        raise ValueError(f"blocks[{i}]: unsupported conv {c.get('name')!r}")
    cin, cout = int(c["in_channels"]), int(c["out_channels"])
    er = c.get("expand_ratio", 1)
    mid = c.get("mid_channels")
    if mid is None:
        mid = make_divisible(round(cin * er))
    conv = MBConvLayer(cin, cout, int(c["kernel_size"]), int(c.get("stride", 1)), er, int(mid),
                       c.get("act_func", "relu6"), bool(c.get("use_se", False)))
    sc = b.get("shortcut")
    if sc is not None:
        if sc.get("name") != "IdentityLayer":
            raise ValueError(f"blocks[{i}]: unsupported shortcut {sc.get('name')!r}")
        if cin != cout or conv.stride != 1:
            raise ValueError(f"blocks[{i}]: identity shortcut needs stride 1 and in == out channels")
    return ResidualBlock(conv, shortcut=sc is not None)


def extract(supernet: OFAMobileNetV3, cfg: SubnetConfig) -> StaticMobileNetV3:
    """A standalone `StaticMobileNetV3` of sub-network `cfg` (its own copy of the weights), in eval mode."""
    net = StaticMobileNetV3.from_net_config(net_config(supernet.spec, cfg))
    net.load_state_dict(extract_state_dict(supernet, cfg), strict=True)
    return net.eval()
