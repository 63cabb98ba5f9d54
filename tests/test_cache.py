"""The cache: the same suite on both backends, L1 invalidation, stampedes, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from app.cache import Cache, create_backend
from app.config import Settings
from app.services import Services, open_services
from tests.helpers import eventually, flushed_redis, free_port

CacheFactory = Callable[..., Awaitable[Cache]]
StartCache = Callable[[Settings], Awaitable[Cache]]
StartServices = Callable[[Settings], Awaitable[Services]]


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["postgres", "redis"])
async def backend_settings(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    overrides: dict[str, object] = {"cache_backend": request.param}
    if request.param == "redis":
        overrides["redis_url"] = await flushed_redis(request.getfixturevalue("redis_url"))

    def make(**more: object) -> Settings:
        return make_settings(**overrides, **more)

    return make


@pytest.fixture
async def exit_stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def start_services(exit_stack: AsyncExitStack) -> StartServices:
    """Services of their own for each call, as a separate process would have them (own
    database pools, notifier, cache with its L1 and in-flight loads); closed after the test."""

    async def start(settings: Settings) -> Services:
        return await exit_stack.enter_async_context(open_services(settings))

    return start


@pytest.fixture
def start_cache(start_services: StartServices) -> StartCache:
    async def start(settings: Settings) -> Cache:
        return (await start_services(settings)).cache

    return start


@pytest.fixture
def new_cache(
    backend_settings: Callable[..., Settings],
    start_cache: StartCache,
) -> CacheFactory:
    """Caches on the backend under test, with optional setting overrides."""

    async def start(**overrides: object) -> Cache:
        return await start_cache(backend_settings(**overrides))

    return start


@pytest.fixture
async def clocked_cache(
    backend_settings: Callable[..., Settings],
    start_services: StartServices,
    exit_stack: AsyncExitStack,
) -> tuple[Cache, ManualClock]:
    """A cache on the backend under test that reads time from a ManualClock."""
    settings = backend_settings()
    services = await start_services(settings)
    notifier = services.redis_notifier or services.notifier
    clock = ManualClock()
    cache = Cache(
        settings, create_backend(settings, services.db, services.redis), notifier, clock=clock
    )
    await cache.start()
    exit_stack.push_async_callback(cache.stop)
    return cache, clock


async def test_set_get_delete_round_trip_json_values(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    value = {"name": "Ada", "tags": ["a", "b"], "n": 3, "ok": True, "none": None}
    assert await cache.get("user:1") is None
    assert await cache.get("user:1", "fallback") == "fallback"
    assert await cache.set("user:1", value)
    assert await cache.get("user:1") == value
    assert await cache.set("plain", "text")
    assert await cache.get("plain") == "text"
    assert await cache.delete("user:1", "plain", "never-set") == 2
    assert await cache.get("user:1") is None
    assert await cache.get("plain") is None


async def test_entries_expire_after_their_ttl(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    await cache.set("short", 1, ttl=0.3)
    await cache.set("long", 2, ttl=60)
    assert await cache.get("short") == 1  # also fills L1, for no longer than the TTL
    await eventually(lambda: cache.get("short"), lambda value: value is None, within=5)
    assert await cache.get("long") == 2


async def test_delete_prefix_removes_only_that_prefix(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    # Characters that mean something to LIKE and to Redis globs must match literally.
    await cache.set_many({"p:1": 1, "p:2": 2, "q:1": 3, "a%_*[x]:1": 4, "a%b": 5, "a%_*[x]z": 6})
    assert await cache.delete_prefix("p:") == 2
    assert await cache.get_many(["p:1", "p:2", "q:1"]) == {"q:1": 3}
    assert await cache.delete_prefix("a%_*[x]") == 2
    assert await cache.get_many(["a%_*[x]:1", "a%b", "a%_*[x]z"]) == {"a%b": 5}


async def test_delete_prefix_removes_more_keys_than_one_scan_batch(
    new_cache: CacheFactory,
) -> None:
    from app.cache.redis import SCAN_BATCH

    cache = await new_cache()
    matches = 2 * SCAN_BATCH + 500
    for start in range(0, matches, SCAN_BATCH):
        await cache.set_many(
            {f"bulk:{n}": n for n in range(start, min(matches, start + SCAN_BATCH))}
        )
    await cache.set_many({f"bulky:{n}": n for n in range(10)})
    assert await cache.delete_prefix("bulk:") == matches
    assert await cache.get_many([f"bulk:{n}" for n in range(0, matches, 97)]) == {}
    assert len(await cache.get_many([f"bulky:{n}" for n in range(10)])) == 10


async def test_counters_increment_read_back_and_refuse_non_integers(
    new_cache: CacheFactory,
) -> None:
    cache = await new_cache()
    assert await cache.incr("hits:today") == 1
    assert await cache.incr("hits:today", 5) == 6
    assert await cache.incr("hits:today", -2) == 4
    assert await cache.get("hits:today") == 4
    assert await cache.incr("window", ttl=0.3) == 1
    await eventually(lambda: cache.get("window"), lambda value: value is None, within=5)
    assert await cache.incr("window", ttl=0.3) == 1  # an expired counter restarts
    await cache.set("word", "seven")
    with pytest.raises(ValueError, match="not an integer"):
        await cache.incr("word")


async def test_add_stores_only_when_absent(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    assert await cache.add("once", "first")
    assert not await cache.add("once", "second")
    assert await cache.get("once") == "first"
    await cache.set("brief", 1, ttl=0.2)
    await eventually(lambda: cache.get("brief"), lambda value: value is None, within=5)
    assert await cache.add("brief", 2)  # an expired entry counts as absent
    assert await cache.get("brief") == 2


async def test_keys_are_validated_and_large_values_skipped(new_cache: CacheFactory) -> None:
    cache = await new_cache(cache_max_value_bytes=1_000)
    for bad in ("", "has space", "x" * 251, "tab\tkey"):
        with pytest.raises(ValueError, match="invalid cache key"):
            await cache.set(bad, 1)
    assert await cache.get("has space") is None  # reads of impossible keys just miss
    assert not await cache.set("big", "x" * 2_000)
    assert await cache.get("big") is None
    assert cache.skipped_large == 1
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", 1, ttl=0)


async def test_get_or_set_runs_one_loader_across_processes(new_cache: CacheFactory) -> None:
    # Five Cache instances stand for five processes: each has its own in-flight map, so
    # only the backend lock can keep their loaders from running in parallel.
    caches = [await new_cache() for _ in range(5)]
    calls = 0
    release = asyncio.Event()

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"answer": 42}

    results = asyncio.gather(
        *(cache.get_or_set("cold:key", loader, ttl=60) for cache in caches for _ in range(10))
    )

    async def progress() -> tuple[int, int]:
        missed = sum(cache.reads.get(("cold", "miss"), 0) for cache in caches)
        waiting = sum("cold:key" in cache.awaiting_loads for cache in caches)
        return missed, waiting

    # Every call has missed and joined its process's load; four processes wait for the
    # fifth, whose loader is still running.
    await eventually(progress, lambda seen: seen == (50, 4))
    release.set()
    assert await results == [{"answer": 42}] * 50
    assert calls == 1


async def test_a_failed_loader_frees_the_key_for_the_next_caller(new_cache: CacheFactory) -> None:
    first, second = await new_cache(), await new_cache()
    started, fail = asyncio.Event(), asyncio.Event()

    async def failing() -> int:
        started.set()
        await fail.wait()
        raise RuntimeError("source down")

    failed = asyncio.create_task(first.get_or_set("flaky", failing))
    await started.wait()
    waiter = asyncio.create_task(second.get_or_set("flaky", _constant(7)))

    async def second_waits() -> bool:
        return "flaky" in second.awaiting_loads

    await eventually(second_waits)
    fail.set()
    with pytest.raises(RuntimeError, match="source down"):
        await failed
    # The waiter saw the lock freed without a value and loaded it itself.
    assert await waiter == 7
    assert await first.get("flaky") == 7


async def test_early_refresh_reloads_in_the_background(new_cache: CacheFactory) -> None:
    # L1 off: early refresh looks at the TTL the backend reports on a backend hit.
    cache = await new_cache(cache_early_refresh_ratio=0.5, cache_l1_max_entries=0)
    finish_reload = asyncio.Event()
    calls = 0

    async def loader() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            await finish_reload.wait()
        return calls

    assert await cache.get_or_set("fresh", loader, ttl=60) == 1
    assert await cache.get_or_set("fresh", loader, ttl=60) == 1
    assert refreshes("fresh") == []  # all 60 s of 60 left
    await cache.set("fresh", 1, ttl=20)  # the same value with 20 s left: the last half
    # Served at once, while the reload it started waits for its loader.
    assert await cache.get_or_set("fresh", loader, ttl=60) == 1
    [reload] = refreshes("fresh")
    assert await cache.get("fresh") == 1
    finish_reload.set()
    await reload
    assert await cache.get("fresh") == 2
    assert calls == 2


async def test_l1_serves_repeat_reads_and_is_invalidated_by_other_writers(
    new_cache: CacheFactory,
) -> None:
    # L1 entries outlive the test: only an invalidation can make the reader see a change.
    writer = await new_cache(cache_l1_ttl_seconds=600)
    reader = await new_cache(cache_l1_ttl_seconds=600)
    await writer.set("shared:1", "v1")
    await until_l1_serves(reader, "shared:1", "v1")

    for value in ("v2", "v3"):
        await writer.set("shared:1", value)
        await until_read(reader, "shared:1", value)
    await writer.delete("shared:1")
    await until_read(reader, "shared:1", None)
    await writer.set("shared:2", "x")
    await until_l1_serves(reader, "shared:2", "x")
    await writer.delete_prefix("shared:")
    await until_read(reader, "shared:2", None)

    async def heard() -> int:
        return reader.invalidations_received

    # Six writes, six announcements: set, set, set, delete, set, delete_prefix.
    await eventually(heard, lambda count: count == 6)


async def test_l1_is_bypassed_while_the_notifier_is_down_and_invalidated_after_it_reconnects(
    backend_settings: Callable[..., Settings],
    start_services: StartServices,
    db_conn: asyncpg.Connection,
) -> None:
    settings = backend_settings(cache_l1_ttl_seconds=600)
    writer = (await start_services(settings)).cache
    services = await start_services(settings)
    reader, notifier = services.cache, services.redis_notifier or services.notifier
    await writer.set("shared:1", "v1")
    await until_l1_serves(reader, "shared:1", "v1")
    assert reader.health() == ("listening", True)

    seen: list[tuple[bool, tuple[str, bool], int]] = []
    back = asyncio.Event()

    def on_state(connected: bool) -> None:
        # Registered after the cache's own handler, so it sees what the cache made of it.
        seen.append((connected, reader.health(), reader.l1_entries))
        if connected:
            back.set()

    forget = notifier.on_state(on_state)
    try:
        assert await kill_notifier_connections(settings, db_conn) == 2  # writer's, reader's
        await asyncio.wait_for(back.wait(), 30)

        await until_l1_serves(reader, "shared:1", "v1")
        heard = reader.invalidations_received
        await writer.set("shared:1", "v2")
        await until_read(reader, "shared:1", "v2")
        assert reader.invalidations_received == heard + 1
    finally:
        forget()
    assert seen == [
        (False, ("l1 bypassed: listener down", True), 0),
        (True, ("listening", True), 0),
    ]


async def test_an_l1_copy_lives_at_most_the_l1_ttl(
    clocked_cache: tuple[Cache, ManualClock],
) -> None:
    cache, clock = clocked_cache
    await cache.set("k", "v")  # kept in this process's L1
    # Gone from the backend with no announcement, as when the size cap evicts a key.
    assert cache.backend is not None
    assert await cache.backend.delete(["k"], "") == 1
    assert await cache.get("k") == "v"
    clock.advance(cache.settings.cache_l1_ttl_seconds)
    assert await cache.get("k") is None


async def test_a_key_read_near_its_l1_expiry_is_refreshed_in_the_background(
    clocked_cache: tuple[Cache, ManualClock],
) -> None:
    cache, clock = clocked_cache
    backend = cache.backend
    assert backend is not None
    ttl = cache.settings.cache_l1_ttl_seconds
    await cache.set("busy", "v1")  # in L1 for 0.8-1.0 x ttl, refresh asked from 0.6-0.75
    await backend.set("busy", b'"v2"', 60, "")  # changed with no announcement
    clock.advance(ttl * 0.78)
    assert await cache.get("busy") == "v1"  # the reader gets L1's entry at once...

    async def refreshed() -> int:
        return cache.l1_refreshed

    await eventually(refreshed, lambda n: n == 1)
    # ...and L1 now holds the backend's value, with a new lifetime: past the first
    # entry's end, with the key gone from the backend, only the refreshed entry answers.
    assert await backend.delete(["busy"], "") == 1
    clock.advance(ttl * 0.5)
    assert await cache.get("busy") == "v2"
    assert cache.reads[("busy", "l1_hit")] == 2


async def test_a_get_or_set_key_in_steady_use_is_reloaded_before_it_expires(
    clocked_cache: tuple[Cache, ManualClock],
) -> None:
    cache, clock = clocked_cache
    backend = cache.backend
    assert backend is not None
    loads: list[int] = []

    async def loader() -> int:
        loads.append(len(loads) + 1)
        return loads[-1]

    assert await cache.get_or_set("steady", loader, ttl=4) == 1  # 4 s in L1, due from 3 s
    assert await backend.delete(["steady"], "") == 1  # the backend's copy is gone
    clock.advance(3.2)
    assert await cache.get_or_set("steady", loader, ttl=4) == 1  # no wait for the reload

    async def reloaded() -> list[int]:
        return loads

    await eventually(reloaded, lambda seen: seen == [1, 2])
    clock.advance(3.2)  # past the first entry's end: the reloaded one answers from L1
    assert await cache.get_or_set("steady", loader, ttl=4) == 2
    assert loads == [1, 2]


async def test_get_many_keeps_what_it_read_in_l1(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    backend = cache.backend
    assert backend is not None
    assert cache.health() == ("listening", True)
    await backend.set_many({"many:1": b"1", "many:2": b"2"}, 60, "")  # not through L1
    assert await cache.get_many(["many:1", "many:2", "many:3"]) == {"many:1": 1, "many:2": 2}
    # Gone from the backend with no announcement: only L1 can still answer.
    assert await backend.delete(["many:1", "many:2"], "") == 2
    assert await cache.get_many(["many:1", "many:2"]) == {"many:1": 1, "many:2": 2}
    assert cache.reads[("many", "l1_hit")] == 2


async def test_get_many_keeps_nothing_past_the_backend_expiry(
    clocked_cache: tuple[Cache, ManualClock],
) -> None:
    cache, clock = clocked_cache
    assert cache.backend is not None
    await cache.backend.set_many({"short:1": b"1"}, 2, "")
    assert await cache.get_many(["short:1"]) == {"short:1": 1}
    assert await cache.backend.delete(["short:1"], "") == 1
    assert await cache.get_many(["short:1"]) == {"short:1": 1}  # from L1
    clock.advance(2.5)  # past the 2 s the backend had left, within the L1 TTL
    assert await cache.get_many(["short:1"]) == {}


async def test_an_unreachable_redis_is_a_miss_not_an_error(
    make_settings: Callable[..., Settings], start_cache: StartCache
) -> None:
    settings = make_settings(
        cache_backend="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        cache_timeout_seconds=0.2,
    )
    cache = await start_cache(settings)
    assert cache.health() == ("l1 bypassed: listener down", True)  # its notifier cannot connect
    assert await cache.get("k") is None
    assert cache.errors == {"get": 1}
    assert not await cache.set("k", 1)
    assert cache.errors == {"get": 1, "set": 1}
    assert await cache.incr("n") is None
    assert cache.errors == {"get": 1, "set": 1, "incr": 1}
    assert await cache.get_or_set("k", _constant(5)) == 5  # no lock to take: just loads


async def test_get_or_set_after_a_failed_read_loads_without_lock_or_store(
    make_settings: Callable[..., Settings], start_cache: StartCache
) -> None:
    settings = make_settings(
        cache_backend="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        cache_timeout_seconds=0.2,
    )
    cache = await start_cache(settings)
    assert await cache.get_or_set("k", _constant(5)) == 5
    assert cache.errors == {"get": 1}  # no lock, store or unlock sent after it
    assert cache.failing


async def test_a_call_that_answers_ends_failing(new_cache: CacheFactory) -> None:
    cache = await new_cache()
    cache._calls.failing = True  # as after a timeout
    assert await cache.get("absent") is None
    assert not cache.failing


async def test_a_locked_cache_table_times_out_into_misses(
    make_settings: Callable[..., Settings], start_cache: StartCache, db_conn: asyncpg.Connection
) -> None:
    # L1 off: every read below goes to the table.
    settings = make_settings(cache_timeout_seconds=0.2, cache_l1_max_entries=0)
    cache = await start_cache(settings)
    await cache.set("k", "v")
    async with db_conn.transaction():
        await db_conn.execute("LOCK TABLE cache_entries IN ACCESS EXCLUSIVE MODE")
        assert await cache.get("k") is None
        assert not await cache.set("k2", "v2")
        # Neither waited for the lock: each gave up after CACHE_TIMEOUT_SECONDS, counted.
        assert cache.errors == {"get": 1, "set": 1}
    assert await cache.get("k") == "v"  # fine again once the lock is gone


async def test_killed_cache_connections_are_replaced(
    make_settings: Callable[..., Settings], start_cache: StartCache, db_conn: asyncpg.Connection
) -> None:
    settings = make_settings(cache_pool_size=3, cache_l1_max_entries=0)
    cache = await start_cache(settings)
    await cache.set("k", "v")
    assert await asyncio.gather(*(cache.get("k") for _ in range(10))) == ["v"] * 10
    killed = await db_conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'pgfirst-cache' AND datname = current_database()"
    )
    assert killed == 3
    # Each dead connection costs at most one miss; then the set is whole again.
    await eventually(lambda: cache.get("k"), lambda value: value == "v")
    assert await asyncio.gather(*(cache.get("k") for _ in range(10))) == ["v"] * 10


async def test_purge_deletes_expired_rows_and_enforces_the_size_cap(
    make_settings: Callable[..., Settings], start_cache: StartCache
) -> None:
    # L1 off: an L1 copy may outlive a size-cap eviction by up to CACHE_L1_TTL_SECONDS
    # (the value was valid; nothing announces evictions), and this test reads the table.
    settings = make_settings(cache_max_entries=10, cache_purge_batch=4, cache_l1_max_entries=0)
    cache = await start_cache(settings)
    for n in range(5):
        await cache.set(f"gone:{n}", n, ttl=0.1)
    for n in range(25):
        await cache.set(f"kept:{n:02}", n)
    gone = [f"gone:{n}" for n in range(5)]
    await eventually(lambda: cache.get_many(gone), lambda present: present == {}, within=5)
    assert await cache.count() == 30  # expired rows stay until purged
    assert await cache.purge() == (5, 15)
    assert await cache.count() == 10
    present = await cache.get_many([f"kept:{n:02}" for n in range(25)])
    assert sorted(present) == [f"kept:{n:02}" for n in range(15, 25)]  # oldest went first


async def test_hot_keys_and_hit_rates_are_counted(
    clocked_cache: tuple[Cache, ManualClock],
) -> None:
    cache, clock = clocked_cache
    await cache.set("item:hot", 1)
    for _ in range(150):
        await cache.get("item:hot")
    await cache.get("item:cold")
    assert cache.hot_keys() == []  # the first minute is not over
    clock.advance(61)
    assert cache.hot_keys()[0] == ("item:hot", 150)
    assert cache.reads[("item", "miss")] == 1
    assert cache.reads.get(("item", "l1_hit"), 0) + cache.reads.get(("item", "hit"), 0) == 150


def _constant(value: int) -> Callable[[], Awaitable[int]]:
    async def load() -> int:
        return value

    return load


async def kill_notifier_connections(settings: Settings, db_conn: asyncpg.Connection) -> int:
    """End every cache notifier's connection from the server side; how many were ended."""
    if settings.cache_backend == "redis":
        assert settings.redis_url is not None
        redis = Redis.from_url(settings.redis_url)
        try:
            return int(await redis.client_kill_filter(_type="pubsub"))
        finally:
            await redis.aclose()
    # The notifier's connection: direct, idle after its last LISTEN.
    return int(
        await db_conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pgfirst-direct'"
            " AND query LIKE 'LISTEN%'"
        )
    )


