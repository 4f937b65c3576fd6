"""Host latency profiler: measure a complete `LatencyTable` on this machine for any registered supernet.

Two ways to time an operator (batch size 1, fixed thread count, resumable through a JSON progress file):

- ``mode="network"`` (default): in context. For each resolution, a few sub-networks are built that together run
  every operator key at least `covers` times (block b takes (ks, e) choice (j + offset_b) mod 9 in network j, depths
  random). Each network runs whole, with a clock read between its layers, so every operator is timed with the
  cache state, allocator state and call overhead it has inside a real network. The networks run in interleaved
  rounds (each round runs every network of the resolution once), so a slow spell of a shared host is spread over
  all of them instead of biasing a few. An operator's entry is the median, over its occurrences, of its fastest
  time in that network, scaled so the network's operators add up to its fastest whole run ("min": noise on a
  shared host only ever adds time).
- ``mode="operator"``: each key as a tiny module on its own (ConvLayer, MBConvLayer in a ResidualBlock, pooling,
  LinearLayer), with an optional cache eviction between timed runs. Faster, but an operator timed alone runs hot.

`check_table` measures random sub-networks end to end the same way (interleaved rounds, same statistic).
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

from .extract import StaticMobileNetV3, extract
from .latency import (LatencyEntry, LatencyTable, block_operator_key, fixed_operator_keys, parse_operator_key,
                      required_operator_keys)
from .mbv3 import ConvLayer, LinearLayer, MBConvLayer, ResidualBlock, build_supernet
from .spec import SubnetConfig, SupernetSpec, active_mask, get_spec
from .fileio import write_text_replacing


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


MODES = ("network", "operator")


def covering_configs(spec: SupernetSpec, r: int, covers: int = 3, seed: int = 0) -> np.ndarray:
    """(n_choices * covers, W) encoded configs at resolution r (n_choices = len(ks_list) * len(expand_list)) that
    run every operator key of r at least `covers` times:
    in network j, block b takes (ks, e) choice (j + offset_b) mod n_choices (offsets redrawn every n_choices
    networks); depths are random, and the blocks every depth keeps cover each stage's keys."""
    rng = np.random.default_rng([seed, r])
    B, S = spec.n_blocks, spec.n_stages
    combos = [(k, e) for k in spec.ks_list for e in spec.expand_list]
    out = np.zeros((len(combos) * covers, spec.enc_width), dtype=np.int32)
    for j in range(len(out)):
        if j % len(combos) == 0:
            offset = rng.integers(0, len(combos), size=B)
        for b in range(B):
            out[j, b], out[j, B + b] = combos[(j + offset[b]) % len(combos)]
        out[j, 2 * B:2 * B + S] = rng.choice(spec.depth_list, size=S)
        out[j, -1] = r
    return out


def network_operator_keys(spec: SupernetSpec, enc: np.ndarray) -> list[str]:
    """The operator keys of one encoded config, in the order `time_layers` reports them."""
    B, S = spec.n_blocks, spec.n_stages
    r = int(enc[-1])
    fixed = fixed_operator_keys(spec, r)
    act = active_mask(spec, np.asarray(enc)[None, 2 * B:2 * B + S])[0]
    blocks = [block_operator_key(spec, r, int(b), int(enc[b]), int(enc[B + b])) for b in np.flatnonzero(act)]
    return fixed[:2] + blocks + fixed[2:]


def time_layers(net: StaticMobileNetV3, x: torch.Tensor) -> np.ndarray:
    """One forward of `net` (as its `forward` runs it) with the clock read between layers: ms per operator, in
    `network_operator_keys` order (first conv, blocks, final expand, pooling, feature mix, classifier)."""
    clock = time.perf_counter
    t = [clock()]
    x = net.first_conv(x)
    t.append(clock())
    for block in net.blocks:
        x = block(x)
        t.append(clock())
    x = net.final_expand_layer(x)
    t.append(clock())
    x = x.mean((2, 3), keepdim=True)
    t.append(clock())
    x = net.feature_mix_layer(x)
    t.append(clock())
    net.classifier(x.flatten(1))
    t.append(clock())
    return np.diff(np.asarray(t)) * 1e3


