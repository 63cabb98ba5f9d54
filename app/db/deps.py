"""FastAPI dependencies for the database: ``DatabaseDep`` and ``DbConn``.

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: int, conn: DbConn) -> Thing: ...

``DbConn`` holds one pooled primary connection for the request; ``ReadConn`` one from a
replica when DATABASE_REPLICA_URLS is set (lag-tolerant reads only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from app.db.pool import Connection, Database


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_db)]


async def _primary_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    async with db.acquire() as conn:
        yield conn


async def _read_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    async with db.acquire(read=True) as conn:
        yield conn


DbConn = Annotated[Connection, Depends(_primary_connection)]
ReadConn = Annotated[Connection, Depends(_read_connection)]
