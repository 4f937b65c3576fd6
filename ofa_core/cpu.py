"""What this CPU can do natively, for choosing kernels and precisions (pure torch; reads /proc/cpuinfo on Linux)."""
from __future__ import annotations

import functools
import re

import torch

_BF16_FLAGS = re.compile(r"\b(avx512_bf16|amx_bf16)\b")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX) and torch's oneDNN can use them. Where it has
    not, oneDNN emulates bf16 and a bf16 conv is slower than a float32 one."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(_BF16_FLAGS.search(_cpu_flags())) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
