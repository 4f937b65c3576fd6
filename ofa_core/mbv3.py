"""The OFA MobileNetV3 weight-sharing supernet, with the published state-dict layout (reference §1).

Build order: activations -> fixed layers (stem, block 0, head) -> dynamic layers (conv, depthwise with
kernel transforms, BN, SE) -> the elastic MBConv block -> the supernet. Every module's parameter names are
chosen so that ``OFAMobileNetV3.state_dict()`` has exactly the published keys.
"""
from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .spec import SupernetSpec, SubnetConfig, make_divisible

ACTS = {"relu": nn.ReLU, "h_swish": nn.Hardswish, "relu6": nn.ReLU6}


def build_act(name: str | None) -> nn.Module:
    return ACTS[name](inplace=True) if name else nn.Identity()


def sub_filter_start_end(kernel_size: int, sub_kernel_size: int) -> tuple[int, int]:
    center = kernel_size // 2
    dev = sub_kernel_size // 2
    return center - dev, center + dev + 1


# Training-speed kernels for the supernet's own forward and backward (the extracted sub-networks keep plain convs;
# `crop_depthwise_convs` gives the frozen inference cut-outs the crop). Each gives the conv's result (the crop
# exactly, the GEMMs up to float rounding); the state dict is unchanged.
_FAST = {"on": True}


@contextlib.contextmanager
def plain_kernels():
    """Run the supernet with plain convs only (the reference the training benchmark compares against)."""
    prev, _FAST["on"] = _FAST["on"], False
    try:
        yield
    finally:
        _FAST["on"] = prev


def pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 conv. On a channels-last input it is one GEMM over the (N*H*W, C) view, with no copies, which
    oneDNN's 1x1 conv (and its backward) on small maps is several times slower than."""
    if _FAST["on"] and x.is_contiguous(memory_format=torch.channels_last):
        return F.linear(x.permute(0, 2, 3, 1), w.flatten(1), b).permute(0, 3, 1, 2)   # (N, Cout, H, W) NHWC
    return F.conv2d(x, w, b)


def reach(k: int, h: int, w: int) -> tuple[int, int]:
    """The central window of a k x k 'same'-padded kernel that can meet a pixel of an h x w map: a pixel is at
    most (h-1, w-1) away from any other, so the taps beyond 2h-1 / 2w-1 only ever meet the zero padding."""
    return min(k, 2 * h - 1), min(k, 2 * w - 1)


