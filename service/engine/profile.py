"""This host's latency table, measured by ofa_core.profiler, in the service's table shape."""
from __future__ import annotations

from typing import Any

from ofa_core.profiler import profile_table as _profile
from ofa_core.spec import SupernetSpec
from .tables import Table


def profile_table(spec: SupernetSpec, repeats: int | None = None, show_bar: bool = True) -> tuple[Table, dict[str, Any]]:
    lt = _profile(spec, progress=show_bar, **({"repeats": repeats} if repeats else {}))
    return lt.tables, lt.provenance()
