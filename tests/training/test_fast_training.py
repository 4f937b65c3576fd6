"""The training-speed paths: fast kernels and channels-last give the plain convs' outputs and gradients, the
published channel re-sort stages, one progressive-shrinking step, and the throughput benchmark's smoke run."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ofa_core.extract import extract
from ofa_core import mbv3
from ofa_core.mbv3 import build_supernet, crop_depthwise_convs, depthwise, plain_kernels, pointwise
from ofa_core.spec import SubnetConfig, get_spec
from ofa_core.training import Phase, _param_groups, train_step

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core"))
from ofa_test_utils import randomize  # noqa: E402

SPEC = get_spec("ofa_mbv3_cifar10")
real_matmul_grad = mbv3.filter_grad_by_matmul
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("h,w,k,stride", [(2, 2, 7, 1), (2, 2, 5, 1), (1, 1, 7, 1), (1, 1, 3, 1), (3, 3, 7, 1),
                                          (4, 4, 7, 1), (2, 4, 7, 1), (4, 4, 7, 2), (2, 2, 7, 2), (3, 3, 5, 2),
                                          (8, 8, 3, 1), (6, 6, 5, 2), (5, 7, 5, 1), (8, 8, 5, 2)])
def test_depthwise_crop_is_the_conv(h, w, k, stride, monkeypatch):
    """Outputs and both gradients equal the plain conv's, on the matmul filter gradient where it pays (small maps,
    5x5 / 7x7 kernels) and on oneDNN's elsewhere."""
    g = torch.Generator().manual_seed(h * 100 + w * 10 + k)
    x = torch.randn(3, 6, h, w, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    f = torch.randn(6, 1, k, k, generator=g, requires_grad=True)
    want = F.conv2d(x, f, None, stride, k // 2, 1, 6)
    got = depthwise(x, f, stride)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gw = torch.autograd.grad(want.square().sum(), (x, f))
    used = []
    monkeypatch.setattr(mbv3, "filter_grad_by_matmul", lambda *a: used.append(a[2:4]) or real_matmul_grad(*a))
    gg = torch.autograd.grad(got.square().sum(), (x, f))
    reach = mbv3.reach(k, h, w)
    assert bool(used) == mbv3.matmul_filter_grad_pays(h, w, *reach) and used in ([], [reach])
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    reach_h, reach_w = min(k, 2 * h - 1), min(k, 2 * w - 1)     # taps outside the central window never see a pixel
    outside = torch.ones(k, k, dtype=torch.bool)
    outside[(k - reach_h) // 2:(k + reach_h) // 2, (k - reach_w) // 2:(k + reach_w) // 2] = False
    assert (gg[1][:, 0][:, outside] == 0).all() and (gw[1][:, 0][:, outside] == 0).all()


def test_depthwise_crop_is_off_under_plain_kernels():
    x = torch.randn(1, 2, 2, 2)
    f = torch.randn(2, 1, 7, 7)
    seen = []
    real = F.conv2d
    with plain_kernels(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "conv2d", lambda *a: seen.append(a[1].shape) or real(*a))
        depthwise(x, f, 1)
    assert seen == [(2, 1, 7, 7)]


def test_pointwise_channels_last_is_a_gemm_view():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 8, 1, 1, generator=g)
    y = pointwise(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, w), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cropped_static_net_is_exact_up_to_its_resolution():
    """At r 16 the last stages' maps are 2x2: their 7x7 depthwise kernels keep the central 3x3 taps. The cropped
    net gives the same logits at r 16 and below; above, the cropped taps would have met pixels."""
    net = randomize(build_supernet(SPEC, seed=0), seed=4).eval()
    static = extract(net, SPEC.max_config(16)).eval()
    cropped = crop_depthwise_convs(copy.deepcopy(static), torch.zeros(1, 3, 16, 16))
    sizes = [m.kernel_size for m in cropped.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert (3, 3) in sizes and (7, 7) in sizes
    for r in (16, 12, 8):
        x = torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(r))
        torch.testing.assert_close(cropped(x), static(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(32))
    assert not torch.allclose(cropped(x), static(x), atol=1e-3)


def _loss_and_grads(net, x, cfg):
    net.zero_grad(set_to_none=True)
    net.set_active(cfg)
    torch.manual_seed(0)                         # the same dropout mask for both nets
    out = net(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _assert_grads_close(gg, gw, rel):
    assert gw.keys() == gg.keys()
    # gradients that vanish in exact arithmetic (a BN bias feeding another train-mode BN) are pure rounding:
    # measure every tensor against the largest gradient in the net
    scale = max(g.abs().max().item() for g in gw.values())
    for n in gw:
        torch.testing.assert_close(gg[n], gw[n], atol=rel * scale, rtol=rel, msg=n)


@pytest.mark.parametrize("r", [16, 24, 32])
def test_supernet_fast_kernels_match_plain_convs(r):
    """Train-mode forward and every parameter's gradient agree between the plain convs and the fast kernels,
    in each memory format, for random sub-networks; channels-last agrees with NCHW in the forward and in the
    direction of the whole gradient (torch's channels-last BN backward rounds differently, ~1e-2 of the largest
    gradient on a random net at batch 4, as much with plain convs as with the fast kernels)."""
    nchw = randomize(build_supernet(SPEC, seed=0), seed=2).train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, r, r, generator=torch.Generator().manual_seed(r))
    xl = x.contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(r)
    for cfg in [SPEC.max_config(r), SPEC.min_config(r)] + [SPEC.sample(rng, [r]) for _ in range(2)]:
        with plain_kernels():
            want, gw = _loss_and_grads(nchw, x, cfg)
            want_l, gw_l = _loss_and_grads(nhwc, xl, cfg)
        got, gg = _loss_and_grads(nchw, x, cfg)
        got_l, gg_l = _loss_and_grads(nhwc, xl, cfg)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_l, want_l, atol=1e-5, rtol=1e-5)
        _assert_grads_close(gg, gw, 1e-4)
        _assert_grads_close(gg_l, gw_l, 1e-4)
        torch.testing.assert_close(got_l, want, atol=1e-4, rtol=1e-4)
        flat = lambda g: torch.cat([v.flatten() for v in g.values()])          # noqa: E731
        assert F.cosine_similarity(flat(gg_l), flat(gw), dim=0) > 0.999


def _importance(net):
    return [b.conv.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3)) for b in net.blocks[1:]]


