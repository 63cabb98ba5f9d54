"""1,000 live SSE clients and a WebSocket share on one ``app serve`` process.

    .venv/bin/python -m scripts.bench_streams [--users 100] [--sse-per-user 10] \
        [--ws 100] [--slow 10] [--rounds-per-second 5] [--seconds 20] [--no-gc-freeze]

Starts a throwaway embedded PostgreSQL (or uses DATABASE_URL) and one ``app serve``
process (WEB_CONCURRENCY=1), makes ``--users`` accounts, and connects from two client
processes (raw asyncio sockets for SSE, the ``websockets`` library for WebSockets):

- ``users x sse-per-user`` SSE clients (default 1,000) and ``--ws`` WebSocket clients on
  the same users' channels;
- ``--slow`` SSE clients that stop reading after the response headers, each on a channel of
  its own with one ordinary "witness" client beside it. Those channels get a burst of 6 KB
  events, enough to fill the slow client's socket buffers and PUBSUB_QUEUE_SIZE.

The publisher (this process, through the broker as the app has it) sends one event to every
user's channel ``--rounds-per-second`` times a second for ``--seconds``; each event carries
its publish time, and every client records publish -> receipt. Reported: delivery p50/p99/
max over all clients, events lost, the server's RSS before and after the clients connected
(per connection), its CPU during publishing, and whether each slow client got
``event: dropped`` while its witness and everyone else kept their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from scripts.benchkit import percentile, postgres
from scripts.streamkit import (
    HttpError,
    cpu_seconds,
    make_users,
    open_sse,
    payload,
    raise_fd_limit,
    rss_kib,
    serve,
    sse_frames,
)

SLOW_PAD = "x" * 6_000  # under the 7,000 bytes that still travel inside the NOTIFY
SLOW_BURST = (
    2_500  # events per slow channel: 15 MB, past socket buffers (~4 MB) + PUBSUB_QUEUE_SIZE
)
CONNECT_AT_ONCE = 100


# --- the client process -------------------------------------------------------------------------


@dataclass
class ClientResults:
    latencies_ms: list[float] = field(default_factory=list)
    witness_latencies_ms: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # client key -> bench events
    slow_dropped: dict[str, bool] = field(default_factory=dict)
    slow_received: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def _sse_reader(key: str, stream: Any, results: ClientResults) -> None:
    count = 0
    into = results.witness_latencies_ms if key.startswith("witness") else results.latencies_ms
    try:
        async for frame in sse_frames(stream):
            if frame.event != "bench":
                continue
            data = payload(frame)
            into.append((time.time() - float(data["t"])) * 1000)  # type: ignore[arg-type]
            count += 1
            results.counts[key] = count
    except (OSError, asyncio.IncompleteReadError) as exc:
        results.errors.append(f"{key}: {exc!r}")


async def _ws_reader(key: str, socket: Any, results: ClientResults) -> None:
    count = 0
    try:
        async for message in socket:
            data = orjson.loads(message)
            if data.get("event") != "bench":
                continue
            results.latencies_ms.append((time.time() - float(data["data"]["t"])) * 1000)
            count += 1
            results.counts[key] = count
    except Exception as exc:  # the library's closed-connection errors end the reader
        results.errors.append(f"{key}: {exc!r}")


async def _slow_drain(key: str, stream: Any, results: ClientResults) -> None:
    """Read what the server still sent; True when it ended with ``event: dropped``."""
    dropped = False
    received = 0
    try:
        async with asyncio.timeout(20):
            async for frame in sse_frames(stream):
                if frame.event == "dropped":
                    dropped = True
                received += 1
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        pass
    results.slow_dropped[key] = dropped
    results.slow_received[key] = received


async def run_clients(spec: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect as ws_connect

    raise_fd_limit()
    host, port = spec["host"], spec["port"]
    results = ClientResults()
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    readers: list[asyncio.Task[None]] = []
    slow_streams: list[tuple[str, Any]] = []
    sockets: list[Any] = []

    async def connect_sse(key: str, token: str, slow: bool) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    stream = await open_sse(
                        host, port, token, receive_buffer=4096 if slow else None
                    )
                    break
                except (OSError, HttpError, TimeoutError) as exc:
                    if attempt == 4:
                        raise RuntimeError(f"{key} could not connect: {exc!r}") from None
                    await asyncio.sleep(0.5)
        if slow:
            slow_streams.append((key, stream))
        else:
            readers.append(asyncio.create_task(_sse_reader(key, stream, results)))

    async def connect_ws(key: str, token: str) -> None:
        async with gate:
            socket = await ws_connect(
                f"ws://{host}:{port}/api/ws",
                additional_headers={"Authorization": f"Bearer {token}"},
                max_size=2**20,
            )
        sockets.append(socket)
        readers.append(asyncio.create_task(_ws_reader(key, socket, results)))

    await asyncio.gather(
        *(connect_sse(key, token, False) for key, token in spec["sse"]),
        *(connect_sse(key, token, True) for key, token in spec["slow"]),
        *(connect_ws(key, token) for key, token in spec["ws"]),
    )
    print(f"ready {len(spec['sse']) + len(spec['slow']) + len(spec['ws'])}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop"
    await asyncio.gather(*(_slow_drain(key, stream, results) for key, stream in slow_streams))
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for socket in sockets:
        await socket.close()
    print(json.dumps(results.__dict__), flush=True)


# --- the conductor ------------------------------------------------------------------------------


async def start_client(spec: dict[str, Any]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_streams",
        "--client",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**28,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(spec).encode() + b"\n")
    await process.stdin.drain()
    return process


async def wait_ready(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 300)).decode()
    if not line.startswith("ready"):
        raise RuntimeError(f"client process failed: {line!r}")
    return int(line.split()[1])


async def finish_client(process: asyncio.subprocess.Process) -> ClientResults:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(b"stop\n")
    await process.stdin.drain()
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    await process.wait()
    return ClientResults(**json.loads(line))


async def publish_rounds(
    broker: Any, channels: list[str], rounds_per_second: float, seconds: float
) -> int:
    interval = 1 / rounds_per_second
    rounds = int(seconds * rounds_per_second)
    start = time.monotonic()
    for n in range(rounds):
        await asyncio.gather(
            *(
                broker.publish(channel, {"type": "bench", "t": time.time(), "n": n})
                for channel in channels
            )
        )
        delay = start + (n + 1) * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return rounds


async def publish_burst(broker: Any, channels: list[str], events: int, seconds: float) -> None:
    """``events`` large events per channel spread over ``seconds``, after a short delay."""
    await asyncio.sleep(seconds / 4)
    per_batch = 50
    pause = seconds / 2 / (events / per_batch)
    for n in range(0, events, per_batch):
        await asyncio.gather(
            *(
                broker.publish(
                    channel, {"type": "bench", "t": time.time(), "n": n, "pad": SLOW_PAD}
                )
                for channel in channels
                for _ in range(per_batch)
            )
        )
        await asyncio.sleep(pause)


async def measure(dsn: str, options: argparse.Namespace) -> None:
    from app.config import load_settings
    from app.services import open_services

    env = {
        "ENV": "test",
        "DATABASE_URL": dsn,
        "SECRET_KEY": "bench-streams-secret-key-0123456789abcdef",
        "LOG_LEVEL": "WARNING",
        "JOBS_INLINE_WORKER": "false",
        "ARGON2_MEMORY_KIB": "1024",
        # As a deployed server has it (ENV=test turns it off); --no-gc-freeze to compare.
        "GC_FREEZE_AFTER_STARTUP": str(options.gc_freeze).lower(),
    }
    os.environ.update(env)
    users = await make_users(options.users + options.slow, f"streams-{int(time.time())}")
    fast, slow = users[: options.users], users[options.users :]
    specs: list[dict[str, Any]] = [{"sse": [], "ws": [], "slow": []} for _ in range(2)]
    n = 0
    for index, (_, token) in enumerate(fast):
        for copy in range(options.sse_per_user):
            specs[n % 2]["sse"].append((f"sse:{index}:{copy}", token))
            n += 1
    for copy in range(options.ws):
        index = copy % len(fast)
        specs[copy % 2]["ws"].append((f"ws:{index}:{copy}", fast[index][1]))
    for index, (_, token) in enumerate(slow):
        specs[index % 2]["slow"].append((f"slow:{index}", token))
        specs[(index + 1) % 2]["sse"].append((f"witness:{index}", token))

    async with serve(env) as server:
        for spec in specs:
            spec.update(host=server.host, port=server.port)
        await asyncio.sleep(1)
        rss_before = rss_kib(server.pid)
        clients = [await start_client(spec) for spec in specs]
        connected = sum([await wait_ready(client) for client in clients])
        await asyncio.sleep(2)
        rss_connected = rss_kib(server.pid)
        async with open_services(load_settings()) as services:
            cpu_start, wall_start = cpu_seconds(server.pid), time.monotonic()
            clients_cpu_start = sum(cpu_seconds(client.pid) for client in clients)
            rounds, _ = await asyncio.gather(
                publish_rounds(
                    services.broker,
                    [f"user:{user_id}" for user_id, _ in fast],
                    options.rounds_per_second,
                    options.seconds,
                ),
                publish_burst(
                    services.broker,
                    [f"user:{user_id}" for user_id, _ in slow],
                    SLOW_BURST,
                    options.seconds,
                ),
            )
            await asyncio.sleep(3)  # the last deliveries
            cpu = cpu_seconds(server.pid) - cpu_start
            clients_cpu = sum(cpu_seconds(client.pid) for client in clients) - clients_cpu_start
            wall = time.monotonic() - wall_start
        rss_after = rss_kib(server.pid)
        results = [await finish_client(client) for client in clients]

    report(options, connected, rounds, rss_before, rss_connected, rss_after, cpu, wall, results)
    print(f"client processes' CPU while publishing: {clients_cpu:.1f} s")


def report(
    options: argparse.Namespace,
    connected: int,
    rounds: int,
    rss_before: int,
    rss_connected: int,
    rss_after: int,
    cpu: float,
    wall: float,
    results: list[ClientResults],
) -> None:
    latencies = [value for result in results for value in result.latencies_ms]
    counts = {key: value for result in results for key, value in result.counts.items()}
    dropped = {key: value for result in results for key, value in result.slow_dropped.items()}
    errors = [error for result in results for error in result.errors]
    ordinary = [key for key in counts if not key.startswith("witness")]
    expected_fast = options.users * options.sse_per_user + options.ws
    short = [key for key in ordinary if counts[key] < rounds]
    missing = expected_fast - len(ordinary)
    witnesses = [key for key in counts if key.startswith("witness")]
    witnesses_short = [key for key in witnesses if counts[key] < SLOW_BURST]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"streams on one app serve process, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({os.cpu_count()} CPUs, load average {load}; "
        f"GC_FREEZE_AFTER_STARTUP={str(options.gc_freeze).lower()})"
    )
    print(
        f"connected: {connected} ({options.users} users x {options.sse_per_user} SSE, "
        f"{options.ws} WebSocket, {options.slow} slow SSE + {options.slow} witnesses)"
    )
    print(
        f"published: {rounds} rounds x {options.users} channels = {rounds * options.users} events, "
        f"{options.rounds_per_second}/s per channel; {SLOW_BURST} x 6 KB per slow channel"
    )
    print(f"deliveries received: {len(latencies)}")
    print(
        f"delivery ms: p50 {percentile(latencies, 0.5):.1f}  "
        f"p99 {percentile(latencies, 0.99):.1f}  max {max(latencies):.1f}"
    )
    print(
        f"clients short of events: {len(short)} (+{missing} that received none); "
        f"witnesses short: {len(witnesses_short)}"
    )
    slow_received = {k: v for result in results for k, v in result.slow_received.items()}
    print(
        f"slow clients dropped: {sum(dropped.values())}/{len(dropped)} "
        f"(events each still received when it read again: {sorted(slow_received.values())})"
    )
    witness = [value for result in results for value in result.witness_latencies_ms]
    if witness:
        print(
            f"witnesses (beside a slow client, 6 KB burst) ms: p50 {percentile(witness, 0.5):.1f}"
            f"  p99 {percentile(witness, 0.99):.1f}"
        )
    print(
        f"server RSS: {rss_before / 1024:.1f} MiB idle, {rss_connected / 1024:.1f} MiB connected "
        f"({(rss_connected - rss_before) / max(connected, 1):.1f} KiB per connection), "
        f"{rss_after / 1024:.1f} MiB after publishing"
    )
    print(
        f"server CPU while publishing: {cpu:.1f} s over {wall:.1f} s "
        f"({100 * cpu / wall:.0f}% of a core)"
    )
    if errors:
        print(f"client errors: {len(errors)}; first: {errors[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--sse-per-user", type=int, default=10)
    parser.add_argument("--ws", type=int, default=100, help="WebSocket clients")
    parser.add_argument("--slow", type=int, default=4, help="SSE clients that stop reading")
    parser.add_argument("--rounds-per-second", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server's GC_FREEZE_AFTER_STARTUP (app/runtime.py)",
    )
    options = parser.parse_args()
    if options.client:
        asyncio.run(run_clients(json.loads(sys.stdin.readline())))
        return
    raise_fd_limit()
    with postgres(durable=False) as dsn:
        asyncio.run(measure(dsn, options))


if __name__ == "__main__":
    main()
