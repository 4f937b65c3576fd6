"""Where a long training run stands, measured: the run directory's latest checkpoint is loaded (read-only, the run
may keep going), its largest, smallest and 8 probe sub-networks are scored on the test images after BN
recalibration, and a status file says the phase, step, wall time and what a later session resumes. With --keep,
the checkpoint is copied beside the status (the committed fallback for a machine that lost the run directory).

    python -m ofa_core.run_status --run /var/tmp/ofa-runs/ofa_mbv3_cifar10 \
        --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out runs/ofa_mbv3_cifar10 --keep
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from .data import holdout_split, load_dataset
from .recipe import probe_configs, sha256_file
from .spec import get_spec
from .training import Phase, ProgressiveShrinkingTrainer, TrainConfig, evaluate_subnet
from .fileio import copy_replacing, replacing, write_text_replacing

TEXT_FILES = ("log.jsonl", "predictor_data.jsonl")   # the run's own records, kept beside the checkpoint parts
PARTS = {"model": ("state_dict", "state", "config", "spec", "torch_rng"), "optimizer": ("optimizer",),
         "teacher": ("teacher",)}     # kept as separate files, each well under the repository's 15 MB a file


def _optimizer_state(opt: dict, dtype: torch.dtype) -> dict:
    """The optimizer state dict with its float32 buffers (SGD momentum) cast to `dtype` (the rest as is).

    An empty state (a checkpoint saved at a phase boundary, where the next phase starts a fresh optimizer) stays
    empty, so that resuming from it does not try to load a state without param_groups (parts kept by an earlier
    version held `{'state': {}}` there: read as empty too)."""
    if "param_groups" not in opt:
        return {}
    cast = lambda v: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
    return {**opt, "state": {i: {k: cast(v) for k, v in st.items()} for i, st in opt.get("state", {}).items()}}


def split_checkpoint(path: str, out_dir: str) -> list[str]:
    """Write the checkpoint at `path` as `last.<part>.pt` files in `out_dir` (tensors and plain values only).

    Weights (model, teacher) stay float32; the optimizer's momentum is kept as bfloat16, which keeps the three
    parts under the 25 MB the repository allows a run once the teacher exists (the distillation phases). A run
    restored from these parts therefore resumes with its momentum rounded to bfloat16 (the run directory's own
    last.pt resumes exactly)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "optimizer" in payload:
        payload["optimizer"] = _optimizer_state(payload["optimizer"], torch.bfloat16)
        payload["optimizer_kept_as"] = "bfloat16"
    names = []
    for part, keys in PARTS.items():
        sub = {k: payload[k] for k in keys + (("optimizer_kept_as",) if part == "optimizer" else ()) if k in payload}
        if not sub:
            continue
        dst = os.path.join(out_dir, f"last.{part}.pt")
        with replacing(dst) as tmp:
            torch.save(sub, tmp)
        names.append(dst)
    return names


def _count_rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n") and line.strip())


def keep_text_files(run_dir: str, kept_dir: str) -> list[str]:
    """Copy the run's JSONL records (phase log, predictor data measured so far) into `kept_dir`."""
    out = []
    for name in TEXT_FILES:
        src = os.path.join(run_dir, name)
        if os.path.exists(src):
            copy_replacing(src, os.path.join(kept_dir, name))
            out.append(name)
    return out


def join_checkpoint(kept_dir: str, run_dir: str) -> str:
    """Rebuild `run_dir/last.pt` from the `last.<part>.pt` files in `kept_dir` (the inverse of split), with the
    kept JSONL records (never over ones the run directory already has)."""
    payload = {}
    for part in PARTS:
        src = os.path.join(kept_dir, f"last.{part}.pt")
        if os.path.exists(src):
            payload.update(torch.load(src, map_location="cpu", weights_only=True))
    if "state_dict" not in payload:
        raise SystemExit(f"{kept_dir}: no last.model.pt to restore from")
    if payload.pop("optimizer_kept_as", None) == "bfloat16":
        payload["optimizer"] = _optimizer_state(payload["optimizer"], torch.float32)
    os.makedirs(run_dir, exist_ok=True)
    for name in TEXT_FILES:
        if os.path.exists(os.path.join(kept_dir, name)) and not os.path.exists(os.path.join(run_dir, name)):
            copy_replacing(os.path.join(kept_dir, name), os.path.join(run_dir, name))
    dst = os.path.join(run_dir, "last.pt")
    with replacing(dst) as tmp:
        torch.save(payload, tmp)
    return dst


def measure(trainer: ProgressiveShrinkingTrainer, train, test, bn_images: int) -> dict:
    spec, net = trainer.spec, trainer.net
    r = max(spec.resolutions)
    acc = {"largest": evaluate_subnet(net, spec.max_config(r), train, test, bn_images),
           "smallest": evaluate_subnet(net, spec.min_config(min(spec.resolutions)), train, test, bn_images)}
    acc.update({name: evaluate_subnet(net, c, train, test, bn_images) for name, c in probe_configs(spec, r)})
    return {k: round(v, 4) for k, v in acc.items()}


