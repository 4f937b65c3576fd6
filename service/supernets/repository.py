from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Supernet


def get(s: Session, supernet_id: int) -> Supernet | None:
    return s.get(Supernet, supernet_id)


def get_by_name(s: Session, name: str) -> Supernet | None:
    return s.scalar(select(Supernet).where(Supernet.name == name))


def upsert(s: Session, name: str, version: str, spec: dict[str, Any], weights_path: str | None,
           predictor_path: str | None) -> Supernet:
    row = get_by_name(s, name)
    if row is None:
        row = Supernet(name=name, version=version, spec=spec, weights_path=weights_path, predictor_path=predictor_path)
        s.add(row)
    else:
        row.version, row.spec, row.weights_path, row.predictor_path = version, spec, weights_path, predictor_path
    s.flush()
    return row


def list_all(s: Session) -> list[Supernet]:
    return list(s.scalars(select(Supernet).order_by(Supernet.name)))
