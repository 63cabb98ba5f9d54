"""Podman for tests/test_image.py: a local base image, the build, and a door to the database.

Machines that run the suite reach no container registry, so the base image is made here:
debootstrap a minimal Debian bookworm with python3-venv and ``podman import`` it (about 40 s,
once per machine: the tag is reused while it exists). The image is built from it with
``BASE_IMAGE``; podman's layer cache makes a rebuild after a code change take seconds.

Podman runs with a containers.conf written per run: runc (crun fails on hybrid cgroup
hosts) and ulimits within the host's hard limits (podman's defaults exceed them on some
machines and every container then fails to start). Containers use the host network, so the
test needs no bridge, no port mapping and no netavark.

The embedded test PostgreSQL listens only on a unix socket in a 0700 directory that the
image's non-root user cannot enter; :class:`UnixSocketDoor` forwards a loopback TCP port to
it, from a thread of its own so it keeps forwarding while the test blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from app.config import PROJECT_ROOT

TOOLS = ("podman", "runc", "debootstrap", "tar")
# Bump the suffix when the base image's recipe changes, so machines build it again.
BASE_IMAGE = "localhost/pgfirst-test-base:bookworm-1"
IMAGE = "localhost/pgfirst-test:latest"
DEBIAN_MIRROR = os.environ.get("PGFIRST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The host's CA bundle, given to the build as the extra_ca secret: on machines whose HTTPS
# goes through a re-signing proxy it holds that proxy's CA, elsewhere it changes nothing.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_SECRET = [f"--secret=id=extra_ca,src={HOST_CA_BUNDLE}"] if HOST_CA_BUNDLE.exists() else []
STEP_TIMEOUT = 900.0


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def write_containers_conf(directory: Path) -> Path:
    """A containers.conf with runc and ulimits that fit under this process's hard limits."""
    nofile = _within_hard_limit(resource.RLIMIT_NOFILE, 65_536)
    nproc = _within_hard_limit(resource.RLIMIT_NPROC, 8_192)
    path = directory / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        # journald, the default where systemd is installed, loses logs when it is not running.
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        # Without systemd (CI containers) the systemd cgroup manager and journald fail;
        # cgroupfs and a file work as root on any host.
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return path


def _within_hard_limit(which: int, wanted: int) -> int:
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


class CommandFailed(AssertionError):
    pass


async def run(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or CommandFailed with the tail of its output."""
    process = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise CommandFailed(f"{' '.join(args)} did not finish in {STEP_TIMEOUT} s") from None
    if process.returncode != 0:
        output = (stdout + stderr).decode(errors="replace")[-4000:]
        raise CommandFailed(f"{' '.join(args)} exited {process.returncode}:\n{output}")
    return stdout.decode()


class Podman:
    """``podman`` with this run's containers.conf."""

    def __init__(self, containers_conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf)}

    async def __call__(self, *args: str) -> str:
        return await run("podman", *args, env=self.env)

    async def succeeds(self, *args: str) -> bool:
        try:
            await self(*args)
        except CommandFailed:
            return False
        return True

    async def image_id(self, tag: str) -> str | None:
        if not await self.succeeds("image", "exists", tag):
            return None
        return (await self("image", "inspect", "--format", "{{.Id}}", tag)).strip()

    async def ensure_base_image(self) -> None:
        """Debian bookworm (minbase + python3-venv) as BASE_IMAGE, unless already there."""
        if await self.image_id(BASE_IMAGE):
            return
        if os.geteuid() != 0:
            raise CommandFailed(f"making {BASE_IMAGE} with debootstrap needs root")
        with tempfile.TemporaryDirectory(prefix="pgfirst-rootfs-") as work:
            root = Path(work) / "rootfs"
            await run(
                "debootstrap",
                "--variant=minbase",
                "--include=python3-venv",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            )
            tarball = Path(work) / "rootfs.tar"
            await run(
                "tar",
                "--exclude=./var/cache/apt/archives/*.deb",
                "--exclude=./var/lib/apt/lists/*_Packages",
                "-C",
                str(root),
                "-cf",
                str(tarball),
                ".",
            )
            await self("import", str(tarball), BASE_IMAGE)

    async def build_image(self) -> None:
        """Build the project's Dockerfile on BASE_IMAGE; drop the image it replaces."""
        previous = await self.image_id(IMAGE)
        base = f"BASE_IMAGE={BASE_IMAGE}"
        await self(
            "build",
            "--network=host",
            "--build-arg",
            base,
            *CA_SECRET,
            "-t",
            IMAGE,
            str(PROJECT_ROOT),
        )
        if previous and previous != await self.image_id(IMAGE):
            # Each code change leaves the last build untagged; remove it, not to fill the disk.
            await self.succeeds("rmi", previous)

    async def running(self, name: str) -> bool:
        state = await self("container", "inspect", "--format", "{{.State.Running}}", name)
        return state.strip() == "true"

    async def logs(self, name: str) -> str:
        try:
            return (await self("logs", "--tail", "40", name))[-4000:]
        except CommandFailed as exc:
            return str(exc)


class UnixSocketDoor:
    """A loopback TCP port forwarding every connection to a PostgreSQL unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> UnixSocketDoor:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            self._writers -= {client_w, server_w}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def reachable_from_containers(dsn: str) -> Iterator[str]:
    """``dsn`` as a host-network container can use it (TCP; a unix socket is forwarded)."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0] or parts.hostname or ""
    if not socket_dir.startswith("/"):
        yield dsn
        return
    port = parse_qs(parts.query).get("port", ["5432"])[0]
    with UnixSocketDoor(Path(socket_dir) / f".s.PGSQL.{port}") as door:
        user = f"{parts.username}@" if parts.username else ""
        yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{door.port}", query=""))
