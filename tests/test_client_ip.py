"""The client address behind a proxy: only what the trusted proxy itself set counts.

Requests are built from ASGI scopes as uvicorn hands them over. With
FORWARDED_ALLOW_IPS="*" uvicorn has already replaced the peer with X-Forwarded-For's
leftmost entry, which the client wrote — so the scopes below carry that forged peer.
"""

from __future__ import annotations

import tomllib

import pytest
from starlette.requests import Request

from app.auth.ratelimit import client_ip
from app.config import PROJECT_ROOT

FORGED = "203.0.113.66"  # what the client put in X-Forwarded-For
REAL = "198.51.100.7"  # what Fly's proxy saw and put in Fly-Client-IP


def request_from(peer: str, **headers: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/auth/login",
        "headers": [
            (name.replace("_", "-").lower().encode(), value.encode())
            for name, value in headers.items()
        ],
        "client": (peer, 54321),
    }
    return Request(scope)


def test_the_trusted_header_is_the_client_address() -> None:
    request = request_from(FORGED, x_forwarded_for=FORGED, fly_client_ip=REAL)
    assert client_ip(request, "fly-client-ip") == REAL


def test_a_forged_x_forwarded_for_does_not_change_the_key() -> None:
    honest = request_from(REAL, fly_client_ip=REAL)
    forged = [
        request_from(FORGED, x_forwarded_for=f"{FORGED}, {REAL}", fly_client_ip=REAL),
        request_from("192.0.2.1", x_forwarded_for="192.0.2.1", fly_client_ip=REAL),
    ]
    keys = {client_ip(request, "fly-client-ip") for request in [honest, *forged]}
    assert keys == {REAL}


def test_a_comma_list_counts_the_entry_the_proxy_appended() -> None:
    request = request_from("10.0.0.2", x_forwarded_for=f"{FORGED}, {REAL}")
    assert client_ip(request, "x-forwarded-for") == REAL


@pytest.mark.parametrize(
    "value",
    ["not-an-address", "1.2.3.4.5", "' OR 1=1 --", "x" * 500, f"{REAL}, junk", " , "],
)
def test_a_header_that_is_not_an_address_falls_back_to_the_peer(value: str) -> None:
    request = request_from("192.0.2.10", fly_client_ip=value)
    assert client_ip(request, "fly-client-ip") == "192.0.2.10"


def test_ipv6_addresses_are_one_key_however_written() -> None:
    long_form = request_from("10.0.0.2", fly_client_ip="2001:0db8:0000:0000:0000:0000:0000:0001")
    short_form = request_from("10.0.0.2", fly_client_ip="2001:db8::1")
    assert client_ip(long_form, "fly-client-ip") == client_ip(short_form, "fly-client-ip")


def test_without_a_trusted_header_the_peer_is_the_address() -> None:
    request = request_from("192.0.2.10", fly_client_ip=REAL)
    assert client_ip(request, None) == "192.0.2.10"


def test_fly_deploys_take_the_client_address_from_fly_client_ip() -> None:
    with (PROJECT_ROOT / "fly.toml").open("rb") as file:
        env = tomllib.load(file)["env"]
    assert env["TRUSTED_PROXY_HEADER"] == "fly-client-ip"
    # Whatever FORWARDED_ALLOW_IPS makes uvicorn put in the peer (here, X-Forwarded-For's
    # forged leftmost entry), the configured header decides the address.
    request = request_from(FORGED, x_forwarded_for=FORGED, fly_client_ip=REAL)
    assert client_ip(request, env["TRUSTED_PROXY_HEADER"]) == REAL
