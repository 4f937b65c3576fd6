"""The Celery app. Broker from settings (serverless SQLite transport by default, Redis in production).

No result backend: tasks write their results to the database.
"""
from __future__ import annotations

import os

from celery import Celery

from service.settings import Settings, get_settings


def _prepare_broker(url: str) -> str:
    if url.startswith("sqla+sqlite:///"):
        path = url[len("sqla+sqlite:///"):]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    return url


def _transport_options(settings: Settings, worker: bool) -> dict:
    """Redis: an unacknowledged message (its worker died) is delivered again after `visibility_timeout`, set from
    the job lease (4 leases, at least a minute; the sweeper recovers the job after one lease anyway, and a
    delivery of a job that is still running is retried, not dropped). The API's socket timeout is the publish
    deadline, so a hung broker cannot hold its threads for long."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        t = settings.broker_publish_timeout_s
        return {"socket_connect_timeout": t, "socket_timeout": 10 if worker else t,
                "visibility_timeout": max(60, int(4 * settings.job_lease_s))}
    return {}


def make_celery(settings: Settings | None = None, with_tasks: bool = False) -> Celery:
    settings = settings or get_settings()
    app = Celery("ofa", broker=_prepare_broker(settings.broker_url), include=["workers.tasks"] if with_tasks else [])
    app.conf.update(
        task_default_queue=settings.task_queue,
        task_routes={"ofa.*": {"queue": settings.task_queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_publish_timeout_s,
        broker_transport_options=_transport_options(settings, with_tasks),
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


celery_app = make_celery(with_tasks=True)
app = celery_app
