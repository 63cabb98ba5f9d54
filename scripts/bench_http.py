"""HTTP: the authenticated task list, the health check and login, with wrk.

    .venv/bin/python -m scripts.bench_http [--duration 15] [--repeats 3] [--users 300]
        [--cases list,health,login,many] [--warmup 0]

Starts `app serve` (one uvicorn worker, ENV=production settings otherwise default) on a
throwaway embedded PostgreSQL, signs up a user with 40 tasks in 4 projects, then runs
`wrk -t2 -c32` (installed with apt-get when missing) against:

- GET /api/tasks (authenticated, 20 rows with the project join), one user repeating one
  request: after the first, every request is served from the in-process cache (L1),
- GET /healthz (the framework's ceiling on this machine),
- POST /api/auth/login (argon2id at the production parameters, rate limits lifted so the
  hashing itself is measured), reporting the status mix and the server's peak RSS,
- GET /api/tasks with many users (``many``): ``--users`` more accounts, each with a
  project and 20 tasks, and every request carrying a random one of their tokens (a wrk
  Lua script), so sessions and pages come and go in the caches as they would with real
  traffic rather than staying in L1.

The cases of one repeat run back to back, in the order given, so their ratios compare
runs made minutes apart on the same (possibly busy) machine. Each measured run starts
cold for its case (the other cases ran meanwhile, longer than the L1 TTL); ``--warmup N``
runs the same wrk for N seconds first, unrecorded, to measure the steady state instead.

Prints req/s, p50 and p99 (medians of the repeats). References measured on the same kind
of machine for the popular full-stack FastAPI template: list ~240 req/s (p50 ~127 ms),
health ~5,400 req/s, login ~8 req/s with RSS above 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from scripts.benchkit import free_port, postgres

PASSWORD = "bench-Password-1"  # noqa: S105 - a throwaway account


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


def random_token_script(tokens: list[str]) -> str:
    """A wrk script sending each request with a random one of ``tokens``."""
    listed = ",\n".join(f'  "{token}"' for token in tokens)
    return (
        textwrap.dedent("""
        tokens = {
        %s
        }
        function init(args)
          -- each wrk thread has its own Lua state: seed them apart
          math.randomseed(os.time() + math.floor(os.clock() * 1000000))
        end
        function request()
          local token = tokens[math.random(#tokens)]
          return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. token})
        end
    """)
        % listed
    )


def wrk(url: str, duration: int, script: str) -> dict[str, object]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    output = subprocess.run(
        [ensure_wrk(), "-t2", "-c32", f"-d{duration}s", "--latency", "-s", lua.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(lua.name).unlink()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": rate,
        "p50": percentile("50"),
        "p99": percentile("99"),
        "statuses": f"{errors.group(1) if errors else 0} of "
        f"{total.group(1) if total else '?'} not 2xx",
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve(dsn: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`app serve` as in production, one worker, on a free port; extra env vars on top."""
    port = free_port()
    environment = {
        **os.environ,
        "ENV": "production",
        "SECRET_KEY": "bench-secret-key-that-is-long-enough-000000",
        "DATABASE_URL": dsn,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "MAILER": "memory",
        "PUBLIC_URL": "https://bench.example.com",
        "JOBS_INLINE_WORKER": "false",
        "RATE_LIMIT_LOGIN_PER_IP": "100000000",
        "RATE_LIMIT_LOGIN_PER_EMAIL": "100000000",
        "RATE_LIMIT_SIGNUP_PER_IP": "100000000",
        # The many-users tokens are issued before the first repeat and used until the last.
        "ACCESS_TOKEN_TTL_SECONDS": "86400",
        **env,
    }
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=environment)
    return server, f"http://127.0.0.1:{port}"


