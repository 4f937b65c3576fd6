"""Devices and their versioned latency tables."""
from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.engine import tables as T
from service.errors import DeviceExists, DeviceNotFound, MalformedTable, SupernetNotFound, ValidationFailed
from service.supernets import repository as supernet_repo
from service.validation import check_name
from service.supernets.store import SupernetStore
from . import calibration
from . import repository as repo
from .schemas import DeviceOut, TableVersion


def parse_upload(store: SupernetStore, supernet: str, docs: list[tuple[bytes, str | None, str | None]]) -> T.Table:
    """docs: (bytes, format, filename). Raises MalformedTable naming the key or line."""
    eng = store.get(supernet)
    try:
        return T.parse_upload(eng.spec, docs)
    except T.TableError as e:
        raise MalformedTable(e.message, key=e.key, line=e.line) from None


def get_device(s: Session, name: str):
    d = repo.get_by_name(s, name)
    if d is None:
        raise DeviceNotFound(name)
    return d


def _supernet_row(s: Session, store: SupernetStore, name: str):
    store.get(name)
    row = supernet_repo.get_by_name(s, name)
    if row is None:
        raise SupernetNotFound(name, sorted(store.engines))
    return row


def create_device(s: Session, store: SupernetStore, name: str, supernet: str, description: str, table: T.Table,
                  kind: str = "uploaded", source: str = "uploaded", provenance: dict | None = None,
                  batch_size: int = 1):
    """Create device + table version 1 in one transaction (commits); returns (device, table row)."""
    check_name("name", name)
    sn = _supernet_row(s, store, supernet)
    if repo.get_by_name(s, name) is not None:
        raise DeviceExists(name)
    try:
        d = repo.create(s, name, sn.id, description, kind)
        t = repo.add_table(s, d, table, source, provenance or {}, T.table_sha256(table), batch_size=batch_size)
        s.commit()
    except IntegrityError:
        s.rollback()
        raise DeviceExists(name) from None
    return d, t


def add_version(s: Session, device, table: T.Table, source: str, provenance: dict | None = None,
                description: str | None = None, batch_size: int = 1):
    if description is not None:
        device.description = description
    t = repo.add_table(s, device, table, source, provenance or {}, T.table_sha256(table), batch_size=batch_size)
    s.commit()
    return t


def calibrate(store: SupernetStore, s: Session, device, body) -> Any:
    """Posted timings (stored with the device) -> a new calibrated table version at their batch size."""
    table, rows, batch, prov = calibration.fit_device(store, s, device, device.supernet.name,
                                                      [t.model_dump() for t in body.timings], body.batch_size,
                                                      body.resolutions)
    repo.add_timings(s, device, batch, rows)
    return add_version(s, device, table, "calibrated", prov, body.description, batch_size=batch)


def create_from_timings(store: SupernetStore, s: Session, name: str, supernet: str, body):
    """A new device whose first table is calibrated from its timings alone (cost-model prior); commits."""
    check_name("name", name)
    sn = _supernet_row(s, store, supernet)
    if repo.get_by_name(s, name) is not None:
        raise DeviceExists(name)
    table, rows, batch, prov = calibration.fit_device(store, s, None, supernet,
                                                      [t.model_dump() for t in body.timings], body.batch_size,
                                                      body.resolutions)
    try:
        d = repo.create(s, name, sn.id, body.description or "", "calibrated")
        t = repo.add_table(s, d, table, "calibrated", prov, T.table_sha256(table), batch_size=batch)
        repo.add_timings(s, d, batch, rows)
        s.commit()
    except IntegrityError:
        s.rollback()
        raise DeviceExists(name) from None
    return d, t


def device_out(s: Session, d, detail: bool = False) -> DeviceOut:
    out = DeviceOut(name=d.name, description=d.description, kind=d.kind, supernet=d.supernet.name,
                    current_version=d.current_version, created_at=d.created_at, updated_at=d.updated_at)
    if detail:
        out.versions = [TableVersion(version=t.version, source=t.source, sha256=t.sha256, n_entries=t.n_entries,
                                     resolutions=t.resolutions, batch_size=t.batch_size, provenance=t.provenance,
                                     created_at=t.created_at)
                        for t in repo.versions(s, d)]
        cur = repo.current_table(s, d)
        front = repo.front_for(s, d.supernet_id, cur.id, d.supernet.version) if cur else None
        out.pareto_front = front.points if front else None
    return out
