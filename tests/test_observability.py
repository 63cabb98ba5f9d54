import logging

import httpx
import pytest
from fastapi import FastAPI

from app.observability.logging import JsonFormatter


@pytest.fixture
def app_with_test_routes(app: FastAPI) -> FastAPI:
    @app.get("/test/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.post("/test/echo")
    async def echo(payload: dict[str, int]) -> dict[str, int]:
        return payload

    @app.get("/test/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        logging.getLogger("test.items").info("item read", extra={"item_id": item_id})
        return {"id": item_id}

    return app


@pytest.fixture
async def test_client(
    app_with_test_routes: FastAPI, client: httpx.AsyncClient
) -> httpx.AsyncClient:
    return client


async def test_request_id_is_generated_and_returned(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/healthz")
    assert len(response.headers["x-request-id"]) == 32


async def test_incoming_request_id_is_kept(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/healthz", headers={"X-Request-ID": "edge-abc.123"})
    assert response.headers["x-request-id"] == "edge-abc.123"


async def test_malformed_request_id_is_replaced(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert len(response.headers["x-request-id"]) == 32


async def test_logs_carry_the_request_id_as_json(
    test_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.items")
    await test_client.get("/test/items/7", headers={"X-Request-ID": "req-42"})
    record = next(r for r in caplog.records if r.name == "test.items")
    assert record.request_id == "req-42"
    formatted = JsonFormatter().format(record)
    assert '"request_id":"req-42"' in formatted
    assert '"msg":"item read"' in formatted
    assert '"item_id":7' in formatted
    access = [r for r in caplog.records if r.name == "app.access"]
    assert any(getattr(r, "route", None) == "/test/items/{item_id}" for r in access)


async def test_unknown_route_gets_json_404(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_wrong_method_gets_json_405(test_client: httpx.AsyncClient) -> None:
    response = await test_client.delete("/healthz")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}


async def test_validation_error_is_422_without_echoing_input(
    test_client: httpx.AsyncClient,
) -> None:
    response = await test_client.post("/test/echo", json={"password": "not-a-number-s3cret"})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("Invalid request: body.password: ")
    assert [error["loc"] for error in body["errors"]] == [["body", "password"]]
    assert "s3cret" not in response.text


async def test_malformed_json_is_422(test_client: httpx.AsyncClient) -> None:
    response = await test_client.post(
        "/test/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_unhandled_error_is_500_without_internals(
    test_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await test_client.get("/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error", "request_id": "boom-1"}
    assert "secret internals" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


async def test_declared_oversized_body_is_413(test_client: httpx.AsyncClient) -> None:
    body = b"x" * (1_048_576 + 1)
    response = await test_client.post(
        "/test/echo", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


async def test_streamed_oversized_body_is_413(test_client: httpx.AsyncClient) -> None:
    async def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 65_536

    response = await test_client.post(
        "/test/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_security_headers_on_every_response(test_client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/no/such/route"):
        response = await test_client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers


async def test_hsts_only_over_https(
    app_with_test_routes: FastAPI, client: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=app_with_test_routes)
    async with httpx.AsyncClient(transport=transport, base_url="https://secure") as https_client:
        response = await https_client.get("/healthz")
    assert response.headers["strict-transport-security"].startswith("max-age=")
