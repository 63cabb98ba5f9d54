"""Settings of each capability: jobs, auth, search, pub/sub, activity log, cache."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import NoDecode


class JobsSettings(BaseModel):
    """Jobs: the queue and its workers (docs/jobs.md)."""

    jobs_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules whose @job functions every worker runs (your "
        "own jobs; pgfirst's are always included).",
    )
    jobs_concurrency: int = Field(10, ge=1, description="Jobs a worker runs at once.")
    jobs_claim_batch: int = Field(
        200, ge=1, description="Most jobs claimed per statement (quick jobs; slow ones fewer)."
    )
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
    jobs_retention_hours: float = Field(
        72.0, gt=0, description="Hours finished jobs are kept (failures, and kept successes)."
    )
    jobs_keep_succeeded: bool = Field(
        False,
        description="Keep succeeded jobs (state succeeded) until the retention. Off: a success"
        " is deleted when recorded — one row write per job instead of two; its count and run"
        " time are in the metrics.",
    )
    jobs_synchronous_commit: bool = Field(
        False,
        description="Workers wait for the WAL flush on claims and completions. Off: a server"
        " crash may re-run the jobs of the last ~0.6 s (at-least-once either way); enqueues"
        " are always synchronous.",
    )


class AuthSettings(BaseModel):
    """Auth: tokens, password hashing, rate limits and mail (docs/auth.md)."""

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


class SearchSettings(BaseModel):
    """Search: full text, fuzzy and vector search (docs/search.md)."""

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


class PubSubSettings(BaseModel):
    """Pub/sub: streams, replay and retention (docs/pubsub.md)."""

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
    pubsub_synchronous_commit: bool = Field(
        False,
        description="Standalone Postgres publishes wait for the WAL flush (false: a server "
        "crash may lose the last fraction of a second of them; docs/pubsub.md).",
    )


class ActivitySettings(BaseModel):
    """Activity log: partitions and retention (docs/activity.md)."""

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


class CacheSettings(BaseModel):
    """Cache: the L1 tier, the backend and what is cached (docs/cache.md)."""

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
