"""The one Settings class: every settings group, the checks across them, and how it loads."""

from __future__ import annotations

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config.capabilities import (
    ActivitySettings,
    AuthSettings,
    CacheSettings,
    JobsSettings,
    PubSubSettings,
    SearchSettings,
)
from app.config.common import DEVELOPMENT_SECRET_KEY, SettingsError
from app.config.platform import BackendSettings, DatabaseSettings, RuntimeSettings
from app.config.signals import SignalSettings

# Fine on a laptop; in production, emailed links would point at no user's machine.
DEFAULT_PUBLIC_URL: str = AuthSettings.model_fields["public_url"].default

# In the order docs/settings.md lists them.
GROUPS: tuple[type, ...] = (
    RuntimeSettings,
    DatabaseSettings,
    BackendSettings,
    JobsSettings,
    AuthSettings,
    SearchSettings,
    PubSubSettings,
    ActivitySettings,
    CacheSettings,
    SignalSettings,
)


class Settings(
    SignalSettings,
    CacheSettings,
    ActivitySettings,
    PubSubSettings,
    SearchSettings,
    AuthSettings,
    JobsSettings,
    BackendSettings,
    DatabaseSettings,
    RuntimeSettings,
    BaseSettings,
):
    model_config = SettingsConfigDict(
        env_file=None,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
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
        if self.gc_freeze_after_startup is None:
            object.__setattr__(self, "gc_freeze_after_startup", self.env != "test")
        for exposure in ("metrics_public", "api_docs_public"):
            if getattr(self, exposure) is None:
                object.__setattr__(self, exposure, self.env != "production")
        needs_redis = [
            name
            for name in ("cache_backend", "pubsub_backend", "rate_limit_backend")
            if getattr(self, name) == "redis"
        ]
        if needs_redis and not self.redis_url:
            flags = ", ".join(n.upper() for n in needs_redis)
            raise ValueError(f"{flags}=redis needs REDIS_URL")
        if self.env == "production":
            problems = self._unsafe_in_production()
            if problems:
                raise ValueError("ENV=production refuses:\n    " + "\n    ".join(problems))
        return self

    def _unsafe_in_production(self) -> list[str]:
        """What ENV=production refuses to start with, one line per variable to set."""
        problems: list[str] = []
        secret = self.secret_key.get_secret_value()
        if secret == DEVELOPMENT_SECRET_KEY:
            problems.append("SECRET_KEY: the development SECRET_KEY is public; set your own")
        elif len(secret) < 32:
            problems.append("SECRET_KEY: must be at least 32 characters in production")
        if not self.database_url:
            problems.append("DATABASE_URL: required (no embedded server in production)")
        if self.mailer == "console":
            # The console mailer logs each mail whole: password-reset links in the logs.
            problems.append("MAILER: console writes reset links to the logs; set MAILER=smtp")
        if self.public_url.rstrip("/") == DEFAULT_PUBLIC_URL:
            problems.append(
                f"PUBLIC_URL: the default {DEFAULT_PUBLIC_URL} reaches no user; "
                "set the address emailed links point to"
            )
        return problems

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
