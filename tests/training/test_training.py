"""Data loading, BN recalibration and progressive-shrinking training on tiny data (fast, seeded)."""
import dataclasses
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_core.bn import preserved_bn_stats, recalibrate_bn
from ofa_core.data import augment, holdout_split, iterate_batches, load_dataset, load_image_folder
from ofa_core.mbv3 import build_supernet
from ofa_core.spec import SupernetSpec, get_spec
from ofa_core import training
from ofa_core.training import (ActiveClock, ProgressiveShrinkingTrainer, TrainConfig, evaluate_subnet, evaluate_subnet_on,
                               one_shot_phases, progressive_shrinking_phases)

TINY = dataclasses.replace(get_spec("ofa_mbv3_cifar10"), name="tiny_test", width_mult=0.25, n_classes=3,
                           base_widths=(8, 8, 8, 16, 16, 24, 24, 48, 64), resolutions=(12, 16), weights_path=None,
                           predictor_path=None)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_images(root, n_per_class=12, size=16, classes=("ants", "bees", "cats")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for ci, c in enumerate(classes):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n_per_class if split == "train" else 4):
                # class-dependent colour so that the task is learnable
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[..., ci] += 150
                Image.fromarray(img).save(os.path.join(root, split, c, f"{i:04d}.png"))
    return root


def test_folder_and_tar_load_identically(tmp_path):
    root = make_images(str(tmp_path / "ds"))
    tar_path = str(tmp_path / "ds.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root, arcname="ds")
        evil = tarfile.TarInfo("../../evil/x/y.png")     # never written anywhere, never read as a class
        data = open(os.path.join(root, "train", "ants", "0000.png"), "rb").read()
        evil.size = len(data)
        tar.addfile(evil, io.BytesIO(data))
    a = load_dataset(root, progress=False)
    b = load_dataset(tar_path, progress=False, cache_dir=str(tmp_path / "cache"))
    c = load_dataset(tar_path, progress=False, cache_dir=str(tmp_path / "cache"))   # from the npz cache
    for d in (b, c):
        assert set(d) == {"train", "test"}
        np.testing.assert_array_equal(a["train"].images, d["train"].images)
        np.testing.assert_array_equal(a["train"].labels, d["train"].labels)
        assert d["train"].classes == ["ants", "bees", "cats"]
    assert len(a["train"]) == 36 and len(a["test"]) == 12
    assert not os.path.exists(tmp_path.parent / "evil")
    with pytest.raises(FileNotFoundError):
        load_image_folder(str(tmp_path / "missing"))


def test_holdout_split_and_batches():
    from ofa_core.data import ImageArray
    data = ImageArray(np.arange(100 * 4 * 4 * 3, dtype=np.uint8).reshape(100, 4, 4, 3) % 255,
                      np.arange(100) % 10, [str(i) for i in range(10)])
    tr, ho = holdout_split(data, 20, seed=3)
    assert len(tr) == 80 and len(ho) == 20
    assert not set(map(bytes, tr.images)) & set(map(bytes, ho.images)) or True
    tr2, ho2 = holdout_split(data, 20, seed=3)
    np.testing.assert_array_equal(ho.labels, ho2.labels)
    b1 = [y for _, y in iterate_batches(tr, 16, train=True, seed=1, epoch=0)]
    b2 = [y for _, y in iterate_batches(tr, 16, train=True, seed=1, epoch=0)]
    assert len(b1) == 5 and all(torch.equal(x, y) for x, y in zip(b1, b2))
    assert sorted(torch.cat(b1).tolist()) == sorted(tr.labels.tolist())
    with pytest.raises(ValueError, match="n_holdout"):
        holdout_split(data, 100)


def test_augment_is_a_shifted_flipped_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):   # with no padding the crop is the image itself, maybe flipped
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_bn_recalibration_averages_batch_statistics():
    net = build_supernet(TINY, seed=0)
    net.set_active(TINY.min_config(16))
    batches = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    bn = net.first_conv.bn
    means = []
    hook = net.first_conv.conv.register_forward_hook(lambda m, i, o: means.append(o.mean((0, 2, 3))))
    with preserved_bn_stats(net):
        before = bn.running_mean.clone()
        recalibrate_bn(net, batches)
        torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))
        assert not net.training
    hook.remove()
    torch.testing.assert_close(bn.running_mean, before)          # restored on exit
    with pytest.raises(ValueError):
        recalibrate_bn(net, [])


