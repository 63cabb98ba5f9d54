"""HTTP caching for GETs: ETag, Cache-Control, ``If-None-Match`` → 304.

    headers = cache_headers(weak_etag(version, request.url.query))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged             # 304, no body, nothing else computed
    response.headers.update(headers)

ETags are weak (``W/"..."``): they say "same data", not "same bytes", which is what a
version stamp can promise. API responses are per user, so they are always
``Cache-Control: private`` (never stored by shared caches) with ``Vary: Authorization``;
``no-cache`` makes browsers revalidate every time, which costs one cheap 304.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

PRIVATE_REVALIDATE = "private, no-cache"


def weak_etag(*parts: object) -> str:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12)
    return f'W/"{digest.hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2): the opaque parts equal, W/ ignored."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == wanted for candidate in if_none_match.split(",")
    )


def cache_headers(etag: str, cache_control: str = PRIVATE_REVALIDATE) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": cache_control, "Vary": "Authorization"}


def not_modified(request: Request, headers: dict[str, str]) -> Response | None:
    """A bodiless 304 when the client's ``If-None-Match`` holds the current ETag."""
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return None
