"""SQLAlchemy 2 models of every domain. Alembic (migrations/) is fed by ``Base.metadata``."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint, text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, utcnow

ACTIVE_OR_DONE = "status IN ('queued', 'running', 'succeeded')"


class Supernet(Base):
    __tablename__ = "supernets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_path: Mapped[str | None] = mapped_column(String(1024))
    predictor_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(32), default="uploaded")
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id", ondelete="RESTRICT"), index=True)
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    supernet: Mapped[Supernet] = relationship(lazy="joined")


class LatencyTable(Base):
    """One version of a device's latency lookup table; its operators are rows of `latency_entries`."""
    __tablename__ = "latency_tables"
    __table_args__ = (UniqueConstraint("device_id", "version", name="uq_latency_tables_device_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))          # uploaded | calibrated | profiled | imported
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    n_entries: Mapped[int] = mapped_column(Integer)
    resolutions: Mapped[list[int]] = mapped_column(JSON)
    batch_size: Mapped[int] = mapped_column(Integer, default=1, server_default="1")   # latencies are per batch
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeviceTiming(Base):
    """A whole-network timing posted for calibration (ms per batch of `batch_size`); calibrations refit on all of
    a device's timings at that batch size."""
    __tablename__ = "device_timings"
    __table_args__ = (Index("ix_device_timings_device_batch", "device_id", "batch_size"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    batch_size: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LatencyEntry(Base):
    __tablename__ = "latency_entries"
    __table_args__ = (UniqueConstraint("table_id", "resolution", "key", name="uq_latency_entries_table_res_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id", ondelete="CASCADE"), index=True)
    resolution: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(512))
    count: Mapped[int] = mapped_column(Integer, default=1)
    mean: Mapped[float] = mapped_column(Float)
    std: Mapped[float] = mapped_column(Float, default=0.0)


class Subnet(Base):
    """A sub-network, deduplicated by content id (the id already names its supernet geometry)."""
    __tablename__ = "subnets"
    __table_args__ = (UniqueConstraint("supernet_id", "content_id", name="uq_subnets_supernet_content"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    content_id: Mapped[str] = mapped_column(String(32))
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    macs: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[int | None] = mapped_column(BigInteger)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # one live-or-answered job per request: concurrent identical POSTs collapse onto it
        Index("uq_jobs_request_live", "request_hash", unique=True,
              sqlite_where=text(ACTIVE_OR_DONE), postgresql_where=text(ACTIVE_OR_DONE)),
        Index("ix_jobs_status_created", "status", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="search")
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id", ondelete="CASCADE"), index=True)
    supernet_version: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id", ondelete="CASCADE"), index=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    source: Mapped[str] = mapped_column(String(16), default="search")   # search | pareto
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    # running: the worker's last heartbeat (its lease); queued: when the task was last published. The sweeper
    # (workers/sweeper.py) re-publishes jobs whose timestamp is older than the lease.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column()
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    subnet_id: Mapped[str | None] = mapped_column(ForeignKey("subnets.id", ondelete="SET NULL"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()

    device: Mapped[Device] = relationship(lazy="joined")
    supernet: Mapped[Supernet] = relationship(lazy="joined")
    table: Mapped[LatencyTable] = relationship(lazy="joined")



class JobEvent(Base):
    """One progress record of a running search (generation, best so far), in order: the SSE stream replays
    them, so a client sees every recorded generation however slowly it polls."""
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    generations: Mapped[int] = mapped_column(Integer)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

class ParetoFront(Base):
    __tablename__ = "pareto_fronts"
    __table_args__ = (UniqueConstraint("supernet_id", "table_id", name="uq_pareto_fronts_supernet_table"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id", ondelete="CASCADE"), index=True)
    supernet_version: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id", ondelete="CASCADE"), index=True)
    points: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column()


class SubnetCalibration(Base):
    """BN statistics of one sub-network recalibrated on one calibration set for one supernet version (active
    channels only, as safetensors bytes: kilobytes), and its measured accuracy on the evaluation set. Written
    once by a worker; downloads read it. status: pending | ready | failed."""
    __tablename__ = "subnet_calibrations"
    __table_args__ = (UniqueConstraint("subnet_id", "supernet_version", "calib_key", name="uq_subnet_calibrations_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"), index=True)
    supernet_version: Mapped[str] = mapped_column(String(64))
    calib_key: Mapped[str] = mapped_column(String(64))          # sha256 of the calibration set + recipe
    status: Mapped[str] = mapped_column(String(16), default="pending")
    stats: Mapped[bytes | None] = mapped_column(LargeBinary)
    n_images: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    eval_key: Mapped[str | None] = mapped_column(String(64))    # sha256 of the evaluation set + protocol
    measured_accuracy: Mapped[float | None] = mapped_column(Float)
    eval_images: Mapped[int | None] = mapped_column(Integer)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PredictorTraining(Base):
    """An accuracy predictor trained by a worker from posted (config, accuracy) pairs (`POST /supernets/{name}/
    predictor`): the canonical rows (encoded configs, accuracies 0..1), the parameters, and once done the saved
    file (registered for the supernet) and its held-out metrics. status: queued | running | succeeded | failed.
    `heartbeat_at`: while queued, when its task was last published (or when the next republish backs off to);
    while running, the deadline by which its worker must finish (its max_seconds after the claim), after which
    the sweeper takes it over (workers/sweeper.py `sweep_trainings`)."""
    __tablename__ = "predictor_trainings"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    supernet: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)          # {"enc": [[...]], "acc": [...], "notes": [...]}
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column()
