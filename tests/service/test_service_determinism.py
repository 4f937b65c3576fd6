"""Every download format's bytes are a function of the sub-network and the supernet version only: the same
sha256 in two processes, one of which exported other networks first (TorchScript's per-process name mangle
counter, ONNX's, pickle memo...)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ofa_service_testlib import ROOT

SCRIPT = r"""
import json, sys
from ofa_core.spec import get_spec
from service.engine.adapter import SupernetEngine
spec = get_spec("ofa_mbv3_cifar10")
eng = SupernetEngine(spec, sys.argv[1], None)
cfg = spec.max_config(32)
if sys.argv[2] == "warm":          # other networks first: any per-process counter moves on
    from ofa_core.spec import SubnetConfig
    for r in spec.resolutions[:2]:
        for fmt in ("torchscript", "onnx", "pt"):
            eng.artifact("other" + str(r), spec.max_config(r) if r != 32 else spec.min_config(r), fmt)
print(json.dumps({fmt: eng.artifact("target", cfg, fmt).sha256 for fmt in ("safetensors", "pt", "torchscript", "onnx")}))
"""


def _hashes(weights: str, mode: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, weights, mode], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_format_has_the_same_bytes_in_two_processes(assets):
    weights, _ = assets
    a, b = _hashes(weights, "cold"), _hashes(weights, "warm")
    assert set(a) == {"safetensors", "pt", "torchscript", "onnx"}
    assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
