from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ofa_core.latency import LatencyEntry as Entry
from service.db.models import Device, DeviceTiming, LatencyEntry, LatencyTable, ParetoFront, Supernet
from service.engine.tables import Table


def get_by_name(s: Session, name: str) -> Device | None:
    return s.scalar(select(Device).where(Device.name == name))


def get(s: Session, device_id: int) -> Device | None:
    return s.get(Device, device_id)


def list_devices(s: Session, offset: int, limit: int, supernet: str | None, q: str | None, kind: str | None
                 ) -> tuple[list[Device], int]:
    stmt = select(Device).join(Supernet, Device.supernet_id == Supernet.id)
    if supernet:
        stmt = stmt.where(Supernet.name == supernet)
    if q:
        stmt = stmt.where(Device.name.contains(q, autoescape=True))
    if kind:
        stmt = stmt.where(Device.kind == kind)
    total = s.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = list(s.scalars(stmt.order_by(Device.name).offset(offset).limit(limit)))
    return rows, int(total or 0)


def create(s: Session, name: str, supernet_id: int, description: str, kind: str) -> Device:
    d = Device(name=name, supernet_id=supernet_id, description=description, kind=kind, current_version=0)
    s.add(d)
    s.flush()
    return d


def add_table(s: Session, device: Device, table: Table, source: str, provenance: dict[str, Any], sha: str,
              batch_size: int = 1) -> LatencyTable:
    """A new table version, one row per operator; the device's current version moves to it."""
    version = (s.scalar(select(func.max(LatencyTable.version)).where(LatencyTable.device_id == device.id)) or 0) + 1
    row = LatencyTable(device_id=device.id, version=version, source=source, provenance=provenance, sha256=sha,
                       n_entries=sum(len(t) for t in table.values()), resolutions=sorted(table),
                       batch_size=int(batch_size))
    s.add(row)
    s.flush()
    s.execute(insert(LatencyEntry), [
        {"table_id": row.id, "resolution": r, "key": k, "count": e.count, "mean": e.mean, "std": e.std}
        for r, t in table.items() for k, e in t.items()])
    device.current_version = version
    s.flush()
    return row


def with_current_table(s: Session, name: str) -> tuple[Device, LatencyTable] | None:
    """A device (with its supernet) and its current table version, in one query."""
    row = s.execute(select(Device, LatencyTable).join(
        LatencyTable, (LatencyTable.device_id == Device.id) & (LatencyTable.version == Device.current_version))
        .where(Device.name == name)).first()
    return None if row is None else (row[0], row[1])


def current_table(s: Session, device: Device) -> LatencyTable | None:
    return s.scalar(select(LatencyTable).where(LatencyTable.device_id == device.id,
                                               LatencyTable.version == device.current_version))


def table_for_batch(s: Session, device: Device, batch_size: int, exclude_source: str | None = None
                    ) -> LatencyTable | None:
    """The newest table version timed at `batch_size` (optionally not of one source)."""
    stmt = select(LatencyTable).where(LatencyTable.device_id == device.id, LatencyTable.batch_size == batch_size)
    if exclude_source:
        stmt = stmt.where(LatencyTable.source != exclude_source)
    return s.scalar(stmt.order_by(LatencyTable.version.desc()).limit(1))


def batch_sizes(s: Session, device: Device) -> list[int]:
    return sorted(int(b) for b in s.scalars(select(LatencyTable.batch_size).where(
        LatencyTable.device_id == device.id).distinct()))


def with_table_for_batch(s: Session, name: str, batch_size: int) -> tuple[Device, LatencyTable | None] | None:
    d = get_by_name(s, name)
    return None if d is None else (d, table_for_batch(s, d, batch_size))


def add_timings(s: Session, device: Device, batch_size: int, rows: list[tuple[dict[str, Any], float]]) -> None:
    if rows:
        s.execute(insert(DeviceTiming), [{"device_id": device.id, "batch_size": int(batch_size), "config": c,
                                          "latency_ms": float(ms)} for c, ms in rows])


def timings(s: Session, device: Device, batch_size: int, limit: int) -> list[tuple[dict[str, Any], float]]:
    """The newest `limit` timings of a device at a batch size, oldest first."""
    rows = s.execute(select(DeviceTiming.config, DeviceTiming.latency_ms).where(
        DeviceTiming.device_id == device.id, DeviceTiming.batch_size == batch_size)
        .order_by(DeviceTiming.id.desc()).limit(limit)).all()
    return [(dict(c), float(ms)) for c, ms in reversed(rows)]


