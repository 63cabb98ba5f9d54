"""Generated request ids: unique per request and per process, 32 hex digits."""

from __future__ import annotations

import os

from app.observability import middleware


def test_generated_request_ids_are_distinct_hex() -> None:
    ids = {middleware.new_request_id() for _ in range(1_000)}
    assert len(ids) == 1_000
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)


def test_a_forked_process_draws_its_own_request_ids() -> None:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(writer, middleware.new_request_id().encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    child_id = os.read(reader, 64).decode()
    os.close(reader)
    assert child_id[:16] != middleware.new_request_id()[:16]
