"""Supernet geometry, the registry of named supernets, and the sub-network config value type.

Everything vectorized in ofa_core works on *encoded* configs: an int32 array of shape (N, 2*B + S + 1)
laid out as ``[ks_0..ks_{B-1}, e_0..e_{B-1}, d_0..d_{S-1}, r]`` (raw values, not indices), where B is the
number of elastic blocks (20 for the published space) and S the number of stages (5).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Published OFA rounding: nearest multiple of `divisor`, never below 90% of `v`."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConfigError(ValueError):
    """A sub-network config (or encoded batch) that does not fit the supernet. `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ----------------------------------------------------------------------------------------------------
# Supernet geometry
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SupernetSpec:
    """Geometry and elastic space of one OFA MobileNetV3 supernet (published layout, reference §1)."""

    name: str
    width_mult: float = 1.0
    n_classes: int = 1000
    base_widths: tuple[int, ...] = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    stem_stride: int = 2
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    stage_acts: tuple[str, ...] = ("relu", "relu", "h_swish", "h_swish", "h_swish")
    stage_se: tuple[bool, ...] = (False, True, False, True, True)
    ks_list: tuple[int, ...] = (3, 5, 7)
    expand_list: tuple[int, ...] = (3, 4, 6)
    depth_list: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))   # the grid trained on and searched by default
    input_range: tuple[int, int] = (32, 512)   # every input size a sub-network accepts (inclusive; bounded)
    dropout: float = 0.1
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    version: str = "1"
    weights_path: str | None = None       # a local file; never downloaded
    weights_env: str | None = None        # environment variable that may hold the weights path
    predictor_path: str | None = None
    description: str = ""

    # -- derived geometry ---------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stage_strides)

    @property
    def max_depth(self) -> int:
        return max(self.depth_list)

    @property
    def n_blocks(self) -> int:
        """Number of elastic blocks (excludes the fixed block 0)."""
        return self.n_stages * self.max_depth

    @property
    def widths(self) -> dict[str, Any]:
        w = self.width_mult
        stem = make_divisible(self.base_widths[0] * w)
        first_block = make_divisible(self.base_widths[1] * w)
        stages = [make_divisible(b * w) for b in self.base_widths[2:-2]]
        final_expand = make_divisible(self.base_widths[-2] * w)
        last = make_divisible(self.base_widths[-1] * w) if w > 1.0 else self.base_widths[-1]
        return {"stem": stem, "first_block": first_block, "stages": stages,
                "final_expand": final_expand, "last": last}

    def block_in_out(self) -> list[tuple[int, int, int, str, bool]]:
        """(in_channels, out_channels, stride, act, use_se) of elastic blocks 1..B, in order."""
        wd = self.widths
        out, cin = [], wd["first_block"]
        for s, cout in enumerate(wd["stages"]):
            for j in range(self.max_depth):
                out.append((cin, cout, self.stage_strides[s] if j == 0 else 1, self.stage_acts[s], self.stage_se[s]))
                cin = cout
        return out

    def mid_channels(self, in_channels: int, expand: int | float) -> int:
        return make_divisible(round(in_channels * expand))

    def feature_sizes(self, r: int) -> list[int]:
        """Input feature size of each elastic block (full depth) at resolution r, then the final size."""
        f = (r - 1) // self.stem_stride + 1  # == (r + 1) // 2 for stride 2
        sizes = []
        for s in range(self.n_stages):
            for j in range(self.max_depth):
                sizes.append(f)
                if j == 0:
                    f = int((f - 1) / self.stage_strides[s] + 1)
        sizes.append(f)
        return sizes

    def accepts_resolution(self, r: Any) -> bool:
        """Whether a sub-network runs at input size r: any integer in `input_range`, not only the trained grid
        (the published specialized w1.2 nets use r = 220, 236, 260)."""
        return (not isinstance(r, bool) and isinstance(r, (int, np.integer))
                and self.input_range[0] <= int(r) <= self.input_range[1])

    def resolution_error(self, r: Any) -> str:
        lo, hi = self.input_range
        return (f"{r} is not an input size {self.name} runs: any integer from {lo} to {hi} "
                f"(trained on {list(self.resolutions)})")

    @property
    def enc_width(self) -> int:
        return 2 * self.n_blocks + self.n_stages + 1

    def resolve_weights(self) -> str | None:
        """The weights file to load: the environment variable wins over the registered path."""
        if self.weights_env and os.environ.get(self.weights_env):
            return os.environ[self.weights_env]
        return self.weights_path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "width_mult": self.width_mult,
                "n_classes": self.n_classes, "ks_list": list(self.ks_list), "expand_list": list(self.expand_list),
                "depth_list": list(self.depth_list), "resolutions": list(self.resolutions),
                "input_range": list(self.input_range),
                "n_blocks": self.n_blocks, "n_stages": self.n_stages, "description": self.description}

    # -- configs ------------------------------------------------------------------------------------
    def max_config(self, r: int | None = None) -> "SubnetConfig":
        B, S = self.n_blocks, self.n_stages
        return SubnetConfig.create(self, [max(self.ks_list)] * B, [max(self.expand_list)] * B,
                                   [self.max_depth] * S, r if r is not None else max(self.resolutions))

    def min_config(self, r: int | None = None) -> "SubnetConfig":
        B, S = self.n_blocks, self.n_stages
        return SubnetConfig.create(self, [min(self.ks_list)] * B, [min(self.expand_list)] * B,
                                   [min(self.depth_list)] * S, r if r is not None else min(self.resolutions))

    def sample_encoded(self, n: int, rng: np.random.Generator, resolutions: Sequence[int] | None = None) -> np.ndarray:
        """n uniformly random configs, encoded (N, enc_width) int32, canonicalised."""
        B, S = self.n_blocks, self.n_stages
        res = np.asarray(resolutions if resolutions is not None else self.resolutions)
        enc = np.empty((n, self.enc_width), dtype=np.int32)
        enc[:, :B] = rng.choice(self.ks_list, size=(n, B))
        enc[:, B:2 * B] = rng.choice(self.expand_list, size=(n, B))
        enc[:, 2 * B:2 * B + S] = rng.choice(self.depth_list, size=(n, S))
        enc[:, -1] = rng.choice(res, size=n)
        return canonicalize_encoded(self, enc)

    def sample_stratified_encoded(self, n: int, rng: np.random.Generator,
                                  resolutions: Sequence[int] | None = None, spread: float = 0.35) -> np.ndarray:
        """n configs spread evenly over the space's size range, encoded and canonicalised. Uniform genes put
        almost every config near the middle (the mean of 20 kernel sizes barely varies); here each config draws
        a level in [0, 1] for kernel size, expand ratio and depth (Latin-hypercube strata, so the n levels cover
        the range evenly), and each gene picks choice j of m with probability ~ exp(-(j/(m-1) - level)^2 /
        (2 spread^2)). Resolutions are balanced (each appears n/len times, in random order)."""
        B, S = self.n_blocks, self.n_stages
        res = np.asarray(resolutions if resolutions is not None else self.resolutions)
        levels = (np.stack([rng.permutation(n) for _ in range(3)], 1) + rng.random((n, 3))) / n   # (n, 3)

        def genes(choices, level, width):                            # (n,) level -> (n, width) values
            m = len(choices)
            logit = -((np.arange(m)[None, :] / max(1, m - 1) - level[:, None]) ** 2) / (2 * spread ** 2)
            prob = np.exp(logit - logit.max(1, keepdims=True))
            cum = np.cumsum(prob / prob.sum(1, keepdims=True), 1)  # (n, m)
            u = rng.random((len(level), width, 1))
            return np.asarray(choices)[(u > cum[:, None, :-1]).sum(-1)]

        enc = np.empty((n, self.enc_width), dtype=np.int32)
        enc[:, :B] = genes(sorted(self.ks_list), levels[:, 0], B)
        enc[:, B:2 * B] = genes(sorted(self.expand_list), levels[:, 1], B)
        enc[:, 2 * B:2 * B + S] = genes(sorted(self.depth_list), levels[:, 2], S)
        enc[:, -1] = rng.permutation(np.resize(res, n))
        return canonicalize_encoded(self, enc)

    def sample(self, rng: np.random.Generator, resolutions: Sequence[int] | None = None) -> "SubnetConfig":
        return SubnetConfig.from_encoded(self, self.sample_encoded(1, rng, resolutions)[0])


def active_mask(spec: SupernetSpec, depths: np.ndarray) -> np.ndarray:
    """(N, S) depths -> (N, B) bool: which elastic blocks run."""
    depths = np.asarray(depths)
    pos = np.tile(np.arange(spec.max_depth), spec.n_stages)          # (B,) position inside the stage
    stage = np.repeat(np.arange(spec.n_stages), spec.max_depth)      # (B,)
    return pos[None, :] < depths[:, stage]


def canonicalize_encoded(spec: SupernetSpec, enc: np.ndarray) -> np.ndarray:
    """Set ks/e of blocks skipped by depth to the smallest values, so equal sub-networks encode equally."""
    B, S = spec.n_blocks, spec.n_stages
    enc = np.array(enc, dtype=np.int32, copy=True)
    mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
    enc[:, :B] = np.where(mask, enc[:, :B], min(spec.ks_list))
    enc[:, B:2 * B] = np.where(mask, enc[:, B:2 * B], min(spec.expand_list))
    return enc


def as_encoded_batch(spec: SupernetSpec, enc: np.ndarray, error: type[Exception] = ValueError) -> np.ndarray:
    """One encoded config or a batch -> (N, enc_width) array; raises `error` naming the expected shape."""
    enc = np.asarray(enc)
    if enc.ndim == 1:
        enc = enc[None]
    if enc.ndim != 2 or enc.shape[1] != spec.enc_width:
        raise error(f"expected encoded configs of shape (N, {spec.enc_width}), got {enc.shape}")
    return enc


def validate_encoded(spec: SupernetSpec, enc: np.ndarray) -> np.ndarray:
    enc = np.asarray(enc)
    if enc.ndim != 2 or enc.shape[1] != spec.enc_width:
        raise ConfigError("encoded", f"expected shape (N, {spec.enc_width}), got {tuple(enc.shape)}")
    B, S = spec.n_blocks, spec.n_stages
    for fld, sl, allowed in (("ks", slice(0, B), spec.ks_list), ("e", slice(B, 2 * B), spec.expand_list),
                             ("d", slice(2 * B, 2 * B + S), spec.depth_list),
                             ("r", slice(2 * B + S, 2 * B + S + 1), None)):
        if allowed is None:
            lo, hi = spec.input_range
            bad = (enc[:, sl] < lo) | (enc[:, sl] > hi)
        else:
            bad = ~np.isin(enc[:, sl], allowed)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            what = f"allowed {list(allowed)}" if allowed is not None else f"allowed {spec.input_range[0]}..{spec.input_range[1]}"
            raise ConfigError(fld, f"row {row} index {col} has {enc[row, sl][col]}, {what}")
    return enc.astype(np.int32, copy=False)


# ----------------------------------------------------------------------------------------------------
# Sub-network config value type
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubnetConfig:
    """A validated, canonical sub-network `{ks[B], e[B], d[S], r}` of one supernet geometry."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    spec: SupernetSpec = field(repr=False, compare=False, hash=False)

    @classmethod
    def create(cls, spec: SupernetSpec, ks: Iterable[int], e: Iterable[int], d: Iterable[int], r: int,
               canonical: bool = True) -> "SubnetConfig":
        ks, e, d = _int_tuple("ks", ks), _int_tuple("e", e), _int_tuple("d", d)
        for fld, vals, n, allowed in (("ks", ks, spec.n_blocks, spec.ks_list), ("e", e, spec.n_blocks, spec.expand_list),
                                      ("d", d, spec.n_stages, spec.depth_list)):
            if len(vals) != n:
                raise ConfigError(fld, f"expected {n} values, got {len(vals)}")
            for i, v in enumerate(vals):
                if v not in allowed:
                    raise ConfigError(f"{fld}[{i}]", f"{v} is not allowed; allowed values are {list(allowed)}")
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ConfigError("r", f"must be an integer, got {r!r}")
        if not spec.accepts_resolution(r):
            raise ConfigError("r", spec.resolution_error(r))
        cfg = cls(ks, e, d, int(r), spec)
        if canonical:
            cfg = cls.from_encoded(spec, canonicalize_encoded(spec, cfg.encode()[None])[0], _validated=True)
        return cfg

    @classmethod
    def from_dict(cls, spec: SupernetSpec, data: Mapping[str, Any]) -> "SubnetConfig":
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"expected an object with ks, e, d, r; got {type(data).__name__}")
        missing = [k for k in ("ks", "e", "d", "r") if k not in data]
        if missing:
            raise ConfigError(missing[0], "missing")
        extra = sorted(set(data) - {"ks", "e", "d", "r"})
        if extra:
            raise ConfigError(extra[0], "unknown field; a config has only ks, e, d, r")
        return cls.create(spec, data["ks"], data["e"], data["d"], data["r"])

    @classmethod
    def from_json(cls, spec: SupernetSpec, text: str) -> "SubnetConfig":
        return cls.from_dict(spec, json.loads(text))

    @classmethod
    def from_encoded(cls, spec: SupernetSpec, row: np.ndarray, _validated: bool = False) -> "SubnetConfig":
        row = np.asarray(row)
        if not _validated:
            validate_encoded(spec, row[None])
            row = canonicalize_encoded(spec, row[None])[0]
        B, S = spec.n_blocks, spec.n_stages
        return cls(tuple(int(v) for v in row[:B]), tuple(int(v) for v in row[B:2 * B]),
                   tuple(int(v) for v in row[2 * B:2 * B + S]), int(row[-1]), spec)

    def encode(self) -> np.ndarray:
        return np.asarray([*self.ks, *self.e, *self.d, self.r], dtype=np.int32)

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def content_id(self) -> str:
        """Stable id of this sub-network of this supernet geometry (same sub-network -> same id)."""
        h = hashlib.sha256(f"{self.spec.name}\n{self.to_json()}".encode())
        return h.hexdigest()[:24]

    def active_blocks(self) -> list[int]:
        """Supernet block indices (1-based, as in `blocks.N`) that run in this config."""
        out = []
        for s, depth in enumerate(self.d):
            out.extend(1 + s * self.spec.max_depth + j for j in range(depth))
        return out


def encode_batch(configs: Sequence[SubnetConfig]) -> np.ndarray:
    return np.stack([c.encode() for c in configs]).astype(np.int32)


def _int_tuple(name: str, vals: Iterable[int]) -> tuple[int, ...]:
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
        raise ConfigError(name, f"expected a list of integers, got {type(vals).__name__}")
    out = []
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name}[{i}]", f"expected an integer, got {v!r}")
        out.append(int(v))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------
# Registry of named supernets
# ----------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, SupernetSpec] = {}


def register(spec: SupernetSpec) -> SupernetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> SupernetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown supernet {name!r}; registered: {sorted(_REGISTRY)}") from None


def list_specs() -> list[str]:
    return sorted(_REGISTRY)


_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

register(SupernetSpec(
    name="ofa_mbv3_d234_e346_k357_w1.0", width_mult=1.0,
    weights_env="OFA_MBV3_W10_WEIGHTS",
    description="Published OFA MobileNetV3 space, ImageNet, width 1.0"))
register(SupernetSpec(
    name="ofa_mbv3_d234_e346_k357_w1.2", width_mult=1.2, resolutions=(160, 176, 192, 208, 224),
    weights_env="OFA_MBV3_W12_WEIGHTS", predictor_path=None,
    description="Published OFA MobileNetV3 space, ImageNet, width 1.2 (the Note10 tables and published predictor)"))
register(SupernetSpec(
    name="ofa_mbv3_cifar10", n_classes=10,
    width_mult=0.5, stem_stride=2, stage_strides=(1, 2, 2, 1, 1), resolutions=(24, 28, 32), input_range=(8, 128),
    dropout=0.1,
    weights_path=os.path.join(_ASSETS, "ofa_mbv3_cifar10.safetensors"), weights_env="OFA_CIFAR10_WEIGHTS",
    predictor_path=os.path.join(_ASSETS, "ofa_mbv3_cifar10_predictor.safetensors"),
    description="The project's default: OFA MobileNetV3 space for 32x32 CIFAR-10, trained by progressive shrinking"))
register(SupernetSpec(
    name="ofa_mbv3_cifar10_s1", n_classes=10,
    width_mult=0.5, stem_stride=1, stage_strides=(1, 2, 2, 1, 1), resolutions=(24, 28, 32), input_range=(8, 128),
    dropout=0.1, weights_env="OFA_CIFAR10_S1_WEIGHTS",
    description="The default's elastic space with stem stride 1 (32x32 first stage, 8x8 final maps; ~3.8x the "
                "MACs): the run for the 90% / 82% targets, trained across sessions (runs/ofa_mbv3_cifar10_s1)"))