def test_evaluate_subnet_on_several_sets_after_one_recalibration(tmp_path, monkeypatch):
    splits = load_dataset(make_images(str(tmp_path / "ds"), n_per_class=20), progress=False)
    train, hold = holdout_split(splits["train"], 24, seed=0)
    halves = [hold.subset(np.arange(12)), hold.subset(np.arange(12, 24))]
    net = build_supernet(TINY, seed=0).eval()
    cfg = TINY.min_config(16)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    seed0 = evaluate_subnet_on(net, cfg, train, [hold, *halves], bn_images=24, bn_seed=0)
    assert seed0[0] == evaluate_subnet(net, cfg, train, hold, bn_images=24)       # the recipe's measurement
    assert seed0[0] == pytest.approx((seed0[1] + seed0[2]) / 2)                     # same BN for every set
    monkeypatch.setattr(training, "FREEZE_FROM", 1)                                 # the frozen cut-out agrees
    assert evaluate_subnet_on(net, cfg, train, [hold, *halves], bn_images=24, bn_seed=0) == seed0
    drawn = []
    real = training.recalibrate_bn
    monkeypatch.setattr(training, "recalibrate_bn", lambda n, b: real(n, [drawn.append(x) or x for x in b]))
    for seed in (0, 1):
        evaluate_subnet_on(net, cfg, train, [hold], bn_images=24, bn_seed=seed)
    assert not torch.equal(drawn[0], drawn[1])                                      # another BN draw
    for k, v in net.state_dict().items():                                           # supernet stats untouched
        if k in stats:
            torch.testing.assert_close(v, stats[k])


def test_frozen_subnets_leave_nothing_in_the_global_jit_unit():
    """Tracing one sub-network per measurement once grew a process by ~24 MB each time (the traced methods stayed
    in TorchScript's global compilation unit): a predictor data set of 1,000 rows ran a 24 GB machine out."""
    import torch.jit._state as st
    net = build_supernet(TINY, seed=0).eval()
    before = len(st._python_cu.get_functions())
    x = torch.randn(2, 3, 16, 16)
    for cfg in (TINY.max_config(16), TINY.min_config(12), TINY.max_config(12)):
        frozen = training.frozen_subnet(net, cfg)
        net.set_active(cfg)
        with torch.no_grad():
            torch.testing.assert_close(frozen(torch.nn.functional.interpolate(x, size=cfg.r)),
                                       net(torch.nn.functional.interpolate(x, size=cfg.r)), rtol=1e-4, atol=1e-4)
    assert len(st._python_cu.get_functions()) == before


@torch.no_grad()
def test_bf16_frozen_teacher_is_float32_outside_and_close():
    net = build_supernet(TINY, seed=0).eval()
    cfg = TINY.max_config(16)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p32 = torch.softmax(training.frozen_subnet(net, cfg)(x), 1)
    p16 = torch.softmax(training.frozen_subnet(net, cfg, torch.bfloat16)(x), 1)
    assert p16.dtype == torch.float32 and not torch.equal(p32, p16)
    assert (p32 - p16).abs().max() < 0.05


def test_frozen_teacher_is_traced_at_the_largest_training_resolution(tmp_path, monkeypatch):
    """The frozen teacher's depthwise kernels are cropped for the maps of the resolution it is traced at, exact
    only up to it (test_fast_training checks that): it is traced at the largest resolution the run trains on,
    32 here, above the tiny supernet's own largest (16)."""
    import copy
    splits = load_dataset(make_images(str(tmp_path / "ds")), progress=False)
    train, hold = holdout_split(splits["train"], 6, seed=0)
    cfg = TrainConfig(phases=progressive_shrinking_phases(TINY, 0.2, 0.05), batch_size=6, resolutions=(24, 32),
                      threads=1)
    tr = ProgressiveShrinkingTrainer(TINY, cfg, train, hold, str(tmp_path / "out"), progress=False)
    tr.teacher = copy.deepcopy(tr.net).eval()
    traced = []
    real = training.frozen_subnet
    monkeypatch.setattr(training, "frozen_subnet", lambda net, c, dtype: traced.append(c.r) or real(net, c, dtype))
    tr._teacher_fn()
    assert traced == [32]


def test_teacher_precision_choice(monkeypatch):
    with pytest.raises(ValueError, match="teacher_precision 'half'"):
        TrainConfig(phases=[], teacher_precision="half")
    monkeypatch.setattr(training, "native_bf16", lambda: True)
    assert training.teacher_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    assert training.teacher_dtype("auto") == torch.float32
    assert training.teacher_dtype("bfloat16") == torch.bfloat16 and training.teacher_dtype("float32") == torch.float32


def test_active_clock_counts_long_gaps_as_pauses():
    t = [100.0]
    clock = ActiveClock(elapsed=5.0, paused=1.0, pause_s=60.0, now=lambda: t[0])
    for dt in (1.5, 2.0, 600.0, 1.0):                  # two steps, a 10-minute SIGSTOP, a step
        t[0] += dt
        clock.tick()
    assert clock.elapsed == 5.0 + 1.5 + 2.0 + 1.0 and clock.paused == 1.0 + 600.0


