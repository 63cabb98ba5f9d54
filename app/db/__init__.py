"""Database access: pools, transactions, read routing, migrations, the embedded server.

One ``Database`` per process, opened by ``app.services.open_services`` and reached through
the services object (``services.db``; ``DatabaseDep``/``DbConn`` in routes):

    async with services.db.transaction() as conn:
        ...
"""

from __future__ import annotations

from app.db.pool import Connection, Database, PoolStats, Record

__all__ = ["Connection", "Database", "PoolStats", "Record"]
