"""Settings: every environment variable pgfirst reads, in one class.

Each field maps to the upper-case env var of the same name (``DATABASE_URL``,
``CACHE_BACKEND``...). Defaults are safe for development; production refuses to start
with the development secret or without a database. Flags are read once, by
``load_settings()`` when the app or a command starts, and travel in the services object —
nothing else in the code looks at the environment.

``Settings`` (settings.py) is one class assembled from groups, one per area, so each area's
settings read together: the platform (platform.py: runtime, database, backends), each
capability (capabilities.py) and the scaling signals' thresholds (signals.py).
docs/settings.md lists them all, generated from these classes.
"""

from app.config.common import (
    DEVELOPMENT_SECRET_KEY,
    PROJECT_ROOT,
    Backend,
    Environment,
    PoolMode,
    SettingsError,
)
from app.config.settings import GROUPS, Settings, load_settings

__all__ = [
    "DEVELOPMENT_SECRET_KEY",
    "GROUPS",
    "PROJECT_ROOT",
    "Backend",
    "Environment",
    "PoolMode",
    "Settings",
    "SettingsError",
    "load_settings",
]