def _interleaved(nets: Sequence[nn.Module], inputs: Sequence[torch.Tensor], run: Callable | Sequence[Callable],
                 rounds: int, warmup: int, reduce: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
                 state: list, on_round: Callable[[int], None] | None = None, start_round: int = 0) -> list:
    """Run every net once per round, round after round (a slow spell of the host hits all nets alike);
    state[i] = reduce(new timings, state[i]) after each run. `run(net, x)` (one, or one per net) returns the
    timings of one forward as an array."""
    runs = list(run) if isinstance(run, (list, tuple)) else [run] * len(nets)
    with torch.no_grad():
        for fn, net, x in zip(runs, nets, inputs):
            for _ in range(warmup):
                fn(net, x)
        for rnd in range(start_round, rounds):
            for i, (fn, net, x) in enumerate(zip(runs, nets, inputs)):
                state[i] = reduce(fn(net, x), state[i])
            if on_round is not None:
                on_round(rnd)
    return state


def agreement(ratio: np.ndarray, tolerance: float = 0.10) -> dict[str, float]:
    """Summary of predicted/measured ratios: share within +-tolerance, median |relative error|, median/min/max."""
    ratio = np.asarray(ratio, dtype=np.float64)
    return {"n": int(len(ratio)), "tolerance": float(tolerance),
            "share_within": float(np.mean(np.abs(ratio - 1) <= tolerance)),
            "median_abs_rel_err": float(np.median(np.abs(ratio - 1))), "median_ratio": float(np.median(ratio)),
            "min_ratio": float(ratio.min()), "max_ratio": float(ratio.max())}


