"""`ofa train-predictor`: train `ofa_core.predictor` from your own (config, accuracy) measurements."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "train-predictor", formatter_class=formatter,
        help="train an accuracy predictor from a file of (config, accuracy) pairs (and register it)",
        description="Train the accuracy predictor (MLP on the one-hot config encoding) from measured "
                    "sub-networks: JSON Lines / a JSON array of {config, acc} rows or OFA-style flat dicts "
                    "(r as [224]; extra keys such as wid are ignored and listed), or the published "
                    "{config-as-JSON: accuracy} object. Prints held-out RMSE (percentage points) and Kendall tau; "
                    "--register makes the service use it for the supernet.")
    p.add_argument("data", help="the training file")
    p.add_argument("--scale", required=True, choices=("percent", "fraction"),
                   help="accuracies are in percent (0..100) or fractions (0..1); never guessed")
    p.add_argument("--supernet", help="default: the service's default supernet")
    p.add_argument("--val-file", help="validation pairs (same format); default: a seeded --val-fraction split")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share when there is no --val-file")
    p.add_argument("--seed", type=int, default=0, help="split, initialisation and batch order")
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop training after this long")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="average K members (seeds seed..seed+K-1, same split) into one predictor file (1..8)")
    p.add_argument("--out", help="where to write the .safetensors predictor (default: in the data directory)")
    p.add_argument("--register", action="store_true", help="register it for the supernet (like register-predictor)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_train_predictor)


def _check(args) -> None:
    if not 0 <= args.val_fraction < 1:
        raise ValueError("--val-fraction must be in [0, 1)")
    if args.epochs < 1 or args.batch_size < 1 or args.max_seconds <= 0 or args.lr <= 0:
        raise ValueError("--epochs, --batch-size, --max-seconds and --lr must be positive")
    if not 1 <= args.ensemble <= 8:
        raise ValueError("--ensemble must be in 1..8")


def train(args, settings) -> dict:
    """Read, split, train, save (and register); returns the report."""
    from ofa_core.predictor import train_predictor
    from ofa_core.predictor_data import read_accuracy_data
    from ofa_core.spec import get_spec
    _check(args)
    name = args.supernet or settings.default_supernet
    try:
        spec = get_spec(name)
    except KeyError:
        raise ValueError(f"unknown supernet {name!r}") from None
    data = read_accuracy_data(args.data, spec, args.scale)
    notes = list(data.notes)
    enc, acc, val_idx = data.enc, data.acc, None
    if args.val_file:
        val = read_accuracy_data(args.val_file, spec, args.scale)
        notes += [f"validation file: {n}" for n in val.notes]
        keep = ~_rows_in(enc, val.enc)
        if (~keep).any():
            notes.append(f"{int((~keep).sum())} training configs also in the validation file dropped from training")
        enc, acc = np.concatenate([enc[keep], val.enc]), np.concatenate([acc[keep], val.acc])
        val_idx = np.arange(int(keep.sum()), len(acc))
    t0 = time.perf_counter()
    pred, m = train_predictor(enc, acc, spec, val_fraction=args.val_fraction, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed, max_seconds=args.max_seconds,
                              val_indices=val_idx, ensemble=args.ensemble)
    secs = time.perf_counter() - t0
    out = args.out or os.path.join(settings.var_dir, "trained_predictors",
                                   f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}.safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    pred.save(out, {"trained_from": os.path.basename(args.data), "scale": args.scale,
                    "val_rmse_pp": f"{m['val_rmse_pp']:.4f}", "val_kendall_tau": f"{m['val_kendall_tau']:.4f}"})
    report = {"supernet": spec.name, "predictor": os.path.abspath(out), "notes": notes,
              "split": "validation file" if args.val_file else f"seeded {args.val_fraction:g} (seed {args.seed})",
              **{k: m[k] for k in ("n_train", "n_val", "val_rmse_pp", "val_kendall_tau", "train_rmse_pp",
                                   "epochs_run", "best_epoch")}, "ensemble": args.ensemble,
              "seconds": round(secs, 2), "registered": False}
    if args.register:
        from service.cli import cmd_register_predictor
        cmd_register_predictor(argparse.Namespace(supernet=spec.name, file=out))
        report["registered"] = True
    return report


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    seen = {r.tobytes() for r in b}
    return np.array([r.tobytes() in seen for r in a], dtype=bool)


def cmd_train_predictor(args) -> int:
    from service.cli import _settings
    rep = train(args, _settings())
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    for n in rep["notes"]:
        print(f"note: {n}")
    print(f"trained on {rep['n_train']} sub-networks, validated on {rep['n_val']} ({rep['split']}): held-out RMSE "
          f"{rep['val_rmse_pp']:.3f} pp, Kendall tau {rep['val_kendall_tau']:.3f} (training RMSE "
          f"{rep['train_rmse_pp']:.3f} pp; {rep['epochs_run']} epochs, best {rep['best_epoch'] + 1}, "
          f"{rep['seconds']:.1f} s)")
    print(f"predictor: {rep['predictor']}" + (" (registered)" if rep["registered"] else ""))
    return 0
