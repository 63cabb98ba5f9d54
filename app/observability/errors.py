"""The one error shape: every 4xx and 5xx body is an ``ErrorBody``.

    {"detail": "Task not found"}
    {"detail": "Invalid request: body.email: value is not a valid email address",
     "errors": [{"loc": ["body", "email"], "msg": "value is not a valid email address",
                 "type": "value_error"}]}
    {"detail": "Internal Server Error", "request_id": "9f2c..."}

``detail`` is always one readable sentence, so a client can show it as it is; ``errors``
comes with validation failures (422) and lists each field's problem, without the
``input`` FastAPI echoes by default, so a rejected password or token is never sent back;
``request_id`` comes with a 500, whose cause is logged with its traceback and never shown,
and with a 503 (a backing service away for a moment, with Retry-After; see middleware.py).

``error_responses(401, 404, ...)`` documents statuses a route can return in its OpenAPI
operation with this model; ``document_errors`` (called when the OpenAPI document is built)
replaces FastAPI's own 422 schema with it and adds what routes answer by construction:
401 to a route behind the bearer scheme, 408 and 413 to one that takes a body, 400, 500
and 503 to all.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx response."""

    detail: str
    errors: list[FieldError] | None = None
    request_id: str | None = None


STATUS_TEXT = {
    400: "Bad request: unreadable (a body that is not its JSON, an over-long URL) or a "
    "malformed or forged cursor or token",
    401: "Missing, invalid or expired credentials",
    403: "Not allowed for this account",
    404: "Not found (or not yours)",
    408: "Request body not received in time (REQUEST_BODY_TIMEOUT_SECONDS)",
    409: "Conflicts with the current state",
    413: "Request body too large (MAX_REQUEST_BODY_BYTES)",
    422: "Invalid request: the body, query or path failed validation",
    429: "Rate limited; Retry-After says when to try again",
    500: "Internal error; the body carries the request id to quote",
    503: "Temporarily unavailable; Retry-After says when to try again",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these statuses, each with ``ErrorBody``."""
    return {status: {"model": ErrorBody, "description": STATUS_TEXT[status]} for status in statuses}


class RequestBodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body larger than {limit} bytes")


class RequestBodyTooSlow(StarletteHTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"Request body not received within {seconds:g} s")


def install_error_handlers(app: FastAPI) -> None:
    """Send every error as an ``ErrorBody`` and say so in the app's OpenAPI document."""
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for unstorable in UNSTORABLE_TEXT:
        app.add_exception_handler(unstorable, _unstorable_text)  # type: ignore[arg-type]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


# Text PostgreSQL cannot hold — NUL (U+0000) in any text or JSON value — fails the statement
# that carries it (SQLSTATE 22021, 22P05), whichever field or parameter it came in: the
# client's input, so 422, and the transaction it was in is rolled back whole.
UNSTORABLE_TEXT = (
    asyncpg.CharacterNotInRepertoireError,
    asyncpg.UntranslatableCharacterError,
)


async def _unstorable_text(request: Request, exc: asyncpg.PostgresError) -> JSONResponse:
    detail = "Invalid request: text may not contain NUL (\\u0000) characters"
    return JSONResponse({"detail": detail}, status_code=422)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors: list[dict[str, Any]] = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    problems = "; ".join(
        f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors[:3]
    )
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    detail = f"Invalid request: {problems}{more}" if problems else "Invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


# --- the OpenAPI document ---------------------------------------------------------------------

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_BODY_METHODS = {"post", "put", "patch"}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the generated document say what the handlers above really send."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components.update(components["ErrorBody"].pop("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error_response(422)
            if operation.get("security"):  # the bearer scheme: no or a bad token is a 401
                responses.setdefault("401", _error_response(401))
            if method in _BODY_METHODS and "requestBody" in operation:
                responses.setdefault("408", _error_response(408))
                responses.setdefault("413", _error_response(413))
            # A request the server cannot read (bytes that are not the declared JSON, a
            # request line over the HTTP parser's limit) is refused before any route runs.
            responses.setdefault("400", _error_response(400))
            responses.setdefault("500", _error_response(500))
            # PostgreSQL or Redis away for a moment (unavailable.py): retry after a pause.
            responses.setdefault("503", _error_response(503))
    return schema


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": STATUS_TEXT[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