@torch.no_grad()
def test_sort_channels_stage_one_stays_within_the_e4_slice():
    """Published `re_organize_middle_weights(expand_ratio_stage=1)`: channels inside the e=4 slice stay inside it
    (re-sorted among themselves), the rest are sorted among themselves; stage 0 sorts all of them."""
    net = randomize(build_supernet(SPEC, seed=0), seed=3)
    for b in net.blocks[1:]:      # a spread of importances so that a full sort would move channels across
        w = b.conv.point_linear.conv.conv.weight
        w.mul_(torch.rand(w.shape[1], generator=torch.Generator().manual_seed(w.shape[1]))[None, :, None, None])
    before = [(b.conv.point_linear.conv.conv.weight.clone(), b.conv.depth_conv.conv.conv.weight.clone())
              for b in net.blocks[1:]]
    x = torch.randn(2, 3, 32, 32)
    cfg = SubnetConfig.create(SPEC, [5] * SPEC.n_blocks, [6] * SPEC.n_blocks, [3] * SPEC.n_stages, 32)
    net.eval().set_active(cfg)
    out_before = net(x)
    staged = copy.deepcopy(net)
    staged.sort_channels(expand_ratio_stage=1)
    moved_out = 0
    for b, (pw0, dw0), imp in zip(staged.blocks[1:], before, _importance(staged)):
        w4 = SPEC.mid_channels(b.conv.cin, 4)
        # the same set of projection columns inside the e=4 slice, now in descending importance
        cols0 = {tuple(c.flatten().tolist()) for c in pw0[:, :w4].unbind(1)}
        cols1 = {tuple(c.flatten().tolist()) for c in b.conv.point_linear.conv.conv.weight[:, :w4].unbind(1)}
        moved_out += len(cols0 - cols1)
        assert torch.all(imp[:w4][:-1] >= imp[:w4][1:]) and torch.all(imp[w4:][:-1] >= imp[w4:][1:])
    assert moved_out == 0
    # a permutation of whole middle channels (and SE's own) leaves the widest network the same function
    torch.testing.assert_close(staged(x), out_before, atol=1e-4, rtol=1e-4)
    full = copy.deepcopy(net)
    full.sort_channels()                      # stage 0: one global descending order
    crossed = 0
    for b, imp, (pw0, _) in zip(full.blocks[1:], _importance(full), before):
        assert torch.all(imp[:-1] >= imp[1:])
        w4 = SPEC.mid_channels(b.conv.cin, 4)
        cols0 = {tuple(c.flatten().tolist()) for c in pw0[:, :w4].unbind(1)}
        cols1 = {tuple(c.flatten().tolist()) for c in b.conv.point_linear.conv.conv.weight[:, :w4].unbind(1)}
        crossed += len(cols0 - cols1)
    assert crossed > 0                        # the check above would have seen a full re-sort