CASES = ("list", "health", "login", "many")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=300, help="accounts of the many case")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, in order")
    parser.add_argument(
        "--warmup", type=int, default=0, help="seconds of unrecorded wrk before each run"
    )
    options = parser.parse_args()
    cases = [case for case in options.cases.split(",") if case]
    if unknown := set(cases) - set(CASES):
        sys.exit(f"unknown cases: {', '.join(sorted(unknown))} (known: {', '.join(CASES)})")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per seeded task otherwise
    ensure_wrk()

    with postgres() as dsn:
        server, base = serve(dsn)
        try:
            token = prepare(base)
            many_tokens = asyncio.run(prepare_users(base, options.users)) if "many" in cases else []
            login_body = json.dumps({"email": "bench@example.com", "password": PASSWORD})
            scripts = {
                "list": f'wrk.headers["Authorization"] = "Bearer {token}"\n',
                "health": "",
                "login": textwrap.dedent(f"""
                    wrk.method = "POST"
                    wrk.headers["Content-Type"] = "application/json"
                    wrk.body = '{login_body}'
                """),
                "many": random_token_script(many_tokens),
            }
            paths = {
                "list": "/api/tasks",
                "health": "/healthz",
                "login": "/api/auth/login",
                "many": "/api/tasks",
            }
            results: dict[str, list[dict[str, object]]] = {case: [] for case in cases}
            for _ in range(options.repeats):
                for case in cases:
                    if options.warmup > 0:
                        wrk(f"{base}{paths[case]}", options.warmup, scripts[case])
                    run = wrk(f"{base}{paths[case]}", options.duration, scripts[case])
                    results[case].append(run)
                    print(
                        f"  {case}: {float(run['rps']):.0f} req/s, p50 {float(run['p50']):.1f}"  # type: ignore[arg-type]
                        f" ms, p99 {float(run['p99']):.1f} ms",  # type: ignore[arg-type]
                        flush=True,
                    )
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    labels = {"many": f"list, {options.users} users"}
    warm = f", after {options.warmup}s of warm-up each" if options.warmup > 0 else ", cold"
    print(
        f"wrk -t2 -c32 -d{options.duration}s, one uvicorn worker, medians of {options.repeats}"
        + warm
    )
    print(f"{'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}  statuses (last run)")
    medians: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        medians[name] = {
            field: statistics.median(float(r[field]) for r in runs)  # type: ignore[arg-type]
            for field in ("rps", "p50", "p99")
        }
        m = medians[name]
        label = labels.get(name, name)
        print(
            f"{label:<22}{m['rps']:>10.0f}{m['p50']:>10.1f}{m['p99']:>10.1f}"
            f"  {runs[-1]['statuses']}"
        )
    if "health" in results:
        # Ratios per repeat (each list run next to the /healthz run of the same repeat),
        # then their median: steadier than a ratio of medians on a shared machine.
        for name in ("list", "many"):
            if name not in results:
                continue
            ratios = [
                float(own["rps"]) / float(health["rps"])  # type: ignore[arg-type]
                for own, health in zip(results[name], results["health"], strict=True)
            ]
            tails = [
                float(r["p99"]) / float(r["p50"])  # type: ignore[arg-type]
                for r in results[name]
            ]
            print(
                f"{labels.get(name, 'list, one user')}: {statistics.median(ratios):.2f}x "
                f"our /healthz (per repeat: {', '.join(f'{r:.2f}' for r in ratios)}); "
                f"p99/p50 {statistics.median(tails):.1f}"
            )
    if "list" in medians:
        print(
            f"GET /api/tasks, one user: {medians['list']['rps'] / 240:.1f}x "
            "the template's 240 req/s"
        )
    print(f"server peak RSS over the whole run: {rss:.0f} MB")


def prepare(base: str) -> str:
    """Wait for the server, make the user and its tasks, return an access token."""
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit("server did not become ready")
            time.sleep(0.2)
        client.post("/api/auth/signup", json={"email": "bench@example.com", "password": PASSWORD})
        tokens = client.post(
            "/api/auth/login", json={"email": "bench@example.com", "password": PASSWORD}
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        projects = [
            client.post("/api/projects", json={"name": f"Project {n}"}, headers=headers).json()[
                "id"
            ]
            for n in range(4)
        ]
        for n in range(40):
            body = {
                "title": f"Task {n}",
                "body": "Some details " * 10,
                "project_id": projects[n % 4],
            }
            client.post("/api/tasks", json=body, headers=headers).raise_for_status()
        page = client.get("/api/tasks", headers=headers).json()
        assert len(page["items"]) == 20
        assert page["items"][0]["project_name"]
        return str(tokens["access_token"])


async def prepare_users(base: str, users: int, tasks_each: int = 20) -> list[str]:
    """``users`` accounts with one project and ``tasks_each`` tasks each; their tokens."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(16)
        # Signup and login hash a password: no more at once than the server hashes
        # (PASSWORD_HASH_CONCURRENCY), or a busy machine answers 503 after the wait.
        hashing = asyncio.Semaphore(2)

        async def one(n: int) -> str:
            async with gate:
                credentials = {"email": f"user{n}@example.com", "password": PASSWORD}
                async with hashing:
                    signup = await client.post("/api/auth/signup", json=credentials)
                    signup.raise_for_status()
                    login = await client.post("/api/auth/login", json=credentials)
                    login.raise_for_status()
                token = str(login.json()["access_token"])
                headers = {"Authorization": f"Bearer {token}"}
                project = await client.post(
                    "/api/projects", json={"name": f"Project of {n}"}, headers=headers
                )
                project.raise_for_status()
                for task in range(tasks_each):
                    body = {
                        "title": f"Task {task}",
                        "body": "Some details " * 10,
                        "project_id": project.json()["id"],
                    }
                    made = await client.post("/api/tasks", json=body, headers=headers)
                    made.raise_for_status()
                return token

        tokens = await asyncio.gather(*(one(n) for n in range(users)))
        page = (
            await client.get("/api/tasks", headers={"Authorization": f"Bearer {tokens[0]}"})
        ).json()
        assert len(page["items"]) == min(20, tasks_each)
        return list(tokens)


if __name__ == "__main__":
    main()
