"""Prometheus metrics (served at /metrics)."""
from prometheus_client import Counter, Histogram

REQUESTS = Counter("ofa_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("ofa_http_request_seconds", "HTTP request latency", ["method", "route"])
JOBS_CREATED = Counter("ofa_jobs_created_total", "search jobs queued")
SPECIALIZE_ANSWERS = Counter("ofa_specialize_answers_total", "POST /specialize outcomes", ["kind"])
CHECKPOINT_BYTES = Counter("ofa_checkpoint_bytes_total", "checkpoint bytes served", ["format"])
