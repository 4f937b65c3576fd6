"""SQL of the subnet_calibrations table (and the job results that wait for it)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Job, SubnetCalibration


def get(s: Session, subnet_id: str, supernet_version: str, calib_key: str) -> SubnetCalibration | None:
    return s.scalar(select(SubnetCalibration).where(
        SubnetCalibration.subnet_id == subnet_id, SubnetCalibration.supernet_version == supernet_version,
        SubnetCalibration.calib_key == calib_key))


def request(s: Session, subnet_id: str, supernet_version: str, calib_key: str) -> bool:
    """Insert a pending row unless one exists (one statement); True when this call inserted it."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[s.get_bind().dialect.name]
    now = utcnow()
    r = s.execute(dialect.insert(SubnetCalibration).values(
        subnet_id=subnet_id, supernet_version=supernet_version, calib_key=calib_key, status="pending",
        requested_at=now, created_at=now, updated_at=now).on_conflict_do_nothing()
        .returning(SubnetCalibration.id))           # rowcount is not reliable here on psycopg
    return r.scalar() is not None


def touch(s: Session, row_id: int, older_than) -> bool:
    """Move requested_at to now if it is older than `older_than` (one caller wins): True when this call did."""
    r = s.execute(update(SubnetCalibration).where(SubnetCalibration.id == row_id,
                                                  SubnetCalibration.status != "failed",
                                                  SubnetCalibration.requested_at < older_than)
                  .values(requested_at=utcnow()))
    return r.rowcount == 1


def save(s: Session, subnet_id: str, supernet_version: str, calib_key: str, **fields: Any) -> SubnetCalibration:
    """Write the outcome (status ready/failed, statistics, accuracy ...) into the row, creating it if needed."""
    row = get(s, subnet_id, supernet_version, calib_key)
    if row is None:
        request(s, subnet_id, supernet_version, calib_key)
        row = get(s, subnet_id, supernet_version, calib_key)
    for k, v in fields.items():
        setattr(row, k, v)
    row.updated_at = utcnow()
    s.flush()
    return row


def waiting_jobs(s: Session, subnet_id: str) -> list[Job]:
    """Succeeded jobs answering with this sub-network whose result still lists pending fields."""
    jobs = s.scalars(select(Job).where(Job.subnet_id == subnet_id, Job.status == "succeeded")).all()
    return [j for j in jobs if j.result and j.result.get("pending")]


def set_result(s: Session, job: Job, result: dict[str, Any]) -> None:
    s.execute(update(Job).where(Job.id == job.id).values(result=result))
