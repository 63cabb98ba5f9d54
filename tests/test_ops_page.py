"""The /ops page, rendered by a real headless Chromium after a one-time link login."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.signals import measure
from tests.conftest import IN_CI
from tests.helpers import live_server

OPS = {"Authorization": "Bearer ops-secret"}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    # Backends named: a pooler or Redis from the suite mode would move the stage on.
    return make_settings(
        ops_token="ops-secret",
        signal_queue_depth_warn=2,
        db_pool_mode="direct",
        cache_backend="postgres",
    )


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "the /ops page test needs Chromium (Debian package chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


async def dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory(prefix="pgfirst-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={profile}", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    return stdout.decode()


async def test_page_in_chromium_shows_the_stage_and_a_fired_signal(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    services = app.state.services
    await services.jobs.enqueue_many("pgfirst.prune_jobs", [{}] * 3)
    for _ in range(2):  # two recorded samples draw a sparkline
        await measure(services.db, services.settings, record=True)
    async with live_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        link = (await http.post("/ops/links", headers=OPS)).json()["path"]
        dom = await dump_dom(base + link)
    # A job backlog is a product-market-fit sign in the seeds' stages.
    assert 'id="stage">Stage 3: <strong>product-market fit</strong>' in dom
    assert '<tr data-key="jobs.queue_depth" data-status="warn">' in dom
    assert "<polyline" in dom


async def test_a_link_lets_in_once(client: httpx.AsyncClient) -> None:
    link = (await client.post("/ops/links", headers=OPS)).json()["path"]
    first = await client.get(link)
    assert first.status_code == 303
    assert "HttpOnly" in first.headers["set-cookie"]
    assert "SameSite=strict" in first.headers["set-cookie"]
    assert (await client.get("/ops")).status_code == 200  # the cookie from the link
    assert (await client.get(link)).status_code == 403


async def test_page_without_credentials_says_how_to_get_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/ops")
    assert response.status_code == 401
    assert "app signals --link" in response.text


async def test_links_need_an_operator(client: httpx.AsyncClient) -> None:
    assert (await client.post("/ops/links")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.post("/ops/links", headers=wrong)).status_code == 403


async def test_a_forged_cookie_is_refused(client: httpx.AsyncClient) -> None:
    client.cookies.set("pgfirst_ops", "99999999999.0000", path="/ops")
    assert (await client.get("/ops")).status_code == 401
