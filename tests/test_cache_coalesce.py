"""Single-key cache reads that find every connection busy share one statement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from app.cache.metrics import CacheCollector
from app.cache.postgres import PostgresCacheBackend
from app.config import Settings
from app.services import open_services


@pytest.fixture
async def backend(make_settings: Callable[..., Settings]) -> AsyncIterator[PostgresCacheBackend]:
    # One connection, so that holding it makes every other read wait.
    settings = make_settings(cache_backend="postgres", cache_pool_size=1)
    async with open_services(settings) as services:
        backend = PostgresCacheBackend(settings, services.db)
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_queued_behind_a_busy_connection_are_served_by_one_statement(
    backend: PostgresCacheBackend,
) -> None:
    await backend.set_many({f"k{n}": f"v{n}".encode() for n in range(5)}, 60, "")
    await backend.set("forever", b"f", None, "")
    assert await backend.get("k0") == b"v0"  # a free connection: read at once, no batch
    assert backend.reads.batches == 0

    keys = [f"k{n % 5}" for n in range(20)] + ["absent", "absent", "forever"]
    async with backend.pool.acquire():  # the only connection is busy
        readers = [asyncio.create_task(backend.get_with_ttl(key)) for key in keys]
        await settle()
        assert not any(reader.done() for reader in readers)
    rows = await asyncio.gather(*readers)

    for key, row in zip(keys, rows, strict=True):
        if key == "absent":
            assert row is None
        elif key == "forever":
            assert row == (b"f", None)
        else:
            assert row is not None
            assert row[0] == f"v{key[1:]}".encode()
            assert row[1] is not None
            assert 0 < row[1] <= 60
    # Twenty-three reads, seven distinct keys, one statement.
    assert backend.reads.batches == 1
    assert backend.reads.batched_keys == 7


async def test_a_reader_that_gives_up_does_not_hold_up_the_others(
    backend: PostgresCacheBackend,
) -> None:
    await backend.set("kept", b"1", 60, "")
    async with backend.pool.acquire():
        impatient = asyncio.create_task(asyncio.wait_for(backend.get("gone"), 0.01))
        patient = asyncio.create_task(backend.get("kept"))
        with pytest.raises(TimeoutError):
            await impatient
    assert await patient == b"1"
    assert backend.reads.batched_keys == 1  # nobody waited for "gone" any more: not read


async def test_reads_waiting_when_the_cache_closes_fail_instead_of_hanging(
    backend: PostgresCacheBackend,
) -> None:
    async with backend.pool.acquire():
        readers = [asyncio.create_task(backend.get(f"k{n}")) for n in range(3)]
        await settle()
        await backend.close()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(outcome, asyncpg.InterfaceError) for outcome in outcomes), outcomes


async def test_batched_reads_are_counted_for_metrics(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(cache_backend="postgres", cache_pool_size=1, cache_l1_max_entries=0)
    async with open_services(settings) as services:
        cache = services.cache
        backend = cache.backend
        assert isinstance(backend, PostgresCacheBackend)
        await cache.set("a", 1)
        async with backend.pool.acquire():
            readers = [asyncio.create_task(cache.get(key)) for key in ("a", "a", "b")]
            await settle()
        assert await asyncio.gather(*readers) == [1, 1, None]
        samples = {
            sample.name: sample.value
            for metric in CacheCollector(cache).collect()
            for sample in metric.samples
        }
    assert samples["cache_read_batches_total"] == 1
    assert samples["cache_batched_keys_total"] == 2
