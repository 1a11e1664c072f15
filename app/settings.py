"""Deployment settings: the one place that reads the environment.

No setting is required. With none, Gristmill runs the *embedded* profile: a SQLite database, an
artifact store and a serverless broker under ``GRISTMILL_DATA_DIR``. Production points
``GRISTMILL_DATABASE_URL`` at Postgres and ``GRISTMILL_BROKER_URL`` at Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from app.store.config import StoreConfig
from app.store.settings import StorageSettings


class Settings(StorageSettings):
    """Every ``GRISTMILL_*`` setting; the ``GRISTMILL_STORAGE_*`` ones are declared (once, for
    the inference service too) in :class:`store.settings.StorageSettings`."""

    model_config = SettingsConfigDict(env_prefix="GRISTMILL_", extra="ignore")

    data_dir: Path = Path("var")
    """Where the embedded database, broker folders and the artifact store live."""
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/gristmill.db``."""
    broker_url: str | None = None
    """Celery broker URL; default a filesystem broker under ``<data_dir>/broker``."""

    job_lease_seconds: float = Field(60.0, gt=0)
    """A running job's lease; a worker that misses heartbeats this long is presumed dead."""
    reaper_interval_seconds: float = Field(15.0, ge=0)
    """How often API and workers look for lost messages, expired leases and jobs whose files are
    now validated (0 disables all three: keep it on wherever jobs run)."""
    requeue_after_seconds: float = Field(60.0, gt=0)
    """A job still ``queued`` this long after its last enqueue is sent to the broker again."""
    max_attempts: int = Field(3, ge=1, le=100)
    """Attempts a job gets when workers die under it, before it fails."""
    job_stall_seconds: float = Field(1800.0, gt=0)
    """A running job's lease is renewed only while its stage reported progress within this long;
    a hung stage loses its lease, and its process is ended, so it never holds a job for ever."""
    job_time_limit_grace_seconds: float = Field(60.0, ge=0)
    """After a job's time limit its stage is asked to stop (saving a checkpoint); this long
    after that the job is failed and its processes are killed."""
    work_retention_hours: float = Field(168.0, gt=0)
    """A failed or cancelled job's work folder, store folders without a row, and unused token
    caches are deleted this long after they were last needed."""
    metrics_flush_seconds: float = Field(2.0, gt=0)
    """How often a running job writes its buffered metrics."""
    broker_visibility_timeout_seconds: int = Field(3600, ge=10)
    """Redis: when an unacknowledged (prefetched, not yet started) message is handed out again."""

    queue_devices: dict[str, int] = Field(default_factory=dict)
    """Devices one worker of each queue offers a job (GPUs, or processes on a CPU-only worker),
    e.g. ``{"gpu": 8}``; a job asking for more is refused. Queues not listed offer 1."""
    queue_device_memory_gb: dict[str, float] = Field(default_factory=dict)
    """Memory of one device of each queue's device class in GB, e.g. ``{"gpu": 141}``; the
    memory pre-flight refuses jobs that would not fit. Unlisted: this machine's RAM for the
    ``cpu`` queue and in the embedded profile (whose worker runs every queue on the CPU),
    80 GB for ``gpu`` in production."""
    queue_cores: dict[str, int] = Field(default_factory=dict)
    """CPU cores one worker of each queue offers a job, e.g. ``{"cpu": 32}``; a job asking for
    more ``threads`` is refused. Unlisted: this machine's cores."""
    queue_accelerated: dict[str, bool] = Field(default_factory=dict)
    """Whether a queue's workers have CUDA devices. Unlisted: ``gpu`` in production only."""

    inference_url: str = "http://127.0.0.1:8001"
    """The inference service the API forwards completions to (``gristmill inference``);
    ``gristmill serve`` starts one on the next port and points here."""
    inference_token: str | None = Field(None, repr=False)
    """``GRISTMILL_INFERENCE_TOKEN``: the secret the API presents to the inference service, the
    same variable the service reads; ``gristmill serve`` makes one for its own service."""
    inference_timeout_seconds: float = Field(600.0, gt=0)
    """How long the API waits for the inference service to answer (streams may run longer)."""

    max_upload_bytes: int = Field(20 * 1024**3, gt=0)
    """Largest dataset upload accepted."""

    max_json_body_bytes: int = Field(1024 * 1024, gt=0)
    """Largest JSON request body; a larger one answers 413 as soon as the byte count crosses it."""
    body_idle_timeout_seconds: float = Field(30.0, gt=0)
    """A request body that sends nothing for this long is cut off (408)."""
    send_timeout_seconds: float = Field(60.0, gt=0)
    """A client that reads nothing of a response (a download) for this long is disconnected."""
    storage_presigned_downloads: bool = False
    """Content routes answer 307 to a short-lived presigned URL of the object (when the store
    has them: S3), so large downloads bypass the API; the caller is authorised first."""
    max_streams_per_tenant: int = Field(4, ge=1)
    """Uploads and downloads one tenant may have in flight at once; more answer 429."""
    db_pool_size: int = Field(5, ge=1)
    """Postgres connections each API process keeps open."""
    db_max_overflow: int = Field(10, ge=0)
    """Extra Postgres connections an API process may open on bursts."""
    db_pool_timeout_seconds: float = Field(5.0, gt=0)
    """How long a request waits for a free database connection before answering 503."""
    auth_cache_seconds: float = Field(5.0, ge=0)
    """How long a process trusts a key it checked: a key revoked through another process works
    here at most this long (``app.api.auth_cache``)."""
    rate_limit: str = "600/minute"
    """Requests per API key, in the ``limits`` notation (``100/minute;10/second``); empty: none."""
    rater_rate_limit: str = "20/second"
    """Requests all invited raters of one comparison may make together (each token also counts
    against ``rate_limit``), so more invite links do not multiply a comparison's load. People
    rating answer a pair every few seconds each; a per-second window keeps a burst of scripted
    votes from taking the API's cores from other tenants (``benchmarks/bench_raters.py``)."""
    rater_failure_limit: str = "20/minute"
    """Failed rater-token lookups (unknown or revoked tokens) per client address; past it, 429."""
    auth_failure_limit: str = "30/minute"
    """Failed API-key lookups (unknown, revoked or expired keys) per client address, over a
    moving window; past it that address's key lookups answer 429 with Retry-After."""
    rate_limit_storage_url: str | None = None
    """Where rate-limit counters live; default the Redis broker, else in-process memory."""
    quota_active_jobs: int = Field(100, ge=0)
    """Queued plus running jobs one tenant may have; more submissions answer 403 (0: no limit)."""
    quota_storage_bytes: int = Field(1024**4, ge=0)
    """Bytes of datasets and artifacts one tenant may store; uploads beyond answer 403."""
    quota_device_hours_per_day: float = Field(0.0, ge=0)
    """Device-hours (a job's running time × its devices, on the gpu queue) one tenant may use in
    any 24 hours; submissions beyond answer 403 (0: no limit)."""

    secret_key: SecretStr | None = None
    """``GRISTMILL_SECRET_KEY``: encrypts tenant secrets at rest (a Fernet key, or any passphrase,
    hashed into one). Unset: a key made once in ``<data_dir>/secret.key``; set it wherever the API
    and workers do not share that folder."""

    metrics_token: SecretStr | None = None
    """The token a Prometheus scraper sends (``Authorization: Bearer …``) for ``/metrics``, whose
    job counts span every tenant. Unset: ``/metrics`` answers only clients on this machine."""

    log_format: Literal["text", "json"] = "text"
    """``json`` prints one JSON object per log line (with job_id, attempt, request_id)."""
    log_level: str = "INFO"
    """Python logging level."""

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gristmill.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_store(self) -> StoreConfig:
        """The store: ``GRISTMILL_STORAGE_URL``, else the folder ``GRISTMILL_STORAGE_DIR``,
        else ``<data_dir>/store``."""
        return self.store_config(default_root=self.data_dir / "store")

    @property
    def resolved_storage_dir(self) -> Path:
        """The local store's folder, for what needs one by path (the inference service's
        ``model_root`` on the embedded default)."""
        config = self.resolved_store
        if not config.is_local:
            raise ValueError(f"the store is object storage ({config.url}), not a local folder")
        return config.local_root.resolve()

    @property
    def resolved_scratch_dir(self) -> Path:
        """This machine's job folders (work, output, token cache) when the store is object
        storage; on a local store they live inside it."""
        return (self.data_dir / "scratch").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir(default=self.data_dir / "store-cache")

    @property
    def resolved_rate_limit_storage_url(self) -> str:
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        broker = self.resolved_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else "memory://"

    @property
    def is_embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def heartbeat_seconds(self) -> float:
        """Three heartbeats fit in a lease, so one slow write does not lose it."""
        return self.job_lease_seconds / 3


@lru_cache
def get_settings() -> Settings:
    return Settings()
