"""This host's latency table, measured by ofa_core.profiler, in the service's table shape."""
from __future__ import annotations

from typing import Any

from ofa_core.profiler import profile_table as _profile
from ofa_core.spec import SupernetSpec
from .tables import Table


def profile_table(spec: SupernetSpec, repeats: int | None = None, show_bar: bool = True, check: int = 0,
                  supernet: Any = None) -> tuple[Table, dict[str, Any]]:
    """In-context profile (ofa_core.profiler, network mode); with `check`, that many random sub-networks are timed
    end to end alongside and the table's agreement with them lands in the provenance (environment["check"])."""
    lt = _profile(spec, progress=show_bar, check=check, supernet=supernet, **({"repeats": repeats} if repeats else {}))
    return lt.tables, lt.provenance()
