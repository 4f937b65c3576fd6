"""The whole recipe for a pretrained default supernet, resumable step by step:

1. progressive-shrinking training (`ofa_core.training`), 2. the predictor data set (sub-networks measured on the
hold-out split after BN recalibration), 3. the accuracy predictor, 4. test-set accuracy of the largest, the
smallest and 8 probe sub-networks, 5. artifacts (supernet weights and predictor as safetensors) and a model card.

    python -m ofa_core.recipe --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --run runs/cifar10 \
        --assets ofa_core/assets
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import time

import torch

from .data import holdout_split, load_dataset
from .fileio import copy_replacing, replacing
from .profiler import host_environment
from .predictor import (LABELS, build_predictor_dataset, dataset_from_rows, fill_mirrored_rows, read_predictor_dataset,
                        read_rows, train_predictor)
from .spec import SubnetConfig, SupernetSpec, get_spec
from .stfile import save_safetensors
from .training import (TEACHER_PRECISIONS, ProgressiveShrinkingTrainer, TrainConfig, cifar_phases, evaluate_subnet,
                       evaluate_subnet_on, progressive_shrinking_phases)


def probe_configs(spec: SupernetSpec, r: int) -> list[tuple[str, SubnetConfig]]:
    """2 depths x 2 expand ratios x 2 kernel sizes (min/max of each), uniform over blocks."""
    out = []
    for d, e, k in itertools.product((min(spec.depth_list), max(spec.depth_list)),
                                     (min(spec.expand_list), max(spec.expand_list)),
                                     (min(spec.ks_list), max(spec.ks_list))):
        out.append((f"d{d}-e{e}-k{k}", SubnetConfig.create(spec, [k] * spec.n_blocks, [e] * spec.n_blocks,
                                                          [d] * spec.n_stages, r)))
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_supernet(net: torch.nn.Module, spec: SupernetSpec, path: str, extra: dict) -> None:
    sd = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {"format": "ofa-supernet", "supernet": spec.name, "version": spec.version,
            **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in extra.items()}}
    save_safetensors(sd, path, meta)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ofa_core.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="the CIFAR-10 archive (required unless --recard)")
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--run", help="run directory (training checkpoint, logs, predictor data; required unless --recard)")
    p.add_argument("--assets", required=True, help="where the artifacts and MODEL_CARD.md are written")
    p.add_argument("--schedule", choices=["cifar", "published"], default="cifar",
                   help="cifar: long full phase then shrinking (cifar_phases); published: the reference's ratios")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every phase's epochs")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--holdout", type=int, default=10000)
    p.add_argument("--predictor-subnets", type=int, default=1000)
    p.add_argument("--bn-images", type=int, default=2000)
    p.add_argument("--label", choices=sorted(LABELS), default="acc",
                   help="what the predictor learns: acc (top-1 on the hold-out split) or mirror_avg (its mean with "
                        "top-1 on the mirror images, measured under the same BN recalibration: less sampling noise "
                        "between sub-networks; rows measured without it are filled in first)")
    p.add_argument("--predictor-ensemble", type=int, default=1,
                   help="members of the predictor's ensemble (averaged into one MLP; see train_predictor)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-precision", choices=TEACHER_PRECISIONS, default="float32",
                   help="the frozen teacher's precision (auto: bfloat16 where the CPU has native bf16; a bf16 "
                        "teacher is faster there but gives slightly different soft targets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interim", action="store_true",
                   help="do not train or measure: build the artifacts from the finished training and the predictor "
                        "rows measured so far (at least --min-rows); a later run without it measures the rest")
    p.add_argument("--min-rows", type=int, default=200, help="with --interim: the fewest measured rows accepted")
    p.add_argument("--ablation-json", default=None, help="shrinking ablation results to include in the card")
    p.add_argument("--card-notes", default=None, help="a Markdown file appended to the model card (run notes)")
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--recard", action="store_true",
                   help="write the model card again from the assets' report.json with new --card-notes / "
                        "--ablation-json; nothing is trained or measured, and the files must be the report's")
    a = p.parse_args(argv)
    if not a.recard and (a.data is None or a.run is None):
        p.error("--data and --run are required (unless --recard)")
    return a


def recard(a: argparse.Namespace, spec: SupernetSpec) -> dict:
    """The report and model card written again with new notes / ablation, the measured figures as they were.
    Refuses when a file in the assets is no longer the one the report describes (the card would lie)."""
    path = os.path.join(a.assets, f"{spec.name}.report.json")
    if not os.path.exists(path):
        raise SystemExit(f"--recard: no report at {path}; run the recipe first")
    with open(path) as fh:
        report = json.load(fh)
    for name, f in report["files"].items():
        got = sha256_file(os.path.join(a.assets, name)) if os.path.exists(os.path.join(a.assets, name)) else None
        if got != f["sha256"]:
            raise SystemExit(f"--recard: {name} in {a.assets} is not the file the report describes "
                             f"(sha256 {got or 'missing'}, report {f['sha256']}): run the recipe")
    if a.ablation_json:
        with open(a.ablation_json) as fh:
            report["ablation"] = json.load(fh)
    if a.card_notes:
        with open(a.card_notes) as fh:
            report["notes"] = fh.read()
    write_report(a.assets, spec, report)
    return report


def write_report(assets: str, spec: SupernetSpec, report: dict) -> None:
    with replacing(os.path.join(assets, f"{spec.name}.report.json")) as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=2)
    with replacing(os.path.join(assets, "MODEL_CARD.md")) as tmp, open(tmp, "w") as fh:
        fh.write(model_card(report))


def train_supernet(a: argparse.Namespace, spec: SupernetSpec, train, hold) -> ProgressiveShrinkingTrainer:
    """Step 1: progressive shrinking, resumed from the run directory (with --interim: loaded, never trained)."""
    phases = (cifar_phases if a.schedule == "cifar" else progressive_shrinking_phases)(spec, a.scale, a.lr)
    cfg = TrainConfig(phases=phases, batch_size=a.batch_size, weight_decay=a.weight_decay, seed=a.seed,
                      threads=a.threads, teacher_precision=a.teacher_precision)
    trainer = ProgressiveShrinkingTrainer(spec, cfg, train, hold, a.run, progress=not a.no_progress)
    if a.interim:
        trainer.try_resume()
        if trainer.state["phase"] < len(phases):
            raise SystemExit(f"--interim needs a finished training; {a.run} is in phase "
                             f"{trainer.state['phase'] + 1} of {len(phases)}")
    else:
        trainer.run(resume=True)
    return trainer


def predictor_data(a: argparse.Namespace, spec: SupernetSpec, net, train, hold) -> tuple:
    """Step 2: the sub-networks measured on the hold-out split (with --interim: the rows measured so far)."""
    path = os.path.join(a.run, "predictor_data.jsonl")
    if a.interim:
        enc, acc = read_predictor_dataset(path, spec)
        if len(acc) < a.min_rows:
            raise SystemExit(f"--interim: {path} holds {len(acc)} measured sub-networks, fewer than --min-rows "
                             f"{a.min_rows}")
    else:
        mirror = hold.mirrored() if a.label == "mirror_avg" else None

        def measure(n, c, plain: bool = True) -> dict:
            sets = ([hold] if plain else []) + ([mirror] if mirror is not None else [])
            names = (["acc"] if plain else []) + (["acc_mirrored"] if mirror is not None else [])
            return dict(zip(names, evaluate_subnet_on(n, c, train, sets, a.bn_images)))

        if mirror is not None and os.path.exists(path):     # rows measured before: their mirror images first
            fill_mirrored_rows(path, spec, net, measure, progress=not a.no_progress)
        build_predictor_dataset(net, spec, a.predictor_subnets, measure, path, rng=a.seed, resume=True,
                                progress=not a.no_progress, stratified=True)
    rows = read_rows(path)
    enc, acc = dataset_from_rows(rows, spec, label=a.label)
    seconds = round(sum(r["seconds"] + r.get("seconds_mirrored", 0.0) for r in rows), 1)
    return enc, acc, path, seconds


def measure_test_split(net, spec: SupernetSpec, train, test, bn_images: int) -> tuple[dict, dict]:
    """Step 4: the largest, the smallest and the 8 probes on the test split (BN recalibrated, no fine-tuning)."""
    r = max(spec.resolutions)
    test_acc = {"largest": evaluate_subnet(net, spec.max_config(r), train, test, bn_images),
                "smallest": evaluate_subnet(net, spec.min_config(min(spec.resolutions)), train, test, bn_images),
                "smallest@max_r": evaluate_subnet(net, spec.min_config(r), train, test, bn_images)}
    probes = {name: evaluate_subnet(net, c, train, test, bn_images) for name, c in probe_configs(spec, r)}
    net.set_max()
    return test_acc, probes


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = get_spec(a.supernet)
    if a.recard:
        return recard(a, spec)
    os.makedirs(a.assets, exist_ok=True)
    timings = {}
    splits = load_dataset(a.data, cache_dir=a.cache_dir, progress=not a.no_progress)
    train, hold = holdout_split(splits["train"], a.holdout, seed=a.seed)
    test = splits["test"]

    trainer = train_supernet(a, spec, train, hold)
    timings["training_s"] = round(trainer.state["elapsed_s"], 1)
    net = trainer.net.cpu().eval()
    phase_log = [r for r in map(json.loads, open(os.path.join(a.run, "log.jsonl"))) if r.get("event") == "phase_end"]

    enc, acc, data_path, timings["predictor_data_s"] = predictor_data(a, spec, net, train, hold)

    t = time.time()                                     # 3. the predictor
    predictor, metrics = train_predictor(enc, acc, spec, encoding="onehot", val_fraction=0.2, epochs=500,
                                         batch_size=256, seed=a.seed, ensemble=a.predictor_ensemble)
    timings["predictor_train_s"] = round(time.time() - t, 1)

    t = time.time()
    test_acc, probes = measure_test_split(net, spec, train, test, a.bn_images)
    timings["test_eval_s"] = round(time.time() - t, 1)

    # 5. artifacts: weights, predictor and its data set
    weights = os.path.join(a.assets, f"{spec.name}.safetensors")
    pred_path = os.path.join(a.assets, f"{spec.name}_predictor.safetensors")
    data_copy = os.path.join(a.assets, f"{spec.name}_predictor_data.jsonl")
    save_supernet(net, spec, weights, {"test_acc": test_acc, "recipe": "progressive shrinking"})
    predictor.save(pred_path)
    copy_replacing(data_path, data_copy)
    report = {"supernet": spec.name, "spec": spec.to_dict(), "train_images": len(train), "holdout_images": len(hold),
              "test_images": len(test), "train_config": trainer.cfg.to_json(), "phase_log": phase_log,
              "test_acc": test_acc, "probe_test_acc": probes, "predictor_metrics": metrics,
              "predictor_subnets": int(len(acc)), "predictor_subnets_planned": a.predictor_subnets,
              "predictor_label": a.label,
              "interim": a.interim, "timings": timings,
              "machine": {"cpu": host_environment(a.threads)["cpu_model"], "threads": a.threads, "torch": torch.__version__,
                          "python": platform.python_version()},
              "files": {os.path.basename(pth): {"sha256": sha256_file(pth), "bytes": os.path.getsize(pth)}
                        for pth in (weights, pred_path, data_copy)}}
    if a.ablation_json and os.path.exists(a.ablation_json):
        report["ablation"] = json.load(open(a.ablation_json))
    if a.card_notes:
        with open(a.card_notes) as fh:
            report["notes"] = fh.read()
    write_report(a.assets, spec, report)
    print(json.dumps({"test_acc": test_acc, "predictor": metrics, "timings": timings}, indent=2))
    return report


def model_card(rep: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"
    L = [f"# Model card: `{rep['supernet']}`", "",
         "The project's default pretrained OFA supernet, trained by this repository's own progressive-shrinking "
         "command (`python -m ofa_core.recipe`). Sub-networks are cut out of it without retraining.", "",
         "## Data", "",
         f"CIFAR-10 (32x32 JPEG re-encodes): {rep['train_images']} training images for training, "
         f"{rep['holdout_images']} training images held out (BN recalibration checks and the predictor data set), "
         f"{rep['test_images']} test images for the figures below. Elastic resolution "
         f"{rep['spec']['resolutions']}.", "",
         "## Space", "",
         f"ks {rep['spec']['ks_list']}, e {rep['spec']['expand_list']}, d {rep['spec']['depth_list']}, "
         f"{rep['spec']['n_blocks']} elastic blocks in {rep['spec']['n_stages']} stages, width multiplier "
         f"{rep['spec']['width_mult']}.", "",
         "## Recipe", "", "| phase | epochs | lr | sub-networks/step | held-out acc largest | smallest | elapsed s |",
         "|---|---|---|---|---|---|---|"]
    for ph, log in zip(rep["train_config"]["phases"], rep["phase_log"][-len(rep["train_config"]["phases"]):]):
        L.append(f"| {ph['name']} | {ph['epochs']:g} | {ph['lr']:g} | {ph['n_subnets']} | "
                 f"{pct(log['acc_largest'])} | {pct(log['acc_smallest'])} | "
                 f"{'not kept' if log['elapsed_s'] is None else log['elapsed_s']} |")
    if any(log.get("reconstructed") for log in rep["phase_log"]):
        L += ["", "Some phase-end rows were rebuilt from the figures recorded when the phase ended (the run directory "
              "was lost with its machine; the checkpoint parts under `runs/` carried the run on)."]
    L += ["", f"Batch {rep['train_config']['batch_size']}, SGD nesterov momentum 0.9, wd "
          f"{rep['train_config']['weight_decay']} (none on BN/bias), cosine lr per phase, label smoothing "
          f"{rep['train_config']['label_smoothing']}, KD ratio {rep['train_config']['kd_ratio']} from the full "
          "network (phases after the first). Held-out accuracies above use 2,000 hold-out images (a seeded "
          "random sample) at the largest resolution after BN recalibration.", "",
          "## Machine and wall time", "",
          f"{rep['machine']['cpu']}, {rep['machine']['threads']} torch thread(s), torch {rep['machine']['torch']}, "
          f"Python {rep['machine']['python']}; shared with other work while training.", "",
          "| step | seconds |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in rep["timings"].items()]
    ta = rep["test_acc"]
    L += ["", "## Test accuracy (10,000 test images, BN recalibrated, no fine-tuning)", "",
          f"- largest sub-network (ks 7, e 6, d 4, r 32): **{pct(ta['largest'])}**",
          f"- smallest sub-network (ks 3, e 3, d 2, r {min(rep['spec']['resolutions'])}): **{pct(ta['smallest'])}**",
          f"- smallest sub-network at r 32: {pct(ta['smallest@max_r'])}", "",
          "| probe (d-e-k, r 32) | test accuracy |", "|---|---|"]
    L += [f"| {k} | {pct(v)} |" for k, v in rep["probe_test_acc"].items()]
    m = rep["predictor_metrics"]
    members = f", an ensemble of {m['ensemble']} averaged into one MLP" if m.get("ensemble", 1) > 1 else ""
    L += ["", "## Accuracy predictor", "",
          f"MLP {m.get('encoding')} encoding{members}, trained on {m['n_train']} and validated on {m['n_val']} of "
          f"{rep['predictor_subnets']} sub-networks measured on the hold-out split (label: "
          f"{LABELS[rep.get('predictor_label', 'acc')]}): held-out RMSE "
          f"**{m['val_rmse_pp']:.3f} pp**, Kendall tau **{m['val_kendall_tau']:.3f}** (train RMSE "
          f"{m['train_rmse_pp']:.3f} pp, tau {m['train_kendall_tau']:.3f}). The data set (each row a sub-network's "
          f"config, its measured accuracy and the seconds it took) is `{rep['supernet']}_predictor_data.jsonl`; "
          "`ofa_core.predictor.read_predictor_dataset` reads it and `train_predictor` retrains from it.", ""]
    if rep.get("interim"):
        L += [f"**Interim predictor**: trained on the {rep['predictor_subnets']} sub-networks measured so far of the "
              f"{rep['predictor_subnets_planned']} the recipe samples (stratified over the size range, drawn up "
              "front); running the recipe again measures the rest and retrains it.", ""]
    if "ablation" in rep:
        ab = rep["ablation"]
        L += ["## Does progressive shrinking help? (small-scale ablation)", "",
              f"{ab['train_images']} training images, {ab['steps']['progressive']} optimizer steps each (batch "
              f"{ab['batch_size']}), held-out accuracy "
              f"({ab['holdout_images']} images) after BN recalibration.", "",
              "| sub-network (d-e-k) | progressive shrinking | one-shot | difference (pp) |", "|---|---|---|---|"]
        for k in ab["acc"]["progressive"]:
            a1, a2 = ab["acc"]["progressive"][k], ab["acc"]["one-shot"][k]
            L.append(f"| {k} | {pct(a1)} | {pct(a2)} | {100 * (a1 - a2):+.2f} |")
        L.append("")
    if rep.get("notes"):
        L += [rep["notes"].rstrip(), ""]
    L += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    L += [f"| {k} | {v['bytes']} | `{v['sha256']}` |" for k, v in rep["files"].items()]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
