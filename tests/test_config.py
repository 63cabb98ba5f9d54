from pathlib import Path

import pytest

from app.config import DEVELOPMENT_SECRET_KEY, SettingsError, load_settings

STRONG_SECRET = "s" * 40


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENV", "SECRET_KEY", "DATABASE_URL", "CACHE_BACKEND", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_safe_for_development() -> None:
    settings = load_settings()
    assert settings.env == "development"
    assert settings.database_url is None  # embedded server
    assert settings.cache_backend == settings.pubsub_backend == "postgres"
    assert settings.rate_limit_backend == "postgres"
    assert settings.db_pool_mode == "direct"
    assert settings.run_inline_worker is True
    assert settings.host == "127.0.0.1"


def test_settings_are_read_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MAX", "25")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://r1/db, postgresql://r2/db")
    monkeypatch.setenv("SIGNAL_SLOW_QUERY_MEAN_MS", "150")
    settings = load_settings()
    assert settings.db_pool_max == 25
    assert settings.database_replica_urls == ["postgresql://r1/db", "postgresql://r2/db"]
    assert settings.signal_slow_query_mean_ms == 150


def test_signal_thresholds_default_to_the_documented_values() -> None:
    settings = load_settings()
    assert settings.signal_slow_query_mean_ms == 200
    assert settings.signal_hot_key_reads_per_minute == 100
    assert settings.signal_slow_response_seconds == 3
    assert settings.signal_db_cpu_percent == 70
    assert (settings.signal_queue_depth_warn, settings.signal_queue_depth_critical) == (1000, 10000)
    assert (settings.signal_job_wait_warn_seconds, settings.signal_job_wait_critical_seconds) == (
        30,
        300,
    )
    assert (settings.signal_http_p99_warn_ms, settings.signal_http_p99_critical_ms) == (1000, 3000)
    assert (settings.signal_error_rate_warn, settings.signal_error_rate_critical) == (0.005, 0.02)
    assert settings.signal_table_rows == 100_000_000


def test_production_refuses_the_development_secret_key() -> None:
    with pytest.raises(SettingsError, match="development SECRET_KEY"):
        load_settings(env="production", database_url="postgresql://db/app")


def test_production_refuses_a_short_secret_key() -> None:
    with pytest.raises(SettingsError, match="at least 32 characters"):
        load_settings(env="production", database_url="postgresql://db/app", secret_key="short")


def test_production_needs_a_database_url() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(env="production", secret_key=STRONG_SECRET)


def test_production_starts_with_its_own_secret_and_database() -> None:
    settings = load_settings(
        env="production",
        secret_key=STRONG_SECRET,
        database_url="postgresql://db/app",
        mailer="smtp",
        public_url="https://app.example.com",
    )
    assert settings.run_inline_worker is False


def test_unknown_flag_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_BACKEND", "memcached")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "CACHE_BACKEND" in message
    assert "'postgres' or 'redis'" in message
    assert "memcached" in message


def test_redis_backend_needs_redis_url() -> None:
    with pytest.raises(SettingsError, match="PUBSUB_BACKEND=redis needs REDIS_URL"):
        load_settings(pubsub_backend="redis")


def test_pool_bounds_must_be_ordered() -> None:
    with pytest.raises(SettingsError, match="DB_POOL_MIN"):
        load_settings(db_pool_min=20, db_pool_max=5)


def test_errors_never_echo_secrets_or_dsns() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(env="production", secret_key="hunter2", database_url="postgresql://u:pw@h/d")
    assert "hunter2" not in str(error.value)
    assert "pw@" not in str(error.value)


def test_development_secret_is_accepted_outside_production() -> None:
    settings = load_settings(env="test")
    assert settings.secret_key.get_secret_value() == DEVELOPMENT_SECRET_KEY


def test_embedded_data_dir_defaults_to_the_project_data_folder() -> None:
    settings = load_settings()
    assert settings.embedded_pg_dir == Path(__file__).resolve().parent.parent / ".data" / "pg"


def test_settings_reference_in_docs_is_up_to_date() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_settings_doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
