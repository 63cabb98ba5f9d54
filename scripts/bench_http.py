"""HTTP: the authenticated task list, the health check and login, with wrk.

    uv run python -m scripts.bench_http [--duration 15] [--repeats 3]

Starts `app serve` (one uvicorn worker, ENV=production settings otherwise default) on a
throwaway embedded PostgreSQL, signs up a user with 40 tasks in 4 projects, then runs
`wrk -t2 -c32` (installed with apt-get when missing) against:

- GET /api/tasks (authenticated, 20 rows with the project join),
- GET /healthz (the framework's ceiling on this machine),
- POST /api/auth/login (argon2id at the production parameters, rate limits lifted so the
  hashing itself is measured), reporting the status mix and the server's peak RSS.

Prints req/s, p50 and p99 (medians of the repeats). References measured on the same kind
of machine for the popular full-stack FastAPI template: list ~240 req/s (p50 ~127 ms),
health ~5,400 req/s, login ~8 req/s with RSS above 1 GB.
"""

from __future__ import annotations

import argparse
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
        "JOBS_INLINE_WORKER": "false",
        "RATE_LIMIT_LOGIN_PER_IP": "100000000",
        "RATE_LIMIT_LOGIN_PER_EMAIL": "100000000",
        **env,
    }
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=environment)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per seeded task otherwise
    ensure_wrk()

    with postgres() as dsn:
        server, base = serve(dsn)
        try:
            token = prepare(base)
            auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
            login_body = json.dumps({"email": "bench@example.com", "password": PASSWORD})
            login = textwrap.dedent(f"""
                wrk.method = "POST"
                wrk.headers["Content-Type"] = "application/json"
                wrk.body = '{login_body}'
            """)
            results: dict[str, list[dict[str, object]]] = {"list": [], "health": [], "login": []}
            for _ in range(options.repeats):
                results["list"].append(wrk(f"{base}/api/tasks", options.duration, auth))
                results["health"].append(wrk(f"{base}/healthz", options.duration, ""))
                results["login"].append(wrk(f"{base}/api/auth/login", options.duration, login))
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"wrk -t2 -c32 -d{options.duration}s, one uvicorn worker, medians of {options.repeats}")
    print(f"{'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}  statuses (last run)")
    for name, runs in results.items():
        rps = statistics.median(float(r["rps"]) for r in runs)  # type: ignore[arg-type]
        p50 = statistics.median(float(r["p50"]) for r in runs)  # type: ignore[arg-type]
        p99 = statistics.median(float(r["p99"]) for r in runs)  # type: ignore[arg-type]
        print(f"{name:<22}{rps:>10.0f}{p50:>10.1f}{p99:>10.1f}  {runs[-1]['statuses']}")
    list_rps = statistics.median(float(r["rps"]) for r in results["list"])  # type: ignore[arg-type]
    health_rps = statistics.median(float(r["rps"]) for r in results["health"])  # type: ignore[arg-type]
    print(
        f"GET /api/tasks: {list_rps / 240:.1f}x the template's 240 req/s; "
        f"{list_rps / health_rps:.2f} of our /healthz"
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


if __name__ == "__main__":
    main()