def table_version(s: Session, device: Device, version: int) -> LatencyTable | None:
    return s.scalar(select(LatencyTable).where(LatencyTable.device_id == device.id, LatencyTable.version == version))


def versions(s: Session, device: Device) -> list[LatencyTable]:
    return list(s.scalars(select(LatencyTable).where(LatencyTable.device_id == device.id)
                          .order_by(LatencyTable.version)))


def load_entries(s: Session, table_id: int) -> Table:
    out: Table = {}
    for r, k, c, m, sd in s.execute(select(LatencyEntry.resolution, LatencyEntry.key, LatencyEntry.count,
                                           LatencyEntry.mean, LatencyEntry.std)
                                    .where(LatencyEntry.table_id == table_id)):
        out.setdefault(int(r), {})[k] = Entry(float(m), float(sd), int(c))
    return out


def front_for(s: Session, supernet_id: int, table_id: int, version: str | None = None) -> ParetoFront | None:
    """The stored front of a table; with `version`, only one computed by that supernet version (a front of
    other weights or another predictor is stale: its accuracies are not this supernet's)."""
    stmt = select(ParetoFront).where(ParetoFront.supernet_id == supernet_id, ParetoFront.table_id == table_id)
    if version is not None:
        stmt = stmt.where(ParetoFront.supernet_version == version)
    return s.scalar(stmt)


def delete_stale_front(s: Session, supernet_id: int, table_id: int, version: str) -> int:
    """Remove a table's front computed by another supernet version (so the current one can be stored)."""
    return s.execute(delete(ParetoFront).where(ParetoFront.supernet_id == supernet_id,
                                               ParetoFront.table_id == table_id,
                                               ParetoFront.supernet_version != version)).rowcount


def fronts_missing(s: Session, limit: int = 100) -> list[tuple[int, int, str, str]]:
    """(device id, current table id, supernet name, supernet version) of current tables without a front of their
    supernet's recorded version: never computed (the broker was down) or computed by older weights/predictor."""
    current = (LatencyTable.device_id == Device.id) & (LatencyTable.version == Device.current_version)
    fresh = ((ParetoFront.table_id == LatencyTable.id) & (ParetoFront.supernet_id == Supernet.id)
             & (ParetoFront.supernet_version == Supernet.version))
    stmt = (select(Device.id, LatencyTable.id, Supernet.name, Supernet.version)
            .join(LatencyTable, current).join(Supernet, Supernet.id == Device.supernet_id)
            .outerjoin(ParetoFront, fresh).where(ParetoFront.id.is_(None)).order_by(LatencyTable.id).limit(limit))
    return [tuple(r) for r in s.execute(stmt).all()]


def save_front(s: Session, supernet_id: int, supernet_version: str, device_id: int, table_id: int,
               points: list[dict[str, Any]]) -> ParetoFront:
    row = ParetoFront(supernet_id=supernet_id, supernet_version=supernet_version, device_id=device_id,
                      table_id=table_id, points=points)
    s.add(row)
    s.flush()
    return row


def overview(s: Session, devices: list[Device]) -> dict[int, tuple[LatencyTable | None, int | None]]:
    """For a page of devices, in two queries: each one's current table version and the number of points of its
    stored Pareto front (None while it is being computed), without loading the fronts themselves."""
    ids = [d.id for d in devices]
    if not ids:
        return {}
    tables = {t.device_id: t for t in s.scalars(select(LatencyTable).join(
        Device, (LatencyTable.device_id == Device.id) & (LatencyTable.version == Device.current_version))
        .where(Device.id.in_(ids)))}
    counts = dict(s.execute(select(ParetoFront.table_id, func.json_array_length(ParetoFront.points))
                            .join(Supernet, (Supernet.id == ParetoFront.supernet_id)
                                  & (Supernet.version == ParetoFront.supernet_version))
                            .where(ParetoFront.table_id.in_([t.id for t in tables.values()]))).all())
    return {i: (tables.get(i), counts.get(tables[i].id) if i in tables else None) for i in ids}
