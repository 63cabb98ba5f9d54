"""What every settings group shares: the project root, the development secret, the literals."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# Shipped so `scripts/dev` works out of the box; production refuses to start with it.
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"  # noqa: S105

Environment = Literal["development", "test", "production"]
Backend = Literal["postgres", "redis"]
PoolMode = Literal["direct", "pgbouncer"]


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names the env var and what it accepts."""
