"""Devices and their versioned latency tables."""
from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ofa_core.calibrate import calibrate as fit_table
from ofa_core.spec import ConfigError, SubnetConfig
from service.engine import tables as T
from service.errors import DeviceExists, DeviceNotFound, MalformedTable, SupernetNotFound, ValidationFailed
from service.supernets import repository as supernet_repo
from service.supernets.store import SupernetStore
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
                  kind: str = "uploaded", source: str = "uploaded", provenance: dict | None = None):
    """Create device + table version 1 in one transaction (commits); returns (device, table row)."""
    if not name or len(name) > 128 or any(c in name for c in "/?#% "):
        raise ValidationFailed("name", "a device name is 1-128 characters without / ? # % or spaces")
    sn = _supernet_row(s, store, supernet)
    if repo.get_by_name(s, name) is not None:
        raise DeviceExists(name)
    try:
        d = repo.create(s, name, sn.id, description, kind)
        t = repo.add_table(s, d, table, source, provenance or {}, T.table_sha256(table))
        s.commit()
    except IntegrityError:
        s.rollback()
        raise DeviceExists(name) from None
    return d, t


def add_version(s: Session, device, table: T.Table, source: str, provenance: dict | None = None,
                description: str | None = None):
    if description is not None:
        device.description = description
    t = repo.add_table(s, device, table, source, provenance or {}, T.table_sha256(table))
    s.commit()
    return t


def calibrate(store: SupernetStore, s: Session, device, timings: list[dict[str, Any]]) -> tuple[T.Table, dict]:
    """Whole-network timings -> a calibrated table (ofa_core.calibrate: NNLS with a pull towards the current one)."""
    eng = store.get(device.supernet.name)
    current = repo.current_table(s, device)
    table = repo.load_entries(s, current.id)
    cfgs = []
    for i, t in enumerate(timings):
        try:
            cfgs.append(SubnetConfig.from_dict(eng.spec, t["config"]))
        except ConfigError as e:
            raise ValidationFailed(f"timings[{i}].config.{e.field}", e.message) from None
        if cfgs[-1].r not in table:
            raise ValidationFailed(f"timings[{i}].config.r", f"resolution {cfgs[-1].r} is not in the device's table "
                                   f"({sorted(table)})")
    enc = np.stack([c.encode() for c in cfgs])
    measured = np.array([float(t["latency_ms"]) for t in timings])
    prior = eng.efficiency(current.id, lambda: table).latency_table
    fitted = fit_table(prior, enc, measured)
    after = np.asarray(fitted.predict(enc))
    return fitted.tables, {"method": "ofa_core.calibrate", "n_timings": len(cfgs), "based_on_version": current.version,
                           "mean_rel_error_after": float((np.abs(after - measured) / measured).mean()),
                           "environment": fitted.environment}


def device_out(s: Session, d, detail: bool = False) -> DeviceOut:
    out = DeviceOut(name=d.name, description=d.description, kind=d.kind, supernet=d.supernet.name,
                    current_version=d.current_version, created_at=d.created_at, updated_at=d.updated_at)
    if detail:
        out.versions = [TableVersion(version=t.version, source=t.source, sha256=t.sha256, n_entries=t.n_entries,
                                     resolutions=t.resolutions, provenance=t.provenance, created_at=t.created_at)
                        for t in repo.versions(s, d)]
        cur = repo.current_table(s, d)
        front = repo.front_for(s, d.supernet_id, cur.id) if cur else None
        out.pareto_front = front.points if front else None
    return out
