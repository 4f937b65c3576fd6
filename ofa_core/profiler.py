"""Host latency profiler: measure a complete `LatencyTable` on this machine for any registered supernet.

Every distinct operator key at every resolution is built as a tiny static module from the `mbv3.py` pieces
(ConvLayer, MBConvLayer in a ResidualBlock, average pooling, LinearLayer), warmed up and timed (median of
repeated runs, batch size 1, fixed thread count). Progress is written to a JSON file after each operator, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .latency import (LatencyEntry, LatencyTable, parse_operator_key,
                      required_operator_keys)
from .extract import extract
from .mbv3 import ConvLayer, LinearLayer, MBConvLayer, ResidualBlock
from .spec import SubnetConfig, SupernetSpec, get_spec


def host_environment(threads: int, batch_size: int = 1) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": cpu or platform.machine(), "machine": platform.machine(), "threads": int(threads),
            "torch_version": torch.__version__, "batch_size": int(batch_size), "platform": platform.platform(),
            "python": platform.python_version(), "logical_cpus": os.cpu_count()}


class _GlobalPool(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class _Logits(nn.Module):
    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.layer = LinearLayer(fin, fout, 0.0)

    def forward(self, x):
        return self.layer(x.flatten(1))


def build_operator(spec: SupernetSpec, key: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A static module for one operator key, and the input shape (batch 1, NCHW or NC)."""
    p = parse_operator_key(key)
    op = p["op"]
    h, w, cin = p["input"]
    if op == "Conv":
        m = ConvLayer(cin, p["output"][2], 3, spec.stem_stride, act="h_swish")
    elif op == "expanded_conv":
        cout = p["output"][2]
        act = "h_swish" if p["hs"] else "relu"
        mid, k, s = p["expand"], p["kernel"], p["stride"]
        ratio = 1 if mid == cin else mid / cin       # block 0 has no inverted bottleneck (expand = in)
        m = ResidualBlock(MBConvLayer(cin, cout, k, s, ratio, mid, act, bool(p["se"])), shortcut=bool(p["idskip"]))
    elif op == "Conv_1":
        m = ConvLayer(cin, p["output"][2], 1, act="h_swish")
    elif op == "AvgPool2D":
        m = _GlobalPool()
    elif op == "Conv_2":
        m = ConvLayer(cin, p["output"][2], 1, use_bn=False, act="h_swish")
    elif op == "Logits":
        m = _Logits(cin, int(key.rsplit(":", 1)[1]))
    else:
        raise ValueError(f"unknown operator {op!r} in key {key}")
    return m.eval(), (1, cin, h, w)


@torch.no_grad()
def time_module(module: nn.Module, shape: Sequence[int], repeats: int = 50, warmup: int = 10,
                statistic: str = "median", flush_bytes: int = 0) -> tuple[float, float, int]:
    """(statistic ms, std ms, count) of `module(x)` for a fixed random input of `shape`.

    statistic: "median" (default), or "min" / "p25", which are steadier on a busy host (other processes only
    ever add time)."""
    x = torch.randn(*shape)
    for _ in range(warmup):
        module(x)
    # Inside a network an operator's weights and input are not cache-hot: evict them between runs (untimed)
    flush = torch.zeros(flush_bytes // 4) if flush_bytes > 0 else None
    ts = np.empty(repeats)
    for i in range(repeats):
        if flush is not None:
            flush.add_(1.0)
        t0 = time.perf_counter()
        module(x)
        ts[i] = (time.perf_counter() - t0) * 1e3
    return float(_STATS[statistic](ts)), float(ts.std()), int(repeats)


_STATS = {"median": np.median, "min": np.min, "p25": lambda t: np.percentile(t, 25)}


class _Threads:
    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        self.prev = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *a):
        torch.set_num_threads(self.prev)