def test_train_step_accumulates_over_subnets_and_steps():
    torch.manual_seed(0)
    net = build_supernet(SPEC, seed=0).to(memory_format=torch.channels_last).train()
    teacher = copy.deepcopy(net).eval()
    teacher.set_max()
    opt = torch.optim.SGD(_param_groups(net, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), generator=g)
    rng = np.random.default_rng(0)
    phase = Phase("expand2", 1, 0.05, 2)
    w0 = net.classifier.linear.weight.clone()
    losses = [train_step(net, teacher, x, y, [SPEC.sample(rng, [32]) for _ in range(phase.n_subnets)], opt)
              for _ in range(15)]
    assert not torch.equal(w0, net.classifier.linear.weight)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])           # it learns the fixed batch
    assert all(np.isfinite(losses))


def test_bench_training_smoke(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_training.py"), "--threads", "1",
                          "--rounds", "1", "--steps", "1", "--batch", "8", "--curve-steps", "0",
                          "--data", str(tmp_path / "none.tar.gz")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "today (1 thread, NCHW, plain convs)" in out.stdout and "depth/expand (2 sub-networks + teacher)" in out.stdout
    assert out.stdout.count("x** |") == 3


def test_bench_training_geometries_smoke(tmp_path):
    """--geometries times the optimized loop per (width, stem stride) and prints each one's MACs: the larger
    geometry costs more MACs than the default's."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_training.py"), "--threads", "1",
                          "--rounds", "1", "--steps", "1", "--batch", "4", "--geometries", "0.5:2,0.5:1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| 0.5 |")]
    assert [r[2].strip() for r in rows] == ["2", "1"]
    macs = [float(r[3].split()[0]) for r in rows]
    assert macs[1] > 3 * macs[0] and rows[0][-2].strip() == "1.00x"


def test_kept_checkpoint_parts_rebuild_the_checkpoint(tmp_path):
    from ofa_core.run_status import join_checkpoint, split_checkpoint
    net = build_supernet(SPEC, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    payload = {"state_dict": net.state_dict(), "state": {"phase": 1, "step": 3}, "optimizer": opt.state_dict(),
               "teacher": net.state_dict(), "config": "{}", "spec": SPEC.name, "torch_rng": torch.get_rng_state()}
    torch.save(payload, tmp_path / "last.pt")
    parts = split_checkpoint(str(tmp_path / "last.pt"), str(tmp_path))
    assert sorted(os.path.basename(p) for p in parts) == ["last.model.pt", "last.optimizer.pt", "last.teacher.pt"]
    assert max(os.path.getsize(p) for p in parts) < os.path.getsize(tmp_path / "last.pt") * 0.6
    back = torch.load(join_checkpoint(str(tmp_path), str(tmp_path / "run")), weights_only=True)
    assert back.keys() == payload.keys() and back["state"] == payload["state"]
    for k, v in payload["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v)
    mom = opt.state_dict()["state"][0]["momentum_buffer"]
    got = back["optimizer"]["state"][0]["momentum_buffer"]        # kept as bfloat16, restored as float32
    assert got.dtype == torch.float32 and torch.equal(got, mom.to(torch.bfloat16).float()) and not torch.equal(got, mom)
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    opt.load_state_dict(back["optimizer"])                        # loads as an optimizer state
    sizes = {os.path.basename(p): os.path.getsize(p) for p in parts}
    assert sizes["last.optimizer.pt"] < 0.6 * sizes["last.model.pt"]


def test_kept_checkpoint_at_a_phase_boundary_resumes_with_a_fresh_optimizer(tmp_path):
    """A run kept between phases has no optimizer state; its parts must rebuild to an empty one (not {'state': {}}),
    and the run's phase log travels with the parts."""
    from ofa_core.run_status import join_checkpoint, keep_text_files, split_checkpoint
    net = build_supernet(SPEC, seed=0)
    payload = {"state_dict": net.state_dict(), "state": {"phase": 2, "step": 0}, "optimizer": {},
               "teacher": {}, "config": "{}", "spec": SPEC.name, "torch_rng": torch.get_rng_state()}
    torch.save(payload, tmp_path / "last.pt")
    split_checkpoint(str(tmp_path / "last.pt"), str(tmp_path))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "log.jsonl").write_text('{"event": "phase_end", "phase": "full"}\n')
    assert keep_text_files(str(tmp_path / "src"), str(tmp_path)) == ["log.jsonl"]
    back = torch.load(join_checkpoint(str(tmp_path), str(tmp_path / "run")), weights_only=True)
    assert back["optimizer"] == {} and back["state"] == payload["state"]
    assert (tmp_path / "run" / "log.jsonl").read_text() == '{"event": "phase_end", "phase": "full"}\n'
    (tmp_path / "run" / "log.jsonl").write_text("newer\n")            # a run directory's own record wins
    join_checkpoint(str(tmp_path), str(tmp_path / "run"))
    assert (tmp_path / "run" / "log.jsonl").read_text() == "newer\n"


