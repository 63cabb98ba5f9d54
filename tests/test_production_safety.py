"""ENV=production refuses what is only safe on a laptop, and keeps /metrics and the API
schema for operators unless told otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.config import Settings, SettingsError, load_settings
from app.main import create_app

STRONG_SECRET = "s" * 40
OPS_TOKEN = "ops-secret-for-the-scraper"
SAFE = {
    "env": "production",
    "secret_key": STRONG_SECRET,
    "database_url": "postgresql://db/app",
    "mailer": "smtp",
    "public_url": "https://app.example.com",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENV", "MAILER", "PUBLIC_URL", "METRICS_PUBLIC", "API_DOCS_PUBLIC"):
        monkeypatch.delenv(name, raising=False)


def test_production_refuses_the_console_mailer() -> None:
    with pytest.raises(SettingsError, match="MAILER: console writes reset links"):
        load_settings(**{**SAFE, "mailer": "console"})


def test_production_refuses_the_default_public_url() -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL: the default"):
        load_settings(**{**SAFE, "public_url": "http://127.0.0.1:8000/"})


def test_production_names_every_unsafe_setting_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(env="production", database_url="postgresql://db/app")
    message = str(error.value)
    assert "SECRET_KEY" in message
    assert "MAILER: console" in message
    assert "PUBLIC_URL" in message


def test_production_keeps_metrics_and_docs_private_by_default() -> None:
    settings = load_settings(**SAFE)
    assert settings.metrics_public is False
    assert settings.api_docs_public is False


def test_development_serves_metrics_and_docs_publicly() -> None:
    settings = load_settings(env="development")
    assert settings.metrics_public is True
    assert settings.api_docs_public is True


def test_production_may_opt_in_to_public_metrics() -> None:
    assert load_settings(**SAFE, metrics_public=True).metrics_public is True


# --- the endpoints, on a production-configured app ---------------------------------------


@pytest.fixture
def production(
    make_settings: Callable[..., Settings], database_url: str
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return make_settings(
            **{**SAFE, "database_url": database_url, "ops_token": OPS_TOKEN, **overrides}
        )

    return make


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Settings], object]]:
    """Start an app with the given settings; yields a factory returning its client."""
    opened: list[tuple[object, httpx.AsyncClient]] = []

    async def start(settings: Settings) -> httpx.AsyncClient:
        app = create_app(settings)
        context = app.router.lifespan_context(app)
        await context.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        opened.append((context, client))
        return client

    yield start  # type: ignore[misc]
    for context, client in reversed(opened):
        await client.aclose()
        await context.__aexit__(None, None, None)  # type: ignore[attr-defined]


OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}


async def test_metrics_need_a_token_in_production(
    production: Callable[..., Settings], serve: Callable[[Settings], object]
) -> None:
    client: httpx.AsyncClient = await serve(production())  # type: ignore[misc]
    assert (await client.get("/metrics")).status_code == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 403
    allowed = await client.get("/metrics", headers=OPS)
    assert allowed.status_code == 200
    assert "http_requests" in allowed.text


async def test_metrics_public_opens_them_to_a_plain_scraper(
    production: Callable[..., Settings], serve: Callable[[Settings], object]
) -> None:
    client: httpx.AsyncClient = await serve(production(metrics_public=True))  # type: ignore[misc]
    assert (await client.get("/metrics")).status_code == 200


async def test_api_docs_are_gone_and_the_schema_needs_a_token_in_production(
    production: Callable[..., Settings], serve: Callable[[Settings], object]
) -> None:
    client: httpx.AsyncClient = await serve(production())  # type: ignore[misc]
    assert (await client.get("/docs")).status_code == 404
    assert (await client.get("/redoc")).status_code == 404
    assert (await client.get("/openapi.json")).status_code == 401
    schema = await client.get("/openapi.json", headers=OPS)
    assert schema.status_code == 200
    assert "/api/auth/login" in schema.json()["paths"]


async def test_api_docs_public_serves_the_docs_to_anyone(
    production: Callable[..., Settings], serve: Callable[[Settings], object]
) -> None:
    client: httpx.AsyncClient = await serve(production(api_docs_public=True))  # type: ignore[misc]
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
