import httpx
from fastapi import FastAPI


async def test_metrics_count_requests_by_route_template(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.get("/test/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    await client.get("/test/things/1")
    await client.get("/test/things/2")
    await client.get("/definitely/not/here/12345")
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/test/things/{thing_id}",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "/definitely/not/here" not in text  # raw paths never become labels
    assert (
        'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/test/things/{thing_id}"}'
        in text
    )


async def test_metrics_expose_pool_use(client: httpx.AsyncClient) -> None:
    await client.get("/readyz")
    text = (await client.get("/metrics")).text
    assert 'db_pool_size{pool="primary"}' in text
    assert 'db_pool_in_use{pool="primary"}' in text
    assert 'db_pool_max{pool="primary"} 5.0' in text
    assert "db_pool_acquire_seconds_count" in text


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
