"""/api/events (SSE) and /api/ws (WebSocket): the caller's own events, live.

Each user has one channel, ``user:<id>``; a stream subscribes to that channel only, so a
user can never receive another's events. Task and project changes are published there in
the same transaction as the change (app/tasks).

Authentication: ``Authorization: Bearer <access token>`` where the client can set headers
(fetch-based SSE, native apps). Browsers' EventSource and WebSocket cannot, so they first
``POST /api/events/ticket`` (authenticated) and pass ``?ticket=`` — a signed token valid for
60 seconds, of its own type (an access token is refused there, a ticket is refused as an
access token), bound to the session (logout ends it), and kept out of our access logs,
which record paths without query strings. Short life limits what a ticket leaked through a
proxy log or browser history is worth.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.auth.service import Auth, User
from app.auth.tokens import InvalidToken, issue_access_token, read_access_token
from app.deps import AuthDep, CurrentSession, ServicesDep, authenticate, bearer_token
from app.observability.errors import error_responses
from app.pubsub.streams import open_sse, parse_event_id, run_websocket

router = APIRouter(tags=["realtime"])
TICKET_SECONDS = 60


class Ticket(BaseModel):
    ticket: str
    expires_in: int


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


@router.post("/api/events/ticket")
async def create_stream_ticket(session: CurrentSession, auth: AuthDep) -> Ticket:
    user, claims = session
    ticket = issue_access_token(
        auth.secret, user.id, claims.family_id, TICKET_SECONDS, "stream", now=auth.clock()
    )
    return Ticket(ticket=ticket, expires_in=TICKET_SECONDS)


async def _stream_user(auth: Auth, bearer: str | None, ticket: str | None) -> User:
    if bearer is not None:
        user, _ = await authenticate(auth, bearer)
        return user
    if ticket is None:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = read_access_token(auth.secret, ticket, kind="stream")
    except InvalidToken:
        raise HTTPException(401, "Invalid or expired ticket") from None
    user_or_none = await auth.user_for_token(claims.user_id, claims.family_id, claims.issued_at)
    if user_or_none is None:
        raise HTTPException(401, "Session ended")
    return user_or_none


@router.get(
    "/api/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401)},
)
async def stream_events(
    request: Request,
    services: ServicesDep,
    ticket: Annotated[str | None, Query(max_length=2048)] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Server-Sent Events of the caller's channel; resumes after ``Last-Event-ID``."""
    user = await _stream_user(services.auth, bearer_token(request), ticket)
    return await open_sse(
        services.broker,
        [user_channel(user.id)],
        since=parse_event_id(last_event_id),
        heartbeat=services.settings.pubsub_heartbeat_seconds,
    )


@router.websocket("/api/ws")
async def websocket_events(
    websocket: WebSocket,
    services: ServicesDep,
    ticket: Annotated[str | None, Query(max_length=2048)] = None,
    since: Annotated[str | None, Query(max_length=32)] = None,
) -> None:
    """The same events over a WebSocket; ``since`` replays after an event id."""
    try:
        user = await _stream_user(services.auth, bearer_token(websocket), ticket)
    except HTTPException:
        await websocket.close(code=1008, reason="not authenticated")  # policy violation
        return
    await run_websocket(
        websocket,
        services.broker,
        [user_channel(user.id)],
        since=parse_event_id(since),
        heartbeat=services.settings.pubsub_heartbeat_seconds,
    )
