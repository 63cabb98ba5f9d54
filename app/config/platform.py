"""Settings of the platform pgfirst runs on: process, database, which backends are swapped in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import NoDecode

from app.config.common import (
    DEVELOPMENT_SECRET_KEY,
    PROJECT_ROOT,
    Backend,
    Environment,
    PoolMode,
)


class RuntimeSettings(BaseModel):
    """Runtime: the environment, the secret, the HTTP server, logs and the ops token."""

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
    max_request_head_bytes: int = Field(
        65_536,
        ge=4096,
        description="Largest request head (URL and headers) `app serve` reads; larger gets 431.",
    )
    request_head_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request head (slow-loris); then 408.",
    )
    request_body_timeout_seconds: float = Field(
        30.0, gt=0, description="Time a client has to send a request body; then 408."
    )
    metrics_public: bool | None = Field(
        None,
        description="Serve /metrics to anyone. Default: true except in production, where "
        "a scraper sends OPS_TOKEN (or an admin's token) as a bearer token.",
    )
    gc_freeze_after_startup: bool | None = Field(
        None,
        description="Exempt the objects alive after startup from garbage collection "
        "(gc.freeze) and collect the youngest generation every 7,000 allocations instead of "
        "700 (app/runtime.py): full collections are rarer and skip the startup heap. "
        "Default: true except ENV=test.",
    )
    api_docs_public: bool | None = Field(
        None,
        description="Serve /docs, /redoc and /openapi.json to anyone. Default: true except in "
        "production, where only /openapi.json answers, to OPS_TOKEN or an admin's token.",
    )


class DatabaseSettings(BaseModel):
    """Database: the primary, its direct URL, replicas, the pool (docs/foundation.md)."""

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
        description="Comma-separated read-replica DSNs. Lag-tolerant reads go to a healthy "
        "one, round robin; a client's reads after its write wait for the replica to replay "
        "it, else take the primary (docs/replicas.md).",
    )
    database_replica_check_interval: float = Field(
        1.0, gt=0, description="Seconds between health and lag checks of each replica."
    )
    database_replica_max_lag_seconds: float = Field(
        30.0, gt=0, description="A replica further behind than this takes no reads."
    )
    database_replica_max_lag_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="A replica with more WAL than this left to replay takes no reads.",
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
    db_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a new connection may take to open; past it the attempt fails "
        "and is retried (asyncpg's default is 60).",
    )
    db_pool_acquire_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a caller waits for a free pool connection; a request then "
        "gets 503 with Retry-After instead of queueing past its client's timeout.",
    )
    embedded_pg_dir: Path = Field(
        PROJECT_ROOT / ".data" / "pg",
        description="Data directory of the embedded PostgreSQL used when DATABASE_URL is unset.",
    )
    readiness_timeout: float = Field(2.0, gt=0, description="Seconds /readyz waits for the DB.")


class BackendSettings(BaseModel):
    """Swappable backends: the flags that swap in Redis (docs/flags.md)."""

    redis_url: str | None = Field(None, description="Redis URL for the redis backends.")
    redis_max_connections: int = Field(
        100,
        ge=1,
        description="Connections of each process's Redis client; a command beyond them waits "
        "for one (redis_pool_waits_total).",
    )
    redis_pool_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait for a Redis connection before the command fails as if Redis "
        "were away.",
    )
    cache_backend: Backend = Field("postgres", description="postgres | redis")
    pubsub_backend: Backend = Field("postgres", description="postgres | redis")
    rate_limit_backend: Backend = Field("postgres", description="postgres | redis")
    jobs_inline_worker: bool | None = Field(
        None,
        description="Run a job worker inside the web process. Default: true in development.",
    )