def refreshes(key: str) -> list[asyncio.Task[Any]]:
    """Background reloads of ``key`` under way (the cache names its tasks after them)."""
    return [task for task in asyncio.all_tasks() if task.get_name() == f"cache-refresh:{key}"]


async def until_read(cache: Cache, key: str, expected: object) -> None:
    await eventually(lambda: cache.get(key), lambda seen: seen == expected)


async def until_l1_serves(cache: Cache, key: str, expected: object) -> None:
    """Read until a read is an L1 hit: a read that overlapped an announcement of the key
    does not fill L1, a later one does."""
    prefix = key.partition(":")[0]

    async def l1_hits() -> int:
        assert await cache.get(key) == expected
        return cache.reads.get((prefix, "l1_hit"), 0)

    hits = cache.reads.get((prefix, "l1_hit"), 0)
    await eventually(l1_hits, lambda seen: seen > hits)


def test_prefix_upper_bounds_cover_every_key_with_the_prefix() -> None:
    from app.cache.postgres import prefix_upper_bound

    assert prefix_upper_bound("auth:42:") == "auth:42;"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("x\ud7ff") == "x\ue000"  # skips the surrogates
    bound = prefix_upper_bound("k:é")
    assert bound is not None
    for key in ("k:é", "k:é\U0010ffff", "k:éz"):
        assert "k:é".encode() <= key.encode() < bound.encode()
