import io
import os

import pytest
import torch
from safetensors.torch import save_file

from ofa_core.checkpoint import (CheckpointError, filter_checkpoint, load_published_checkpoint,
                                 load_supernet_weights)
from ofa_core.mbv3 import build_supernet
from ofa_core.spec import get_spec

from ofa_test_utils import SPECS, randomize

torch.set_num_threads(1)

W10 = SPECS[0]


@pytest.fixture(scope="module")
def source():
    return randomize(build_supernet(get_spec(W10), seed=3), seed=4)


@pytest.fixture()
def target():
    return build_supernet(get_spec(W10), seed=5)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _published_bytes(sd, legacy=False):
    if legacy:
        sd = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
              for k, v in sd.items()}
    buf = io.BytesIO()
    torch.save({"epoch": 179, "best_acc": 0.76, "state_dict": sd}, buf)
    return buf.getvalue()


def test_published_layout_has_475_keys(source):
    assert len(source.state_dict()) == 475


def test_load_published_format(source, target, tmp_path):
    data = _published_bytes(source.state_dict())
    p = tmp_path / "ofa_mbv3_w10.pth"
    p.write_bytes(data)
    assert not _same(source, target)
    assert load_published_checkpoint(str(p), target) is target
    assert _same(source, target)
    # file object and bytes too
    t2 = build_supernet(get_spec(W10), seed=6)
    load_published_checkpoint(io.BytesIO(data), t2)
    assert _same(source, t2)


def test_load_legacy_names(source, target):
    data = _published_bytes(source.state_dict(), legacy=True)
    raw = torch.load(io.BytesIO(data), weights_only=True)
    assert any(".mobile_inverted_conv." in k for k in raw["state_dict"])
    load_published_checkpoint(io.BytesIO(data), target)
    assert _same(source, target)


def test_bare_state_dict_and_module_prefix(source, target):
    buf = io.BytesIO()
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, buf)
    load_published_checkpoint(buf.getvalue(), target)
    assert _same(source, target)


def test_missing_and_unexpected_keys_are_named(source, target):
    sd = dict(source.state_dict())
    del sd["blocks.3.conv.depth_conv.conv.7to5_matrix"]
    del sd["classifier.linear.bias"]
    sd["blocks.21.conv.point_linear.conv.conv.weight"] = torch.zeros(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as ei:
        load_published_checkpoint(_published_bytes(sd), target)
    msg = str(ei.value)
    assert "2 missing" in msg and "blocks.3.conv.depth_conv.conv.7to5_matrix" in msg and "classifier.linear.bias" in msg
    assert "1 unexpected" in msg and "blocks.21.conv.point_linear.conv.conv.weight" in msg
    assert isinstance(ei.value, ValueError)
    assert ei.value.missing == ["blocks.3.conv.depth_conv.conv.7to5_matrix", "classifier.linear.bias"]
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_many_missing_keys_are_counted(source, target):
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.2")}
    with pytest.raises(CheckpointError) as ei:
        load_published_checkpoint(_published_bytes(sd), target)
    n = sum(1 for k in source.state_dict() if k.startswith("blocks.2") and "num_batches" not in k)
    assert f"{n} missing" in str(ei.value) and "more" in str(ei.value)


def test_shape_mismatch_is_named(source, target):
    sd = dict(source.state_dict())
    sd["blocks.1.conv.inverted_bottleneck.conv.conv.weight"] = torch.zeros(72, 16, 1, 1)
    with pytest.raises(CheckpointError) as ei:
        load_published_checkpoint(_published_bytes(sd), target)
    msg = str(ei.value)
    assert "blocks.1.conv.inverted_bottleneck.conv.conv.weight" in msg
    assert "expected [96, 16, 1, 1], got [72, 16, 1, 1]" in msg
    assert ei.value.mismatched == [("blocks.1.conv.inverted_bottleneck.conv.conv.weight", (96, 16, 1, 1), (72, 16, 1, 1))]


def test_wrong_width_supernet(source):
    w12 = build_supernet(get_spec(SPECS[1]), seed=0)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_published_checkpoint(_published_bytes(source.state_dict()), w12)


def test_unsafe_pickle_is_refused(target):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    buf = io.BytesIO()
    torch.save({"state_dict": {"x": Evil()}}, buf)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_published_checkpoint(buf.getvalue(), target)


def test_load_supernet_weights_dispatch(source, tmp_path):
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st))
    t = build_supernet(get_spec(W10), seed=7)
    load_supernet_weights(t, st)
    assert _same(source, t)
    for ext in (".pth", ".pt", ".tar"):
        p = tmp_path / f"w{ext}"
        p.write_bytes(_published_bytes(source.state_dict(), legacy=ext == ".tar"))
        t = build_supernet(get_spec(W10), seed=8)
        load_supernet_weights(t, p)
        assert _same(source, t)
    with pytest.raises(CheckpointError, match="extension"):
        load_supernet_weights(t, tmp_path / "w.h5")
    with pytest.raises(FileNotFoundError):
        load_supernet_weights(t, tmp_path / "nope.pth")


def test_filter_checkpoint_fills_num_batches_tracked(source, target):
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = filter_checkpoint({"state_dict": sd}, target)
    assert set(out) == set(target.state_dict())
    with pytest.raises(CheckpointError):
        filter_checkpoint({"state_dict": {"a": 1}})