def test_status_of_a_finished_training_says_so_and_counts_the_predictor_rows():
    from ofa_core.run_status import status_markdown
    base = {"supernet": "s", "measured_at": "now", "run_dir": "/r", "checkpoint_sha256": "x", "n_phases": 2,
            "phase_index": 1, "phase": "b", "step": 0, "phase_steps": 10, "elapsed_s": 7200.0,
            "resume_command": "python -m ofa_core.recipe", "test_images": 10, "bn_images": 5, "test_acc": {"largest": 0.5}}
    done = status_markdown({**base, "phases_done": ["a", "b"], "predictor_rows": 321})
    assert "training **finished** (all 2 phases: a, b)" in done and "holds 321 measured sub-networks" in done
    assert "step 0 of 10" not in done
    mid = status_markdown({**base, "phases_done": ["a"], "step": 4})
    assert "phase **2/2 `b`**, step 4 of 10 (40.0% of the phase)" in mid and "| largest | 50.00% |" in mid


def test_bench_teacher_precision_compares_the_two_teachers(capsys):
    """The bench's bf16-teacher check runs both frozen teachers of the shipped supernet on held-out images and
    prints how far apart their soft targets are (bf16 rounds, so they are close but not equal)."""
    import argparse
    from ofa_core.data import ImageArray
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_training
    rng = np.random.default_rng(0)
    hold = ImageArray(rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 24), list("abcdefghij"))
    bench_training.print_teacher_precision(SPEC, hold, argparse.Namespace(eval_images=16))
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
    agree, mean_abs, largest, kl = (float(c) for c in row[0].strip("| ").split(" | "))
    assert 0.8 <= agree <= 1.0 and 0 < mean_abs < 0.01 and largest < 0.2 and 0 <= kl < 0.01