def crop_taps(filt: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The central kh x kw taps of a (C, 1, k, k) filter."""
    k = filt.shape[-1]
    return filt[:, :, (k - kh) // 2:(k + kh) // 2, (k - kw) // 2:(k + kw) // 2]


@functools.lru_cache(maxsize=256)
def _tap_index(h: int, w: int, kh: int, kw: int, stride: int) -> torch.Tensor:
    """(h*w * ho*wo,) flat indices: for input pixel p and output pixel q of a 'same'-padded kh x kw conv with
    this stride, the tap that joins them (kh*kw where none does)."""
    ph, pw = kh // 2, kw // 2
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    pr, pc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    qr, qc = torch.meshgrid(torch.arange(ho), torch.arange(wo), indexing="ij")
    a = pr.reshape(-1, 1) - stride * qr.reshape(1, -1) + ph                     # (HW, HoWo) tap row
    b = pc.reshape(-1, 1) - stride * qc.reshape(1, -1) + pw                     # (HW, HoWo) tap column
    inside = (a >= 0) & (a < kh) & (b >= 0) & (b < kw)
    return torch.where(inside, a * kw + b, kh * kw).reshape(-1)


def filter_grad_by_matmul(x: torch.Tensor, g: torch.Tensor, kh: int, kw: int, stride: int) -> torch.Tensor:
    """The filter gradient of a depthwise conv as one batched matmul over channels: per channel the (HW, HoWo)
    products of every input pixel with every output gradient, summed into the tap that joins them."""
    n, c, h, w = x.shape
    xs = x.permute(1, 0, 2, 3).reshape(c, n, h * w).contiguous()                # (C, N, HW)
    gs = g.permute(1, 0, 2, 3).reshape(c, n, -1).contiguous()                   # (C, N, HoWo)
    pairs = torch.bmm(xs.transpose(1, 2), gs)                                   # (C, HW, HoWo)
    taps = pairs.new_zeros(c, kh * kw + 1).index_add_(1, _tap_index(h, w, kh, kw, stride), pairs.reshape(c, -1))
    return taps[:, :-1].reshape(c, 1, kh, kw)


def matmul_filter_grad_pays(h: int, w: int, kh: int, kw: int) -> bool:
    """oneDNN's depthwise filter gradient is fast for 3x3 kernels and slow for 5x5 / 7x7 ones (and on 2x2 maps);
    the matmul does HW / (kh*kw) times the work of a direct one, so it pays on maps of up to ~1.5 kernels."""
    return h * w <= 1.5 * kh * kw


class _Depthwise(torch.autograd.Function):
    """Depthwise conv, 'same' padding: oneDNN's forward; in the backward the input gradient is the conv with the
    flipped filter (stride 1) and the filter gradient `filter_grad_by_matmul` where that pays."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, filt: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, filt)
        ctx.stride = stride
        kh, kw = filt.shape[-2:]
        return F.conv2d(x, filt, None, stride, (kh // 2, kw // 2), 1, x.size(1))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, filt = ctx.saved_tensors
        s, (kh, kw), c = ctx.stride, filt.shape[-2:], x.size(1)
        pad = [kh // 2, kw // 2]
        matmul = matmul_filter_grad_pays(x.shape[-2], x.shape[-1], kh, kw)
        gx = gf = None
        if ctx.needs_input_grad[0] and s == 1:
            gx = F.conv2d(g, filt.flip(-2, -1), None, 1, pad, 1, c)
        if ctx.needs_input_grad[1] and matmul:
            gf = filter_grad_by_matmul(x, g, kh, kw, s)
        mask = [ctx.needs_input_grad[0] and gx is None, ctx.needs_input_grad[1] and gf is None, False]
        if any(mask):
            dx, df, _ = torch.ops.aten.convolution_backward(g, x, filt, None, [s, s], pad, [1, 1], False, [0, 0],
                                                            c, mask)
            gx, gf = (dx if mask[0] else gx), (df if mask[1] else gf)
        return gx, gf, None


def depthwise(x: torch.Tensor, filt: torch.Tensor, stride: int) -> torch.Tensor:
    """Depthwise conv with 'same' padding. On a map smaller than the kernel only the taps within `reach` are
    computed (the same output): oneDNN pays for every tap, and a 7x7 kernel on a 2x2 map spends 40 of its 49
    on padding. The backward is `_Depthwise`'s."""
    k = filt.shape[-1]
    if not _FAST["on"]:
        return F.conv2d(x, filt, None, stride, k // 2, 1, x.size(1))
    kh, kw = reach(k, x.shape[-2], x.shape[-1])
    if (kh, kw) != (k, k):
        filt = crop_taps(filt, kh, kw)                                              # (C, 1, kh, kw)
    return _Depthwise.apply(x, filt, stride)


@torch.no_grad()
def crop_depthwise_convs(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """Crop each depthwise conv of a static network (in place) to the taps within `reach` of the map it sees
    on `example`: the same outputs at that input resolution and at any smaller one (its maps are no larger),
    not at a larger one. For inference modules that only ever run up to one resolution."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
             and m.kernel_size[0] == m.kernel_size[1] > 1 and m.padding == (m.kernel_size[0] // 2,) * 2
             and m.dilation == (1, 1)]
    maps: dict[nn.Conv2d, tuple[int, int]] = {}

    def record(m, args):
        maps.setdefault(m, tuple(args[0].shape[-2:]))        # returns None: the input passes unchanged

    hooks = [m.register_forward_pre_hook(record) for m in convs]
    try:
        net(example)
    finally:
        for h in hooks:
            h.remove()
    for m, (h, w) in maps.items():
        k = m.kernel_size[0]
        kh, kw = reach(k, h, w)
        if (kh, kw) != (k, k):
            m.weight = nn.Parameter(crop_taps(m.weight, kh, kw).clone(), requires_grad=m.weight.requires_grad)
            m.kernel_size, m.padding = (kh, kw), (kh // 2, kw // 2)
    return net


# ----------------------------------------------------------------------------------------------------
# Fixed (static) layers, shared with the extracted sub-network
# ----------------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """conv -> bn -> act, keys `conv.weight`, `bn.*` (the OFA ConvLayer, ops order weight_bn_act)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, use_bn: bool = True,
                 act: str | None = None, bias: bool = False):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.use_bn, self.act_name = cin, cout, k, stride, use_bn, act
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)
        if use_bn:
            self.bn = nn.BatchNorm2d(cout)
        self.act = build_act(act)

    def forward(self, x):
        x = self.conv(x)
        if self.use_bn:
            x = self.bn(x)
        return self.act(x)

    def config(self) -> dict:
        return {"name": "ConvLayer", "kernel_size": self.k, "stride": self.stride, "dilation": 1, "groups": 1,
                "bias": self.conv.bias is not None, "has_shuffle": False, "use_se": False,
                "in_channels": self.cin, "out_channels": self.cout, "use_bn": self.use_bn,
                "act_func": self.act_name, "dropout_rate": 0, "ops_order": "weight_bn_act"}


class LinearLayer(nn.Module):
    """dropout -> linear, key `linear.{weight,bias}`."""

    def __init__(self, fin: int, fout: int, dropout: float = 0.0):
        super().__init__()
        self.fin, self.fout, self.dropout_rate = fin, fout, dropout
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(fin, fout)

    def forward(self, x):
        return self.linear(self.dropout(x))

    def config(self) -> dict:
        return {"name": "LinearLayer", "in_features": self.fin, "out_features": self.fout, "bias": True,
                "use_bn": False, "act_func": None, "dropout_rate": self.dropout_rate, "ops_order": "weight_bn_act"}


class SEModule(nn.Module):
    """Squeeze-excite: avgpool -> reduce (1x1, bias) -> relu -> expand (1x1, bias) -> h_sigmoid -> scale."""

    def __init__(self, channels: int):
        super().__init__()
        mid = make_divisible(channels // 4)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, mid, 1, bias=True)), ("relu", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(mid, channels, 1, bias=True)), ("h_sigmoid", nn.Hardsigmoid(inplace=True)),
        ]))

    def forward(self, x):
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConvLayer(nn.Module):
    """Static inverted residual conv: [1x1 expand] -> kxk depthwise [-> SE] -> 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand_ratio: float, mid: int | None,
                 act: str, use_se: bool):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.expand_ratio = cin, cout, k, stride, expand_ratio
        self.act_name, self.use_se = act, use_se
        mid = mid if mid is not None else make_divisible(round(cin * expand_ratio))
        self.mid = mid
        if expand_ratio != 1:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cin, mid, 1, bias=False)), ("bn", nn.BatchNorm2d(mid)), ("act", build_act(act))]))
        else:
            self.inverted_bottleneck = None
        dw = [("conv", nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)),
              ("bn", nn.BatchNorm2d(mid)), ("act", build_act(act))]
        if use_se:
            dw.append(("se", SEModule(mid)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(mid, cout, 1, bias=False)), ("bn", nn.BatchNorm2d(cout))]))

    def forward(self, x):
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))

    def config(self) -> dict:
        return {"name": "MBConvLayer", "in_channels": self.cin, "out_channels": self.cout, "kernel_size": self.k,
                "stride": self.stride, "expand_ratio": self.expand_ratio, "mid_channels": self.mid,
                "act_func": self.act_name, "use_se": self.use_se, "groups": None}


class ResidualBlock(nn.Module):
    """`conv` plus an optional identity shortcut (the OFA MobileInvertedResidualBlock)."""

    def __init__(self, conv: nn.Module, shortcut: bool):
        super().__init__()
        self.conv = conv
        self.has_shortcut = shortcut

    def forward(self, x):
        return x + self.conv(x) if self.has_shortcut else self.conv(x)

    def config(self) -> dict:
        c = self.conv.cin
        sc = ({"name": "IdentityLayer", "in_channels": [c], "out_channels": [c], "use_bn": False, "act_func": None,
               "dropout_rate": 0, "ops_order": "weight_bn_act"} if self.has_shortcut else None)
        return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": self.conv.config(), "shortcut": sc}


# ----------------------------------------------------------------------------------------------------
# Dynamic layers: hold the largest weights, run any active size
# ----------------------------------------------------------------------------------------------------
class DynamicConv2d(nn.Module):
    """1x1 conv over the first `in` input and first `out` output channels. Key: `conv.weight`."""

    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)

    def active_weight(self, cin: int, cout: int) -> torch.Tensor:
        return self.conv.weight[:cout, :cin]

    def forward(self, x, cout: int):
        return pointwise(x, self.active_weight(x.size(1), cout))


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv storing a 7x7 kernel; smaller kernels come through the learned transform matrices.

    Keys: `conv.weight` (C, 1, K, K) and `{K}to{k}_matrix` (k^2, k^2) for each step down the kernel list.
    """

    def __init__(self, max_channels: int, ks_list: tuple[int, ...]):
        super().__init__()
        self.ks_set = sorted(set(ks_list))
        kmax = self.ks_set[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, kmax, 1, kmax // 2, groups=max_channels, bias=False)
        for big, small in zip(self.ks_set[:0:-1], self.ks_set[-2::-1]):
            self.register_parameter(f"{big}to{small}_matrix", nn.Parameter(torch.eye(small * small)))

    def active_filter(self, channels: int, k: int) -> torch.Tensor:
        w = self.conv.weight[:channels]                               # (C, 1, K, K)
        for big, small in zip(self.ks_set[:0:-1], self.ks_set[-2::-1]):
            if big <= k:
                break
            s, e = sub_filter_start_end(big, small)
            crop = w[:, :, s:e, s:e].reshape(channels, small * small)  # (C, k^2)
            w = F.linear(crop, getattr(self, f"{big}to{small}_matrix")).view(channels, 1, small, small)
        return w

    def forward(self, x, k: int, stride: int):
        return depthwise(x, self.active_filter(x.size(1), k), stride)


class DynamicBatchNorm2d(nn.Module):
    """BN over the first channels, updating the shared running statistics in place. Key: `bn.*`."""

    def __init__(self, max_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x):
        bn, c = self.bn, x.size(1)
        if c == bn.num_features:
            return bn(x)
        momentum = bn.momentum
        if self.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        use_batch = self.training or not bn.track_running_stats
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            use_batch, momentum or 0.0, bn.eps)


class DynamicSE(nn.Module):
    """SE with the published keys `fc.reduce.{weight,bias}`, `fc.expand.{weight,bias}`; sliced by channels."""

    def __init__(self, max_channels: int):
        super().__init__()
        mid = make_divisible(max_channels // 4)
        self.fc = nn.Module()
        self.fc.reduce = nn.Conv2d(max_channels, mid, 1, bias=True)
        self.fc.expand = nn.Conv2d(mid, max_channels, 1, bias=True)

    def active_params(self, c: int) -> tuple[torch.Tensor, ...]:
        m = make_divisible(c // 4)
        return (self.fc.reduce.weight[:m, :c], self.fc.reduce.bias[:m],
                self.fc.expand.weight[:c, :m], self.fc.expand.bias[:c])

    def forward(self, x):
        rw, rb, ew, eb = self.active_params(x.size(1))
        y = F.relu(F.linear(x.mean((2, 3)), rw.flatten(1), rb))                  # (N, mid)
        return x * F.hardsigmoid(F.linear(y, ew.flatten(1), eb))[:, :, None, None]


class DynamicMBConv(nn.Module):
    """Elastic kernel + elastic expand ratio inverted-residual conv (the OFA DynamicMBConvLayer)."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, use_se: bool, spec: SupernetSpec):
        super().__init__()
        self.cin, self.cout, self.stride, self.act_name, self.use_se = cin, cout, stride, act, use_se
        self.spec = spec
        max_mid = spec.mid_channels(cin, max(spec.expand_list))
        self.inverted_bottleneck = nn.Module()
        self.inverted_bottleneck.conv = DynamicConv2d(cin, max_mid)
        self.inverted_bottleneck.bn = DynamicBatchNorm2d(max_mid)
        self.depth_conv = nn.Module()
        self.depth_conv.conv = DynamicSeparableConv2d(max_mid, spec.ks_list)
        self.depth_conv.bn = DynamicBatchNorm2d(max_mid)
        if use_se:
            self.depth_conv.se = DynamicSE(max_mid)
        self.point_linear = nn.Module()
        self.point_linear.conv = DynamicConv2d(max_mid, cout)
        self.point_linear.bn = DynamicBatchNorm2d(cout)
        self.act = build_act(act)
        self.active_ks = max(spec.ks_list)
        self.active_e = max(spec.expand_list)

    def forward(self, x):
        mid = self.spec.mid_channels(self.cin, self.active_e)
        x = self.act(self.inverted_bottleneck.bn(self.inverted_bottleneck.conv(x, mid)))  # (N, mid, H, W)
        x = self.act(self.depth_conv.bn(self.depth_conv.conv(x, self.active_ks, self.stride)))  # (N, mid, H/s, W/s)
        if self.use_se:
            x = self.depth_conv.se(x)
        return self.point_linear.bn(self.point_linear.conv(x, self.cout))  # (N, cout, H/s, W/s)


# ----------------------------------------------------------------------------------------------------
# The supernet
# ----------------------------------------------------------------------------------------------------
class OFAMobileNetV3(nn.Module):
    """Weight-sharing supernet. `set_active(config)` selects a sub-network; `forward` runs it."""

    def __init__(self, spec: SupernetSpec):
        super().__init__()
        self.spec = spec
        wd = spec.widths
        self.first_conv = ConvLayer(3, wd["stem"], 3, spec.stem_stride, act="h_swish")
        blocks = [ResidualBlock(MBConvLayer(wd["stem"], wd["first_block"], 3, 1, 1, wd["stem"], "relu", False),
                                shortcut=wd["stem"] == wd["first_block"])]
        for cin, cout, stride, act, se in spec.block_in_out():
            blocks.append(ResidualBlock(DynamicMBConv(cin, cout, stride, act, se, spec),
                                        shortcut=stride == 1 and cin == cout))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = ConvLayer(wd["stages"][-1], wd["final_expand"], 1, act="h_swish")
        self.feature_mix_layer = ConvLayer(wd["final_expand"], wd["last"], 1, use_bn=False, act="h_swish")
        self.classifier = LinearLayer(wd["last"], spec.n_classes, spec.dropout)
        self.active_depths = [spec.max_depth] * spec.n_stages
        self.set_bn_param(spec.bn_momentum, spec.bn_eps)

    def set_bn_param(self, momentum: float, eps: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = momentum, eps

    # -- selecting a sub-network ---------------------------------------------------------------------
    def set_active(self, cfg: SubnetConfig) -> None:
        if cfg.spec.name != self.spec.name and cfg.spec.n_blocks != self.spec.n_blocks:
            raise ValueError(f"config is for {cfg.spec.name}, supernet is {self.spec.name}")
        for i, block in enumerate(self.blocks[1:]):
            block.conv.active_ks, block.conv.active_e = cfg.ks[i], cfg.e[i]
        self.active_depths = list(cfg.d)

    def set_max(self) -> None:
        self.set_active(self.spec.max_config())

    def stage_blocks(self) -> list[list[int]]:
        D = self.spec.max_depth
        return [[1 + s * D + j for j in range(D)] for s in range(self.spec.n_stages)]

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x):
        x = self.blocks[0](self.first_conv(x))                           # (N, C0, r/2, r/2)
        for s, idx in enumerate(self.stage_blocks()):
            for i in idx[:self.active_depths[s]]:
                x = self.blocks[i](x)
        fe, mix = self.final_expand_layer, self.feature_mix_layer
        x = fe.act(fe.bn(pointwise(x, fe.conv.weight)))                  # (N, C_fe, f, f)
        x = mix.act(F.linear(x.mean((2, 3)), mix.conv.weight.flatten(1), mix.conv.bias))  # (N, C_last)
        return self.classifier(x)                                         # (N, n_classes)

    # -- channel sorting (before the expand-ratio phases) --------------------------------------------
    @torch.no_grad()
    def sort_channels(self, expand_ratio_stage: int = 0) -> None:
        """Reorder each elastic block's middle channels by importance (L1 of the projection's input slice), as
        the published `re_organize_middle_weights(expand_ratio_stage)`: stage 0 sorts all of them; stage s
        sorts within each of the s+1 widest expand slices only, so the channels a smaller expand ratio already
        keeps stay inside its slice (stage 1, before the second expand phase: within the e=4 slice)."""
        for block in self.blocks[1:]:
            conv: DynamicMBConv = block.conv
            pw = conv.point_linear.conv.conv.weight                      # (cout, mid, 1, 1)
            importance = pw.abs().sum(dim=(0, 2, 3))                      # (mid,)
            order = torch.argsort(importance, descending=True, stable=True)
            if expand_ratio_stage > 0:
                # slice of each channel: 0 inside the narrowest kept width, k inside the k-th wider ring
                widths = sorted({self.spec.mid_channels(conv.cin, e) for e in self.spec.expand_list}, reverse=True)
                ring = torch.zeros_like(order)
                for left in widths[1:expand_ratio_stage + 1]:
                    ring += (torch.arange(len(ring)) >= left).long()
                order = order[torch.argsort(ring[order], stable=True)]   # by ring, then by importance
            conv.point_linear.conv.conv.weight.copy_(pw[:, order])
            for t in (conv.depth_conv.conv.conv.weight, conv.inverted_bottleneck.conv.conv.weight):
                t.copy_(t[order])
            for bn in (conv.inverted_bottleneck.bn.bn, conv.depth_conv.bn.bn):
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t.copy_(t[order])
            if conv.use_se:
                se = conv.depth_conv.se.fc
                se.reduce.weight.copy_(se.reduce.weight[:, order])
                se.expand.weight.copy_(se.expand.weight[order])
                se.expand.bias.copy_(se.expand.bias[order])
                # SE's own middle channels: sort by importance of the expand input slice
                se_order = torch.argsort(se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
                se.expand.weight.copy_(se.expand.weight[:, se_order])
                se.reduce.weight.copy_(se.reduce.weight[se_order])
                se.reduce.bias.copy_(se.reduce.bias[se_order])


def build_supernet(spec: SupernetSpec, seed: int | None = 0) -> OFAMobileNetV3:
    """A freshly initialised supernet (He init for convs, zero-mean small init for the classifier)."""
    if seed is not None:
        g = torch.random.fork_rng()
        g.__enter__()
        torch.manual_seed(seed)
    try:
        net = OFAMobileNetV3(spec)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        for m in net.modules():   # the kernel transforms start as identity
            if isinstance(m, DynamicSeparableConv2d):
                for n, p in m.named_parameters(recurse=False):
                    nn.init.eye_(p)
    finally:
        if seed is not None:
            g.__exit__(None, None, None)
    return net
