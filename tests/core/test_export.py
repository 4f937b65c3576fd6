import hashlib
import io
import json
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load as st_load

from ofa_core.checkpoint import CheckpointError
from ofa_core.export import (SafetensorsStream, export_onnx_bytes, export_pt_bytes, export_safetensors,
                             export_torchscript_bytes, load_safetensors_checkpoint)
from ofa_core.extract import StaticMobileNetV3, extract, extract_state_dict, net_config
from ofa_core.spec import SubnetConfig, get_spec

from ofa_test_utils import SPECS, supernet

torch.set_num_threads(1)
W10, W12, CIFAR = SPECS


def _cfg(name, seed=0, r=None):
    spec = get_spec(name)
    return spec.sample(np.random.default_rng(seed), resolutions=[r] if r else None)


def test_safetensors_stream_loads_back_identically():
    net = supernet(W10)
    cfg = _cfg(W10, 1, 160)
    sd = extract_state_dict(net, cfg)
    stream = export_safetensors(net, cfg)
    data = stream.to_bytes()
    assert len(data) == stream.total_size
    assert hashlib.sha256(data).hexdigest() == stream.sha256
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0 and n + 8 == stream.header_size
    loaded = st_load(data)  # the reference implementation accepts our bytes
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    sd2, meta = load_safetensors_checkpoint(data)
    assert list(sd2) == list(sd)
    assert meta["supernet"] == W10 and meta["supernet_version"] == get_spec(W10).version
    assert SubnetConfig.from_json(get_spec(W10), meta["config"]) == cfg
    assert json.loads(meta["net_config"]) == net_config(get_spec(W10), cfg)
    assert json.loads(meta["run_config"]) == {"image_size": 160}
    assert meta["tensors_sha256"] == hashlib.sha256(data[stream.header_size:]).hexdigest()
    # rebuilding from the metadata alone gives the sub-network
    static = StaticMobileNetV3.from_net_config(json.loads(meta["net_config"])).eval()
    static.load_state_dict(sd2, strict=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        net.set_active(cfg)
        assert (static(x) - net(x)).abs().max() <= 1e-5


def test_total_size_known_before_first_byte_and_ranges():
    net = supernet(CIFAR)
    cfg = _cfg(CIFAR, 2)
    stream = export_safetensors(net, cfg, chunk_size=1000)  # small chunks: ranges cross chunk edges
    size = stream.total_size
    data = b"".join(stream.iter_bytes())
    assert len(data) == size
    rng = np.random.default_rng(0)
    points = [0, 1, 7, 8, stream.header_size - 1, stream.header_size, stream.header_size + 1, size - 1, size]
    points += [int(v) for v in rng.integers(0, size + 1, 40)]
    for a in points:
        for b in (a, min(size, a + 1), min(size, a + 13), min(size, a + 4099), size):
            assert b"".join(stream.iter_bytes(a, b)) == data[a:b], (a, b)
    with pytest.raises(ValueError):
        list(stream.iter_bytes(5, size + 1))
    with pytest.raises(ValueError):
        list(stream.iter_bytes(10, 5))


def test_stream_generic_dtypes_and_compatibility():
    sd = {"a": torch.arange(6, dtype=torch.float32).view(2, 3).t(),   # non-contiguous
          "b": torch.tensor(5, dtype=torch.int64),                      # 0-dim
          "c": torch.tensor([True, False, True]),
          "d": torch.randn(3, 2).to(torch.bfloat16),
          "e": torch.zeros(0, 4), "f": torch.randn(5).half()}
    s = SafetensorsStream(sd, {"note": "x"})
    loaded = st_load(s.to_bytes())
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    out, meta = load_safetensors_checkpoint(s.to_bytes())
    assert meta["note"] == "x" and list(out) == list(sd)


def test_load_safetensors_checkpoint_verifies(tmp_path):
    net = supernet(CIFAR)
    stream = export_safetensors(net, _cfg(CIFAR, 3))
    p = tmp_path / "sub.safetensors"
    assert stream.write_to(p) == stream.total_size
    sd, meta = load_safetensors_checkpoint(p)
    assert meta["supernet"] == CIFAR
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    with pytest.raises(CheckpointError, match="sha256"):
        load_safetensors_checkpoint(bytes(data))
    load_safetensors_checkpoint(bytes(data), verify=False)
    with pytest.raises(CheckpointError):
        load_safetensors_checkpoint(b"\x01\x02")


def test_pt_export():
    net = supernet(W10)
    cfg = _cfg(W10, 4, 128)
    data = export_pt_bytes(net, cfg)
    obj = torch.load(io.BytesIO(data), weights_only=True)
    assert set(obj) == {"state_dict", "net_config", "run_config"}
    assert obj["run_config"] == {"image_size": 128}
    sd = extract_state_dict(net, cfg)
    assert list(obj["state_dict"]) == list(sd)
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in sd.items())
    # views were not saved with their whole supernet storage
    n_bytes = sum(v.numel() * v.element_size() for v in sd.values())
    assert len(data) < n_bytes * 1.1 + 200_000


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export():
    net = supernet(CIFAR)
    cfg = _cfg(CIFAR, 5, 32)
    data = export_torchscript_bytes(net, cfg)
    ts = torch.jit.load(io.BytesIO(data))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        net.set_active(cfg)
        assert (ts(x) - net(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name,r", [(CIFAR, 32), (W10, 128)])
def test_onnx_export_matches(name, r):
    net = supernet(name)
    cfg = _cfg(name, 6, r)
    data = export_onnx_bytes(net, cfg)
    model = onnx.load_from_string(data)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        static = extract(net, cfg)
        ref = static(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(ref).max() > 1e-3
    assert np.abs(got - ref).max() <= 1e-4


def test_save_safetensors_is_byte_stable_and_loads_with_safetensors(tmp_path):
    """The files the recipe ships (supernet weights, predictor) come out byte for byte the same for the same
    tensors and metadata, so their sha256 in the model card is reproducible; the safetensors package reads them."""
    from safetensors import safe_open
    from ofa_core.recipe import save_supernet
    from ofa_core.stfile import save_safetensors
    spec = get_spec("ofa_mbv3_cifar10")
    net = supernet("ofa_mbv3_cifar10")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    extra = {"test_acc": {"largest": 0.5, "smallest": 0.25}, "recipe": "progressive shrinking"}
    save_supernet(net, spec, str(a), extra)
    save_supernet(net, spec, str(b), dict(extra))
    assert a.read_bytes() == b.read_bytes()
    with safe_open(str(a), framework="pt") as f:
        assert f.metadata()["supernet"] == spec.name and json.loads(f.metadata()["test_acc"])["largest"] == 0.5
        for k, v in net.state_dict().items():
            assert torch.equal(f.get_tensor(k), v)
    save_safetensors({"x": torch.arange(3)}, a, {"k": "v"})          # replaced in one step
    assert st_load(a.read_bytes())["x"].tolist() == [0, 1, 2]