def profile_table(spec: SupernetSpec | str, resolutions: Iterable[int] | None = None, *, repeats: int = 30,
                  warmup: int = 5, threads: int = 1, statistic: str = "median", flush_bytes: int = 8 << 20,
                  progress_path: str | os.PathLike | None = None,
                  progress: bool = True, keys_filter: Callable[[str], bool] | None = None) -> LatencyTable:
    """Measure every operator the supernet can use at each resolution; returns a `source="measured"` table.

    `progress_path`: JSON file holding the partial results; existing entries (same spec and environment
    threads) are kept and skipped, so an interrupted run resumes.
    
    `flush_bytes`: a buffer of this size is written before each timed run so that the operator's weights and
    input are not cache-hot, as they are not inside a whole network (0 disables; 8 MiB by default).
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    res = list(resolutions) if resolutions is not None else list(spec.resolutions)
    env = host_environment(threads, 1)
    env.update({"repeats": repeats, "warmup": warmup, "statistic": statistic})
    done: dict[str, dict[str, dict]] = {}
    if progress_path is not None and os.path.exists(progress_path):
        try:
            with open(progress_path) as f:
                prev = json.load(f)
            penv = prev.get("environment", {})
            if prev.get("spec") == spec.name and penv.get("threads") == threads and penv.get("statistic") == statistic:
                done = prev.get("tables", {})
        except (OSError, json.JSONDecodeError):
            done = {}
    todo = [(r, k) for r in res for k in required_operator_keys(spec, r)
            if k not in done.get(str(r), {}) and (keys_filter is None or keys_filter(k))]
    bar = None
    if progress:
        from tqdm import tqdm
        total = sum(len(required_operator_keys(spec, r)) for r in res)
        bar = tqdm(total=total, initial=total - len(todo), desc=f"profiling {spec.name}", unit="op")

    def save():
        if progress_path is None:
            return
        tmp = f"{progress_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"spec": spec.name, "environment": env, "tables": done}, f)
        os.replace(tmp, progress_path)

    try:
        with _Threads(threads):
            last_save = time.perf_counter()
            for r, key in todo:
                module, shape = build_operator(spec, key)
                mean, std, count = time_module(module, shape, repeats, warmup, statistic, flush_bytes)
                done.setdefault(str(r), {})[key] = {"mean": mean, "std": std, "count": count}
                if bar is not None:
                    bar.update(1)
                if time.perf_counter() - last_save > 2.0:
                    save()
                    last_save = time.perf_counter()
    finally:
        save()
        if bar is not None:
            bar.close()
    tables = {r: {k: LatencyEntry(**done[str(r)][k]) for k in required_operator_keys(spec, r)
                  if k in done.get(str(r), {})} for r in res}
    return LatencyTable(spec, tables, source="measured", environment=env, batch_size=1)


@torch.no_grad()
def measure_end_to_end(module: nn.Module, r: int, repeats: int = 30, warmup: int = 5,
                       threads: int | None = 1, statistic: str = "median") -> float:
    """Median (or `statistic`) ms of one batch-1 forward of `module` at resolution r."""
    module.eval()
    with _Threads(threads):
        return time_module(module, (1, 3, r, r), repeats, warmup, statistic)[0]


def subnet_module(supernet: nn.Module, cfg: SubnetConfig) -> nn.Module:
    """The extracted static network for cfg (what a device would run)."""
    return extract(supernet, cfg).eval()


def check_table(supernet: nn.Module, table: LatencyTable, n: int = 50, *, rng: np.random.Generator | int = 0,
                repeats: int = 20, warmup: int = 3, threads: int = 1, tolerance: float = 0.10,
                statistic: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Table-predicted vs measured end-to-end latency for n random sub-networks.

    Returns {"share_within": fraction with |pred/measured - 1| <= tolerance, "enc", "predicted", "measured",
    "ratio", "median_abs_rel_err"}.
    """
    spec = table.spec
    statistic = statistic or table.environment.get("statistic", "median")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    enc = spec.sample_encoded(n, rng, list(table.resolutions))
    pred = table.predict(enc)
    meas = np.empty(n)
    it = range(n)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="end-to-end check", unit="subnet")
    for i in it:
        cfg = SubnetConfig.from_encoded(spec, enc[i])
        meas[i] = measure_end_to_end(subnet_module(supernet, cfg), cfg.r, repeats, warmup, threads, statistic)
    ratio = pred / meas
    return {"share_within": float(np.mean(np.abs(ratio - 1) <= tolerance)), "tolerance": tolerance, "enc": enc,
            "predicted": pred, "measured": meas, "ratio": ratio,
            "median_abs_rel_err": float(np.median(np.abs(ratio - 1)))}
