"""A private TorchScript compilation unit for one trace.

Every `torch.jit.trace` of a new module instance adds its methods (700 or so for a sub-network) to the process's
global compilation unit, and nothing ever removes them: a process that traces one sub-network per measurement
grows by about 24 MB each time. Tracing inside `fresh_compilation_unit()` puts them in a unit of their own, which
is freed with the traced module; it also makes the `___torch_mangle_N` names, and so an exported archive's bytes,
depend only on the network, not on how many networks the process traced before.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_LOCK = threading.Lock()


@contextlib.contextmanager
def fresh_compilation_unit() -> Iterator[None]:
    """Trace (and freeze) inside this block; one block at a time, since the swapped state is process-wide."""
    import torch.jit._recursive as rec
    import torch.jit._state as st
    with _LOCK:
        cu, store = st._python_cu, rec.concrete_type_store
        st._python_cu, rec.concrete_type_store = torch._C.CompilationUnit(), rec.ConcreteTypeStore()
        try:
            yield
        finally:
            st._python_cu, rec.concrete_type_store = cu, store