def _min_reduce(t: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    return t if prev is None else np.minimum(t, prev)


def profile_table(spec: SupernetSpec | str, resolutions: Iterable[int] | None = None, *, mode: str = "network",
                  repeats: int = 40, warmup: int = 3, threads: int = 1, statistic: str | None = None,
                  covers: int = 3, flush_bytes: int = 8 << 20, supernet: nn.Module | None = None,
                  progress_path: str | os.PathLike | None = None, progress: bool = True, seed: int = 0, check: int = 0,
                  tolerance: float = 0.10) -> LatencyTable:
    """Measure every operator the supernet can use at each resolution; returns a `source="measured"` table.

    mode "network" (default): in context, see the module docstring. `repeats` timed runs of each covering network,
    one per round, `covers` networks per (block, ks, e) choice; statistic "min" (the only one it supports). On a
    noisy shared host more rounds help most: on our 2-core VM, 20 rounds put 84% of checked sub-networks within
    +-10%, 40 rounds 100%.
    `supernet` (optional) supplies the weights; by default a randomly initialised one is built (timing does not
    depend on the values).
    mode "operator": each key alone, `repeats` timed runs after `warmup`, statistic "median" (default), "min" or
    "p25"; `flush_bytes` of buffer is written before each timed run (0 disables).

    `check` (network mode): also time this many random sub-networks end to end, in the same interleaved rounds as
    the covering networks (so host drift cannot separate them), and record the table's agreement with them in
    `environment["check"]` (share within +-`tolerance`, predicted/measured ratios). The same figure measured later
    also includes however much the host's speed has drifted since (`check_table`).

    `progress_path`: JSON file holding the partial results (network mode: per resolution, the rounds done and the
    running minima; operator mode: the keys done); a run with the same spec, mode, threads and statistic resumes
    from it.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    statistic = statistic or ("min" if mode == "network" else "median")
    if statistic not in _STATS or (mode == "network" and statistic != "min"):
        raise ValueError(f"statistic {statistic!r} is not supported in {mode} mode")
    if repeats < 1 or covers < 1:
        raise ValueError("repeats and covers must be >= 1")
    res = list(resolutions) if resolutions is not None else list(spec.resolutions)
    bad = [r for r in res if r not in spec.resolutions]
    if bad:
        raise ValueError(f"resolutions {bad} are not supported by {spec.name}")
    env = host_environment(threads, 1)
    env.update({"mode": mode, "repeats": repeats, "warmup": warmup, "statistic": statistic})
    if mode == "network":
        env.update({"covers": covers, "check_n": int(check)})
    done: dict[str, Any] = {}
    if progress_path is not None and os.path.exists(progress_path):
        try:
            with open(progress_path) as f:
                prev = json.load(f)
            penv = prev.get("environment", {})
            if (prev.get("spec") == spec.name and all(penv.get(k) == env[k] for k in
                                                      ("mode", "threads", "statistic", "repeats", "covers", "check_n")
                                                      if k in env)):
                done = prev.get("tables", {})
        except (OSError, json.JSONDecodeError):
            done = {}

    def save():
        if progress_path is None:
            return
        write_text_replacing(progress_path, json.dumps({"spec": spec.name, "environment": env, "tables": done}))

    with _Threads(threads):
        try:
            if mode == "network":
                tables, checked = _profile_network(spec, res, repeats, warmup, covers, supernet, done, save, progress,
                                                   seed, check, tolerance)
                if checked:
                    env["check"] = checked
            else:
                tables = _profile_operators(spec, res, repeats, warmup, statistic, flush_bytes, done, save, progress)
        finally:
            save()
    return LatencyTable(spec, tables, source="measured", environment=env, batch_size=1)


def _profile_network(spec, res, repeats, warmup, covers, supernet, done, save, progress, seed, check, tolerance):
    rounds = repeats                                # one run per network per round: as spread in time as can be
    supernet = supernet if supernet is not None else build_supernet(spec, seed=seed)
    supernet.eval()
    check_enc = (spec.sample_encoded(check, np.random.default_rng([seed, 1]), res) if check > 0
                 else np.zeros((0, spec.enc_width), dtype=np.int32))
    n_nets = len(spec.ks_list) * len(spec.expand_list) * covers          # covering networks per resolution
    bar = None
    if progress:
        from tqdm import tqdm
        total = rounds * (len(res) * n_nets + len(check_enc))
        initial = sum(min(done.get(str(r), {}).get("rounds", 0), rounds) *
                      (n_nets + int(np.sum(check_enc[:, -1] == r))) for r in res)
        bar = tqdm(total=total, initial=initial, desc=f"profiling {spec.name} in context", unit="net")
    tables: dict[int, dict[str, LatencyEntry]] = {}
    measured = np.full(len(check_enc), np.nan)
    try:
        for r in res:
            enc = covering_configs(spec, r, covers, seed)
            rows = np.flatnonzero(check_enc[:, -1] == r)
            all_enc = np.concatenate([enc, check_enc[rows]])
            part = done.get(str(r), {})
            if part.get("configs") != all_enc.tolist():
                part = {"configs": all_enc.tolist(), "rounds": 0, "minima": [None] * len(all_enc)}
            if part["rounds"] < rounds:
                nets = [extract(supernet, SubnetConfig.from_encoded(spec, e)).eval() for e in all_enc]
                inputs = [torch.randn(1, 3, r, r, generator=torch.Generator().manual_seed(seed)) for _ in all_enc]
                state = [None if m is None else np.asarray(m) for m in part["minima"]]

                def on_round(rnd, part=part, state=state, r=r, n=len(all_enc)):
                    part["rounds"], part["minima"] = rnd + 1, [x.tolist() for x in state]
                    done[str(r)] = part
                    save()
                    if bar is not None:
                        bar.update(n)
                _interleaved(nets, inputs, [_layers_and_total] * len(enc) + [_forward_ms] * len(rows), rounds,
                             warmup, _min_reduce, state, on_round, start_round=part["rounds"])
                del nets
            occ: dict[str, list[float]] = {}
            for e, mins in zip(enc, part["minima"][:len(enc)]):
                # each operator's fastest time gives the split, the network's fastest whole run the level (the sum
                # of per-operator minima alone undershoots it: no single run is fastest in every layer)
                ops = np.asarray(mins[:-1])
                for k, v in zip(network_operator_keys(spec, e), ops * (mins[-1] / ops.sum())):
                    occ.setdefault(k, []).append(float(v))
            missing = [k for k in required_operator_keys(spec, r) if k not in occ]
            assert not missing, f"covering networks missed {missing[:3]}"
            tables[r] = {k: LatencyEntry(float(np.median(v)), float(np.std(v)), len(v)) for k, v in occ.items()}
            measured[rows] = [m[0] for m in part["minima"][len(enc):]]
    finally:
        if bar is not None:
            bar.close()
    checked = None
    if len(check_enc):
        checked = agreement(LatencyTable(spec, tables, source="measured").predict(check_enc) / measured, tolerance)
    return tables, checked


def _profile_operators(spec, res, repeats, warmup, statistic, flush_bytes, done, save, progress):
    todo = [(r, k) for r in res for k in required_operator_keys(spec, r) if k not in done.get(str(r), {})]
    bar = None
    if progress:
        from tqdm import tqdm
        total = sum(len(required_operator_keys(spec, r)) for r in res)
        bar = tqdm(total=total, initial=total - len(todo), desc=f"profiling {spec.name}", unit="op")
    try:
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
        if bar is not None:
            bar.close()
    return {r: {k: LatencyEntry(**done[str(r)][k]) for k in required_operator_keys(spec, r)} for r in res}


@torch.no_grad()
def measure_end_to_end(module: nn.Module, r: int, repeats: int = 30, warmup: int = 5,
                       threads: int | None = 1, statistic: str = "min") -> float:
    """`statistic` ms (default the fastest) of one batch-1 forward of `module` at resolution r."""
    module.eval()
    with _Threads(threads):
        return time_module(module, (1, 3, r, r), repeats, warmup, statistic)[0]


def subnet_module(supernet: nn.Module, cfg: SubnetConfig) -> nn.Module:
    """The extracted static network for cfg (what a device would run)."""
    return extract(supernet, cfg).eval()


def _layers_and_total(net: StaticMobileNetV3, x: torch.Tensor) -> np.ndarray:
    t = time_layers(net, x)
    return np.append(t, t.sum())


def _forward_ms(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    t0 = time.perf_counter()
    net(x)
    return np.asarray([(time.perf_counter() - t0) * 1e3])


def time_subnets(supernet: nn.Module, configs: Sequence[SubnetConfig], *, repeats: int = 40, warmup: int = 3,
                 threads: int | None = 1, statistic: str = "min", on_round: Callable[[int], None] | None = None,
                 seed: int | None = None) -> np.ndarray:
    """End-to-end batch-1 latency (ms) of each config's extracted network, with `check_table`'s protocol: every
    network runs once per round, `repeats` rounds (a slow spell of a shared host hits them all alike), after
    `warmup` runs each; a network's latency is `statistic` of its runs (default the fastest, as a network-mode
    table's entries). `seed` fixes the random inputs (timing does not depend on the values)."""
    if statistic not in _STATS:
        raise ValueError(f"statistic must be one of {sorted(_STATS)}")
    nets = [subnet_module(supernet, c) for c in configs]
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    inputs = [torch.randn(1, 3, int(c.r), int(c.r), generator=gen) for c in configs]
    keep = lambda t, prev: t if prev is None else np.concatenate([prev, t])  # noqa: E731
    with _Threads(threads):
        runs = _interleaved(nets, inputs, _forward_ms, repeats, warmup, keep, [None] * len(nets), on_round)
    return np.asarray([_STATS[statistic](t) for t in runs], dtype=np.float64)


def check_table(supernet: nn.Module, table: LatencyTable, n: int = 50, *, rng: np.random.Generator | int = 0,
                repeats: int = 40, warmup: int = 3, threads: int = 1, tolerance: float = 0.10,
                statistic: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Table-predicted vs measured end-to-end latency for n random sub-networks.

    Each extracted network runs `repeats` times, one run per round over all n networks; its latency is
    `statistic` of those runs (default: the table's statistic, "min" for a network-mode table).
    Returns `agreement(ratio, tolerance)` plus "enc", "predicted", "measured", "ratio" and "statistic".
    """
    spec = table.spec
    statistic = statistic or table.environment.get("statistic", "min")
    if statistic not in _STATS:
        raise ValueError(f"statistic must be one of {sorted(_STATS)}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    enc = spec.sample_encoded(n, rng, list(table.resolutions))
    pred = table.predict(enc)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=repeats, desc="end-to-end check", unit="round")
    try:
        meas = time_subnets(supernet, [SubnetConfig.from_encoded(spec, e) for e in enc], repeats=repeats,
                            warmup=warmup, threads=threads, statistic=statistic,
                            on_round=(lambda _: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    ratio = pred / meas
    return {**agreement(ratio, tolerance), "enc": enc, "predicted": pred, "measured": meas, "ratio": ratio,
            "statistic": statistic}
