"""Host latency table via ofa_core.profiler, converted to the service's table shape."""
from __future__ import annotations

from typing import Callable

from ofa_core.spec import SupernetSpec


def profile_table(spec: SupernetSpec, progress: Callable[[int, int], None] | None = None, repeats: int | None = None,
                  show_bar: bool = True):
    from ofa_core.profiler import profile_table as _profile
    kw = {"repeats": repeats} if repeats else {}
    lt = _profile(spec, progress=show_bar, **kw)
    table = {int(r): {k: (int(e.count), float(e.mean), float(e.std)) for k, e in t.items()} for r, t in lt.tables.items()}
    return table, {"source": "measured", **lt.provenance()}