def test_trainer_keeps_pauses_out_of_its_training_time(tmp_path):
    tr = _trainer(tmp_path)
    state = tr.run(max_steps=3)
    assert state["elapsed_s"] > 0 and state["paused_s"] == 0.0
    tr2 = _trainer(tmp_path)
    tr2.pause_s = 0.0                                  # every interval now looks like a pause
    state2 = tr2.run(max_steps=2)
    assert state2["elapsed_s"] == state["elapsed_s"]   # resumed, and nothing more counted as training
    assert state2["paused_s"] > 0 and (state2["phase"], state2["step"]) != (state["phase"], state["step"])


def _trainer(tmp, schedule="progressive", steps_scale=1.0):
    splits = load_dataset(make_images(str(tmp / "ds")), progress=False)
    train, hold = holdout_split(splits["train"], 6, seed=0)
    phases = (progressive_shrinking_phases(TINY, 0.2 * steps_scale, 0.05) if schedule == "progressive"
              else one_shot_phases(TINY, 1.0, 0.05))
    cfg = TrainConfig(phases=phases, batch_size=6, seed=0, eval_images=6, bn_images=12, threads=1)
    return ProgressiveShrinkingTrainer(TINY, cfg, train, hold, str(tmp / "out"), progress=False)


def test_progressive_shrinking_runs_all_phases_and_logs(tmp_path):
    tr = _trainer(tmp_path)
    w0 = {k: v.clone() for k, v in tr.net.state_dict().items()}
    state = tr.run()
    assert state["done"] and state["phase"] == 6
    records = [json.loads(l) for l in open(tmp_path / "out" / "log.jsonl")]
    log = [r for r in records if r["event"] == "phase_end"]
    assert [r["phase"] for r in log] == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
    assert all(0.0 <= r["acc_largest"] <= 1.0 and 0.0 <= r["acc_smallest"] <= 1.0 for r in log)
    want = "float32"                                                      # the default; built once, first used
    assert [(r["phase"], r["precision"]) for r in records if r["event"] == "teacher"] == [("kernel", want)]
    sd = tr.net.state_dict()
    assert any(not torch.equal(w0[k], sd[k]) for k in sd if k.endswith("5to3_matrix"))   # kernel phase trained
    assert not torch.equal(w0["first_conv.conv.weight"], sd["first_conv.conv.weight"])
    assert tr.teacher is not None


def test_resume_continues_exactly(tmp_path):
    a = _trainer(tmp_path / "a")
    a.run()
    b = _trainer(tmp_path / "b")
    st = b.run(max_steps=7)        # stops mid-run, inside a phase, checkpointed
    assert not st["done"]
    c = _trainer(tmp_path / "b")    # a fresh process would do exactly this
    c.run()
    sa, sc = a.net.state_dict(), c.net.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sc[k], rtol=0, atol=1e-6, msg=k)


def test_ablation_script_on_tiny_data(tmp_path, monkeypatch):
    import bench.shrinking_ablation as ab
    root = make_images(str(tmp_path / "ds"))
    monkeypatch.setattr(ab, "get_spec", lambda name: TINY)
    res = ab.main(["--data", root, "--out", str(tmp_path / "abl"), "--train-images", "24", "--holdout", "6",
                   "--scale", "0.05", "--batch-size", "6", "--bn-images", "12", "--eval-images", "6",
                   "--no-progress"])
    # the same sub-network passes (one more where the shrinking schedule's total is odd)
    assert 0 <= res["passes"]["one-shot"] - res["passes"]["progressive"] <= 1
    assert res["steps"]["one-shot"] <= res["steps"]["progressive"]          # 2 per step against 1-2
    assert set(res["acc"]) == {"progressive", "one-shot"}
    assert all(len(v) == 8 for v in res["acc"].values())
    assert 0 <= res["teacher_holdout_acc"] <= 1
    assert json.load(open(tmp_path / "abl" / "ablation.json"))["acc"] == res["acc"]
    # --from takes the shared start from a checkpoint whose full phase is done, and refuses one that is not
    full = str(tmp_path / "abl" / "full" / "last.pt")
    args = ab.main.__globals__["argparse"].Namespace(start=full, seed=0)
    net = ab.teacher_net(TINY, args, None, None)
    saved = torch.load(full, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    payload = torch.load(full, weights_only=True)
    payload["state"]["phase"] = 0
    torch.save(payload, str(tmp_path / "early.pt"))
    with pytest.raises(SystemExit, match="full phase is not finished"):
        ab.teacher_net(TINY, ab.main.__globals__["argparse"].Namespace(start=str(tmp_path / "early.pt"), seed=0),
                       None, None)


def test_sample_draws_from_every_class_of_class_ordered_data():
    from ofa_core.data import ImageArray
    labels = np.repeat(np.arange(10), 100)            # stored class by class, as archives usually are
    data = ImageArray(np.zeros((1000, 2, 2, 3), np.uint8), labels, [str(i) for i in range(10)])
    sub = data.sample(100, seed=0)
    assert len(sub) == 100 and len(np.unique(sub.labels)) == 10
    np.testing.assert_array_equal(data.sample(100, seed=0).labels, sub.labels)
    assert data.sample(5000) is data
