"""/metrics: each number moves by what the behaviour behind it did, read from the endpoint."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample /metrics exposes, by (name, labels)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_requests_by_route_template(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.get("/test/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    route = {"method": "GET", "route": "/test/things/{thing_id}"}
    before = await scrape(client)
    await client.get("/test/things/1")
    await client.get("/test/things/2")
    await client.get("/definitely/not/here/12345")
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("http_requests_total", **route, status="200") == 2
    assert delta("http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("http_request_duration_seconds_count", **route) == 2
    labels = {label for _, pairs in after for label in pairs}
    assert not any("/definitely" in text for label in labels for text in label)


async def test_metrics_show_pooled_connections_in_use(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    db = app.state.services.db
    before = await scrape(client)
    async with db.acquire():
        during = await scrape(client)
    after = await scrape(client)
    assert value(during, "db_pool_in_use", pool="primary") == (
        value(before, "db_pool_in_use", pool="primary") + 1
    )
    assert value(after, "db_pool_in_use", pool="primary") == value(
        before, "db_pool_in_use", pool="primary"
    )
    assert value(during, "db_pool_max", pool="primary") == 5  # DB_POOL_MAX of the tests
    assert value(after, "db_pool_acquire_seconds_count") == (
        value(before, "db_pool_acquire_seconds_count") + 1
    )


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
