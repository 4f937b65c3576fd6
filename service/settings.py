"""The one settings object of the service. Every value comes from the environment (prefix ``OFA_``).

Embedded defaults need no external service: SQLite under the data directory (``default_var_dir``) and a
serverless kombu transport (SQLAlchemy over a SQLite file) as the Celery broker. Production sets
``OFA_DATABASE_URL`` to PostgreSQL and ``OFA_BROKER_URL`` to Redis. Job progress (SSE) is read from the
database, so it works on both.
"""
from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict



def default_var_dir() -> str:
    """The one data directory, absolute so that every command works from any working directory: `OFA_VAR_DIR`,
    else the project's `var/` in a source checkout, else the user's data directory (`$XDG_DATA_HOME/ofa`)."""
    if os.environ.get("OFA_VAR_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["OFA_VAR_DIR"]))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(root, "pyproject.toml")):
        return os.path.join(root, "var")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data), "ofa")


VAR_DIR = default_var_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OFA_", extra="ignore")

    var_dir: str = Field(VAR_DIR, description="data directory (absolute): the embedded database and broker, "
                         "registered predictors")
    database_url: str = Field(default=f"sqlite:///{VAR_DIR}/ofa.sqlite",
                              description="SQLAlchemy URL; PostgreSQL in production (postgresql+psycopg://...)")
    broker_url: str = Field(default=f"sqla+sqlite:///{VAR_DIR}/broker.sqlite",
                            description="Celery broker; redis://... in production")
    task_queue: str = "ofa"
    default_supernet: str = "ofa_mbv3_cifar10"
    supernets: list[str] = Field(default_factory=lambda: ["ofa_mbv3_cifar10", "ofa_mbv3_d234_e346_k357_w1.2"],
                                 description="names from the ofa_core registry to serve")
    weights: dict[str, str] = Field(default_factory=dict, description="supernet name -> weights file (overrides registry)")
    predictors: dict[str, str] = Field(default_factory=dict, description="supernet name -> predictor file")
    max_table_bytes: int = 2 * 1024 * 1024
    max_timings_bytes: int = 2 * 1024 * 1024
    default_population: int = 100
    default_generations: int = 100
    max_population: int = 1000
    max_generations: int = 2000
    floor_check_population: int = Field(100, description="at most this population (and floor_check_generations) "
                                        "for the accuracy search that decides at POST /specialize whether an "
                                        "accuracy floor is reachable")
    floor_check_generations: int = 60
    pareto_points: int = Field(1000, description="latency bins of the worker's bucketed-budget run that builds a "
                               "table's stored Pareto front (its points are the bins' non-dominated best)")
    pareto_population: int = Field(128, description="that run's children per generation: twice this")
    pareto_generations: int = 1000
    pareto_refine_budgets: int = Field(150, ge=0, le=2000, description="then a seeded single-budget search at this "
                                       "many budgets across the latency range, and as many again just below the "
                                       "front's largest accuracy steps, refines the stored front (0: none)")
    pareto_refine_population: int = Field(100, ge=4, le=1000)
    pareto_refine_generations: int = Field(100, ge=1, le=2000)
    sse_poll_s: float = 0.1
    job_lease_s: float = Field(30.0, description="a running job whose worker has not heartbeated for this long is "
                               "taken over (its worker died); a queued job published this long ago is re-published")
    job_heartbeat_s: float = Field(0.0, description="worker heartbeat period; 0: a quarter of job_lease_s")
    job_sweep_s: float = Field(10.0, description="period of the sweeper (in every worker) that recovers jobs "
                               "whose lease expired and re-publishes orphaned queued ones; 0 disables it")
    job_max_attempts: int = Field(3, description="a job whose worker died this many times fails (worker_lost)")
    search_auth: str = Field("beyond_defaults", description="API key needed for POST /specialize: 'all', "
                             "'beyond_defaults' (anonymous requests may only use the default options), 'none'")
    rate_limit_searches: int = Field(60, description="POST /specialize per key (or client address) per window; 0: off")
    rate_limit_window_s: float = 60.0
    specialize_concurrency: int = Field(4, description="POST /specialize requests prepared at once (others wait)")
    host_device_name: str = "host-cpu"
    log_level: str = "INFO"
    log_json: bool = True
    auto_profile_host: bool = True
    broker_publish_timeout_s: float = 3.0
    calibration_data: dict[str, str] = Field(default_factory=dict, description=(
        "supernet name -> BN-calibration images (ImageFolder tree, .tar.gz of one, or a compact .npz); every served "
        "sub-network is recalibrated on them; '' disables; default: the images packaged with the supernet"))
    evaluation_data: dict[str, str] = Field(default_factory=dict, description=(
        "supernet name -> evaluation images for measured_accuracy (same forms); '' disables; default: packaged"))
    calibration_images: int = Field(2000, ge=1, le=50000, description="BN-calibration images per sub-network")
    calibration_batch_size: int = Field(200, ge=1, le=2000)
    evaluation_max_images: int = Field(10000, ge=1, le=100000, description="at most this many evaluation images")
    calibration_retry_s: float = Field(60.0, description="a download of a sub-network whose recalibration was "
                                       "requested this long ago and is still pending publishes the task again")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    get_settings.cache_clear()
