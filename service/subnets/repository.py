from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import Subnet


def get(s: Session, subnet_id: str) -> Subnet | None:
    return s.get(Subnet, subnet_id)


def get_or_create(s: Session, subnet_id: str, supernet_id: int, config: dict[str, Any], metrics: dict[str, Any]
                  ) -> Subnet:
    """Dedup by content id: an existing row is reused (a savepoint absorbs a concurrent insert)."""
    row = s.get(Subnet, subnet_id)
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = Subnet(id=subnet_id, content_id=subnet_id, supernet_id=supernet_id, config=config,
                         macs=metrics.get("macs"), params=metrics.get("params"),
                         peak_memory_bytes=metrics.get("peak_memory_bytes"))
            s.add(row)
    except IntegrityError:
        row = s.get(Subnet, subnet_id)
    return row


def ensure(s: Session, subnet_id: str, supernet_id: int, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Insert the sub-network unless it exists, in one statement (INSERT .. ON CONFLICT DO NOTHING)."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[s.get_bind().dialect.name]
    s.execute(dialect.insert(Subnet).values(
        id=subnet_id, content_id=subnet_id, supernet_id=supernet_id, config=config, macs=metrics.get("macs"),
        params=metrics.get("params"), peak_memory_bytes=metrics.get("peak_memory_bytes")
    ).on_conflict_do_nothing())
