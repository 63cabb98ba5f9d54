"""Settings: every environment variable pgfirst reads, in one place.

Each field maps to the upper-case env var of the same name (``DATABASE_URL``,
``CACHE_BACKEND``...). Defaults are safe for development; production refuses to start
with the development secret or without a database. Flags are read once, by
``load_settings()`` when the app or a command starts, and travel in the services object —
nothing else in the code looks at the environment.

The ``signal_*`` fields are the thresholds of the scaling signals (docs/signals.md). Their
defaults come from the staged-scaling checklists the project is built on: common query mean
> 200 ms, same data fetched > 100x/minute, responses > 3 s, CPU > 70 % sustained, queue depth
> 1,000 / 10,000, job wait > 30 s / 5 min, p50 > 200 / 500 ms, p99 > 1 / 3 s, error rate
> 0.5 % / 2 %, tables > 100M rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Shipped so `scripts/dev` works out of the box; production refuses to start with it.
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"  # noqa: S105

Environment = Literal["development", "test", "production"]
Backend = Literal["postgres", "redis"]
PoolMode = Literal["direct", "pgbouncer"]


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names the env var and what it accepts."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # --- runtime -----------------------------------------------------------------------
    env: Environment = Field("development", description="development | test | production")
    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_KEY),
        description="Signs access tokens and cursors. At least 32 characters in production.",
    )
    host: str = Field("127.0.0.1", description="Interface `app serve` binds (0.0.0.0 in Docker).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    web_concurrency: int = Field(1, ge=1, description="uvicorn worker processes for `app serve`.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies trusted for X-Forwarded-For/Proto ('*' behind Fly's proxy).",
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_format: Literal["json", "console"] = Field(
        "json", description="json (one object per line) or console (readable, for a terminal)."
    )
    ops_token: SecretStr | None = Field(
        None,
        description="Bearer token for /ops routes (besides an admin user's access token). "
        "Unset: /ops answers only admins.",
    )
    max_request_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger gets 413."
    )

    # --- database ----------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="Primary PostgreSQL DSN. Unset: an embedded PostgreSQL 18 under "
        "EMBEDDED_PG_DIR (development and test only).",
    )
    database_direct_url: str | None = Field(
        None,
        description="DSN that bypasses PgBouncer, for LISTEN, session advisory locks and "
        "migrations. Defaults to DATABASE_URL.",
    )
    database_replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated read-replica DSNs; reads are routed there when set.",
    )
    db_pool_mode: PoolMode = Field(
        "direct",
        description="direct, or pgbouncer (transaction pooling: no server-side prepared "
        "statements; LISTEN goes to DATABASE_DIRECT_URL).",
    )
    db_pool_min: int = Field(2, ge=0, description="Connections the pool keeps open.")
    db_pool_max: int = Field(10, ge=1, description="Most connections the pool opens.")
    db_command_timeout: float = Field(
        30.0, gt=0, description="Seconds before a query is cancelled."
    )
    embedded_pg_dir: Path = Field(
        PROJECT_ROOT / ".data" / "pg",
        description="Data directory of the embedded PostgreSQL used when DATABASE_URL is unset.",
    )
    readiness_timeout: float = Field(2.0, gt=0, description="Seconds /readyz waits for the DB.")

    # --- swappable backends (docs/flags.md) --------------------------------------------
    redis_url: str | None = Field(None, description="Redis URL for the redis backends.")
    cache_backend: Backend = Field("postgres", description="postgres | redis")
    pubsub_backend: Backend = Field("postgres", description="postgres | redis")
    rate_limit_backend: Backend = Field("postgres", description="postgres | redis")
    jobs_inline_worker: bool | None = Field(
        None,
        description="Run a job worker inside the web process. Default: true in development.",
    )

    # --- jobs (docs/jobs.md) -------------------------------------------------------------
    jobs_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules whose @job functions every worker runs (your "
        "own jobs; pgfirst's are always included).",
    )
    jobs_concurrency: int = Field(10, ge=1, description="Jobs a worker runs at once.")
    jobs_claim_batch: int = Field(100, ge=1, description="Most jobs claimed per statement.")
    jobs_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between polls when no NOTIFY arrives (fallback)."
    )
    jobs_lease_seconds: float = Field(
        30.0, ge=1, description="Lease of a claimed job; heartbeats extend it."
    )
    jobs_shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds running jobs get to finish on shutdown."
    )
    jobs_default_max_attempts: int = Field(20, ge=1, description="Attempts before dead.")
    jobs_default_timeout: float = Field(300.0, gt=0, description="Seconds a job may run.")
    jobs_backoff_base: float = Field(2.0, gt=0, description="First retry delay, doubling.")
    jobs_backoff_max: float = Field(3600.0, gt=0, description="Longest retry delay.")
    jobs_retention_hours: float = Field(72.0, gt=0, description="Finished jobs kept.")
    jobs_synchronous_commit: bool = Field(
        False,
        description="Workers wait for the WAL flush on claims and completions. Off: a server"
        " crash may re-run the jobs of the last ~0.6 s (at-least-once either way); enqueues"
        " are always synchronous.",
    )

    # --- auth (docs/auth.md) -------------------------------------------------------------
    public_url: str = Field("http://127.0.0.1:8000", description="Base URL put in emailed links.")
    access_token_ttl_seconds: int = Field(900, ge=30, description="Access token lifetime.")
    refresh_token_ttl_days: int = Field(30, ge=1, description="Refresh token lifetime.")
    password_reset_ttl_minutes: int = Field(60, ge=5, description="Reset link lifetime.")
    email_verification_ttl_hours: int = Field(48, ge=1, description="Verify link lifetime.")
    argon2_time_cost: int = Field(2, ge=1, description="argon2id iterations.")
    argon2_memory_kib: int = Field(19_456, ge=1024, description="argon2id memory per hash.")
    argon2_parallelism: int = Field(1, ge=1, description="argon2id lanes.")
    password_hash_concurrency: int = Field(
        2, ge=1, description="Hashes computed at once (each holds ARGON2_MEMORY_KIB)."
    )
    password_hash_wait_seconds: float = Field(
        2.0, gt=0, description="Longest wait for a hashing slot before answering 503."
    )
    rate_limit_window_seconds: int = Field(60, ge=1, description="Rate-limit window.")
    rate_limit_login_per_ip: int = Field(30, ge=1, description="Logins per IP per window.")
    rate_limit_login_per_email: int = Field(5, ge=1, description="Logins per email per window.")
    rate_limit_signup_per_ip: int = Field(10, ge=1, description="Signups per IP per window.")
    rate_limit_signup_per_email: int = Field(3, ge=1, description="Signups per email per window.")
    rate_limit_reset_per_ip: int = Field(10, ge=1, description="Reset requests per IP.")
    rate_limit_reset_per_email: int = Field(3, ge=1, description="Reset requests per email.")
    trusted_proxy_header: str | None = Field(
        None,
        description="Header holding the client IP set by your proxy (e.g. fly-client-ip). "
        "Unset: the peer address (uvicorn already applies X-Forwarded-For from "
        "FORWARDED_ALLOW_IPS).",
    )
    mailer: Literal["console", "memory", "smtp"] = Field(
        "console", description="console (log), memory (kept in-process; tests) or smtp."
    )
    mail_from: str = Field("pgfirst <no-reply@localhost>", description="From address.")
    smtp_host: str = Field("localhost", description="SMTP server.")
    smtp_port: int = Field(587, description="SMTP port.")
    smtp_username: str | None = Field(None, description="SMTP user.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_starttls: bool = Field(True, description="Upgrade the SMTP connection with STARTTLS.")

    # --- search (docs/search.md) ---------------------------------------------------------
    search_language: str = Field(
        "english",
        pattern=r"^[a-z_]{2,40}$",
        description="Text search configuration (used by migration 0010 and every query).",
    )
    search_fuzzy_threshold: float = Field(
        0.3, ge=0, le=1, description="Least trigram similarity for mode=fuzzy."
    )
    search_max_limit: int = Field(50, ge=1, description="Largest `limit` of /api/search.")
    search_query_max_chars: int = Field(200, ge=1, description="Longest query accepted.")
    embedder: Literal["hashing", "sentence-transformers"] = Field(
        "hashing", description="hashing (built in, offline) or sentence-transformers."
    )
    embedder_model: str = Field(
        "all-MiniLM-L6-v2", description="Model name for EMBEDDER=sentence-transformers."
    )
    hnsw_ef_search: int = Field(200, ge=10, description="HNSW candidates per vector query.")
    search_exact_scan_below: int = Field(
        15_000,
        ge=0,
        description="Users with fewer tasks get exact vector search (a scan of their own "
        "rows) instead of HNSW; 0: always HNSW.",
    )
    search_hybrid_exact_scan_below: int = Field(
        30_000,
        ge=0,
        description="The same for the vector half of mode=hybrid, which asks for more "
        "candidates (an index walk costs more per candidate, an exact scan does not).",
    )
    search_size_cache_seconds: float = Field(
        300,
        gt=0,
        description="How long the answer to 'has this user SEARCH_EXACT_SCAN_BELOW tasks?' "
        "is cached.",
    )

    # --- pub/sub (docs/pubsub.md) --------------------------------------------------------
    pubsub_queue_size: int = Field(
        1_000, ge=1, description="Events a subscriber may fall behind before it is dropped."
    )
    pubsub_replay_limit: int = Field(
        1_000, ge=1, description="Most events replayed to a resuming subscriber."
    )
    pubsub_retention_seconds: int = Field(
        86_400, ge=60, description="How long published events are kept for replay."
    )
    pubsub_heartbeat_seconds: float = Field(
        15.0, gt=0, description="Idle interval after which SSE/WebSocket streams send a ping."
    )

    # --- activity log (docs/activity.md) -------------------------------------------------
    activity_partition_interval: Literal["day", "week", "month"] = Field(
        "month", description="Range of one activity_logs partition."
    )
    activity_premake_periods: int = Field(
        3, ge=1, description="Partitions created ahead of the current one."
    )
    activity_retention_periods: int = Field(
        12, ge=1, description="Whole periods kept; older partitions are dropped."
    )
    activity_page_limit: int = Field(100, ge=1, description="Largest page of /api/activity.")

    # --- cache (docs/cache.md) ------------------------------------------------------------
    cache_default_ttl_seconds: float = Field(300.0, gt=0, description="TTL when none is given.")
    cache_timeout_seconds: float = Field(
        0.25, gt=0, description="Longest a cache call may take before it counts as a miss."
    )
    cache_pool_size: int = Field(
        4, ge=1, description="Connections of the Postgres cache backend's own pool."
    )
    cache_l1_max_entries: int = Field(
        10_000, ge=0, description="Entries of the in-process L1 tier (0 turns it off)."
    )
    cache_l1_ttl_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest an entry stays in L1 (it also never outlives the backend's).",
    )
    cache_max_value_bytes: int = Field(
        1_048_576, ge=1, description="Largest serialised value stored; larger ones are skipped."
    )
    cache_max_entries: int = Field(
        100_000, ge=1, description="Rows the Postgres cache keeps; the oldest written go first."
    )
    cache_purge_batch: int = Field(5_000, ge=1, description="Rows deleted per purge statement.")
    cache_lock_ttl_seconds: float = Field(
        30.0, gt=0, description="Lease of a get_or_set loader's lock (frees a crashed loader)."
    )
    cache_lock_wait_seconds: float = Field(
        5.0, ge=0, description="How long get_or_set waits for another loader before loading."
    )
    cache_early_refresh_ratio: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="get_or_set reloads in the background within this share "
        "of the TTL before expiry (0 turns it off).",
    )
    cache_auth_ttl_seconds: float = Field(
        30.0, ge=0, description="How long the user behind a token is cached (0 turns it off)."
    )
    cache_list_ttl_seconds: float = Field(
        300.0, ge=0, description="How long list responses are cached (0 turns it off)."
    )
    stats_refresh_seconds: int = Field(
        300, ge=60, description="Interval between refreshes of the user_stats view."
    )

    # --- scaling signal thresholds (docs/signals.md) -----------------------------------
    signal_slow_query_mean_ms: float = Field(200, description="Common query mean time.")
    signal_hot_key_reads_per_minute: float = Field(100, description="Same key read per minute.")
    signal_slow_response_seconds: float = Field(3.0, description="HTTP response time.")
    signal_db_cpu_percent: float = Field(70, description="Database/host CPU, sustained.")
    signal_read_share: float = Field(0.8, description="Share of statements that are reads.")
    signal_connections_share: float = Field(0.7, description="Connections / max_connections.")
    signal_pool_wait_ms: float = Field(100, description="Wait for a pool connection (exhausted).")
    signal_queue_depth_warn: int = Field(1_000, description="Jobs available and waiting.")
    signal_queue_depth_critical: int = Field(10_000, description="Jobs available and waiting.")
    signal_job_wait_warn_seconds: float = Field(30, description="Oldest available job's wait.")
    signal_job_wait_critical_seconds: float = Field(300, description="Oldest job's wait.")
    signal_http_p50_warn_ms: float = Field(200, description="HTTP p50 latency.")
    signal_http_p50_critical_ms: float = Field(500, description="HTTP p50 latency.")
    signal_http_p99_warn_ms: float = Field(1_000, description="HTTP p99 latency.")
    signal_http_p99_critical_ms: float = Field(3_000, description="HTTP p99 latency.")
    signal_error_rate_warn: float = Field(0.005, description="Share of 5xx responses.")
    signal_error_rate_critical: float = Field(0.02, description="Share of 5xx responses.")
    signal_table_rows: int = Field(100_000_000, description="Rows before partitioning pays.")
    signal_notify_queue_usage: float = Field(
        0.5, description="pg_notification_queue_usage() share (pgfirst's own choice)."
    )

    @field_validator("database_replica_urls", "jobs_modules", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.jobs_inline_worker is None:
            object.__setattr__(self, "jobs_inline_worker", self.env == "development")
        needs_redis = [
            name
            for name in ("cache_backend", "pubsub_backend", "rate_limit_backend")
            if getattr(self, name) == "redis"
        ]
        if needs_redis and not self.redis_url:
            flags = ", ".join(n.upper() for n in needs_redis)
            raise ValueError(f"{flags}=redis needs REDIS_URL")
        if self.env == "production":
            secret = self.secret_key.get_secret_value()
            if secret == DEVELOPMENT_SECRET_KEY:
                raise ValueError("ENV=production refuses the development SECRET_KEY; set your own")
            if len(secret) < 32:
                raise ValueError("SECRET_KEY must be at least 32 characters in production")
            if not self.database_url:
                raise ValueError("ENV=production needs DATABASE_URL (no embedded server)")
        return self

    @property
    def run_inline_worker(self) -> bool:
        return bool(self.jobs_inline_worker)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (and overrides), with readable errors."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        # Never echo secrets or DSNs (they carry passwords) into logs.
        private = "SECRET" in name or "URL" in name
        shown = "" if private or isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"  {name}: {message}{shown}")
    return "\n".join(lines)