def _where(st: dict) -> str:
    if len(st["phases_done"]) == st["n_phases"]:
        rows, planned = st.get("predictor_rows", 0), st.get("predictor_planned")
        done = f"- training **finished** (all {st['n_phases']} phases: {', '.join(st['phases_done'])}); "
        if planned and rows >= planned:
            return done + (f"all {planned} predictor sub-networks are measured (`predictor_data.jsonl`): the recipe "
                           "builds the predictor and the assets from them without measuring again")
        return done + (f"the predictor data set holds {rows} measured sub-networks (`predictor_data.jsonl`), the "
                       "recipe measures the rest and then builds the predictor and the assets")
    return (f"- phase **{st['phase_index'] + 1}/{st['n_phases']} `{st['phase']}`**, step {st['step']} of "
            f"{st['phase_steps']} ({100 * st['step'] / st['phase_steps']:.1f}% of the phase); "
            f"phases done: {', '.join(st['phases_done']) or 'none'}")


def status_markdown(st: dict) -> str:
    L = [f"# Training run `{st['supernet']}`: where it stands", "",
         f"Measured {st['measured_at']} from `{st['run_dir']}/last.pt` (sha256 `{st['checkpoint_sha256']}`).", "",
         _where(st),
         f"- training time so far: {st['elapsed_s'] / 3600:.2f} h"
         + (f" (wall time less {st['paused_s'] / 3600:.2f} h when the process was stopped)" if st.get("paused_s")
            else ""),
         f"- resume: `{st['resume_command']}` (`--threads 2` on a quiet machine; `--threads 1` where other work "
         "shares the two cores, since two threads contending with it run slower than one)",
         f"- if `{st['run_dir']}` is gone (a new machine): `python -m ofa_core.run_status --restore "
         f"runs/{st['supernet']} --run {st['run_dir']}` first (rebuilds last.pt from the `last.*.pt` parts kept "
         "here; the optimizer's momentum is kept as bfloat16 to stay under 25 MB, so that resume is exact but for "
         "its rounding), then the command above", "",
         f"Test accuracy ({st['test_images']} CIFAR-10 test images, BN recalibrated on {st['bn_images']} training "
         "images, no fine-tuning):", "", "| sub-network | test accuracy |", "|---|---|"]
    L += [f"| {k} | {100 * v:.2f}% |" for k, v in st["test_acc"].items()]
    return "\n".join(L) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ofa_core.run_status", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run directory (last.pt, log.jsonl)")
    p.add_argument("--data")
    p.add_argument("--supernet", default=None, help="default: the one the checkpoint was trained for")
    p.add_argument("--predictor-subnets", type=int, default=1000, help="the recipe's planned predictor rows")
    p.add_argument("--out", help="where STATUS.md / status.json (and with --keep, last.pt) go")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint in --out as last.<part>.pt files")
    p.add_argument("--restore", default=None, metavar="KEPT_DIR",
                   help="rebuild --run/last.pt from the parts kept in KEPT_DIR, and stop")
    p.add_argument("--holdout", type=int, default=10000)
    p.add_argument("--bn-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default="data/cache")
    a = p.parse_args(argv)
    if a.restore:
        print(join_checkpoint(a.restore, a.run))
        return {}
    if not (a.data and a.out):
        p.error("--data and --out are required (unless --restore)")
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    snapshot = os.path.join(a.out, "last.pt")
    copy_replacing(os.path.join(a.run, "last.pt"), snapshot)   # one consistent file while the run saves
    payload = torch.load(snapshot, map_location="cpu", weights_only=True)
    spec = get_spec(a.supernet or payload["spec"])
    saved = json.loads(payload["config"])
    del payload
    splits = load_dataset(a.data, cache_dir=a.cache_dir, progress=False)
    train, hold = holdout_split(splits["train"], a.holdout, seed=0)
    phases = [Phase(**{**ph, **{k: tuple(v) for k, v in ph.items() if isinstance(v, list)}})
              for ph in saved["phases"]]
    cfg = TrainConfig(phases=phases, batch_size=saved["batch_size"], channels_last=True)
    trainer = ProgressiveShrinkingTrainer(spec, cfg, train, hold, a.out, progress=False)
    trainer.try_resume()
    state = trainer.state
    pi = min(state["phase"], len(phases) - 1)
    names = [ph.name for ph in phases]
    st = {"supernet": spec.name, "run_dir": os.path.abspath(a.run),
          "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "checkpoint_sha256": sha256_file(snapshot), "checkpoint_bytes": os.path.getsize(snapshot),
          "phase_index": pi, "n_phases": len(phases), "phase": names[pi], "phases_done": names[:state["phase"]],
          "step": state["step"], "phase_steps": phases[pi].steps(trainer.steps_per_epoch),
          "elapsed_s": round(state["elapsed_s"], 1), "paused_s": round(state.get("paused_s", 0.0), 1),
          "resume_command": f"python -m ofa_core.recipe --data <cifar10-jpeg.tar.gz> --run {os.path.abspath(a.run)} "
                            f"--supernet {spec.name} --assets <dir> --threads 2",
          "predictor_rows": _count_rows(os.path.join(a.run, "predictor_data.jsonl")),
          "predictor_planned": a.predictor_subnets,
          "test_images": len(splits["test"]), "bn_images": a.bn_images,
          "test_acc": measure(trainer, train, splits["test"], a.bn_images)}
    if a.keep:
        st["kept"] = [os.path.basename(f) for f in split_checkpoint(snapshot, a.out)] + keep_text_files(a.run, a.out)
    os.remove(snapshot)
    write_text_replacing(os.path.join(a.out, "status.json"), json.dumps(st, indent=2))
    write_text_replacing(os.path.join(a.out, "STATUS.md"), status_markdown(st))
    print(json.dumps(st, indent=2))
    return st


if __name__ == "__main__":
    main()
