"""Real `kanmon serve` and `kanmon worker` processes for end-to-end tests.

Each process gets the suite's database, Redis and secret key through `KANMON_*` variables (and
nothing else from the caller's `KANMON_*` environment), writes its output to a log file that
failures quote, and is stopped with SIGTERM and waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.settings import Settings

# The `kanmon` console script's own entry point (`gateway.cli:main`), started as a module so the
# command line does not read "kanmon serve": a developer's `pkill -f "kanmon serve"` on the same
# machine then leaves the suite's processes alone.
KANMON = [sys.executable, "-m", "gateway.cli"]
START_SECONDS = 30.0
POLL_SECONDS = 0.05
STOP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def process_environment(
    settings: Settings, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The caller's environment without its `KANMON_*` variables, plus the suite's backends."""
    assert settings.database_url
    assert settings.redis_url
    assert settings.secret_key
    env = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    env.update(
        {
            "KANMON_ENV": settings.env.value,
            "KANMON_DATABASE_URL": settings.database_url,
            "KANMON_REDIS_URL": settings.redis_url,
            "KANMON_SECRET_KEY": settings.secret_key.get_secret_value(),
            "KANMON_LOGIN_FAILURES_PER_IP": str(settings.login_failures_per_ip),
            "KANMON_SIGNUPS_PER_IP_PER_HOUR": str(settings.signups_per_ip_per_hour),
        }
    )
    env.update(overrides or {})
    return env


@dataclass
class KanmonProcess:
    """One running `kanmon` command and the file its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "<no log>"

    def records(self) -> list[dict[str, Any]]:
        """The process's log, every line a JSON record (a raw line fails the test)."""
        output = self.log_path.read_text(errors="replace")
        found = []
        for line in output.splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON log line: {line!r}\n{output[-4000:]}") from None
        return found

    async def until(
        self, ready: Callable[[], Awaitable[Any]], what: str, seconds: float = START_SECONDS
    ) -> None:
        """Polls the process's state until `ready()` is true (no event crosses the process
        boundary); fails at once, with the process's log, if the process exits meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    if self.process.returncode is not None:
                        raise AssertionError(
                            f"{self.name} exited with {self.process.returncode} while waiting "
                            f"for {what}\n{self.log_tail()}"
                        )
                    if await ready():
                        return
                    await asyncio.sleep(POLL_SECONDS)  # pacing of the poll
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {what} after {seconds:.0f} s\n{self.log_tail()}"
            ) from None

    async def stop(self) -> int:
        """SIGTERM, then wait; a process that does not stop in time is killed and reported."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_SECONDS):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError(
                    f"{self.name} ignored SIGTERM for {STOP_SECONDS:.0f} s\n{self.log_tail()}"
                ) from None
        return self.process.returncode if self.process.returncode is not None else -1


@dataclass
class Gateway(KanmonProcess):
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=20.0)


async def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> KanmonProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *KANMON,
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    return KanmonProcess(name, process, log_path)


async def _wait_ready(gateway: Gateway) -> None:
    """Polls /readyz until the gateway answers 200; fails at once if the process exits."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=2.0) as http:

        async def ready() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await gateway.until(ready, "readiness (/readyz 200)")


async def spawn_gateway(
    settings: Settings,
    name: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
) -> Gateway:
    """`kanmon serve` on a free port, returned at once: the caller waits for what it needs."""
    folder = log_dir or Path(tempfile.mkdtemp(prefix="kanmon-gateways-"))
    port = free_port()
    spawned = await _spawn(
        name,
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        process_environment(settings, env),
        folder,
    )
    return Gateway(spawned.name, spawned.process, spawned.log_path, port=port)


async def start_gateway(
    settings: Settings,
    name: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
) -> Gateway:
    """`kanmon serve` on a free port, returned once /readyz says the database and Redis answer."""
    gateway = await spawn_gateway(settings, name, env, log_dir)
    try:
        await _wait_ready(gateway)
    except BaseException:
        await gateway.stop()
        raise
    return gateway


@asynccontextmanager
async def running_gateways(
    settings: Settings, count: int, env: Mapping[str, str] | None = None, prefix: str = "gateway"
) -> AsyncIterator[list[Gateway]]:
    """`count` gateway processes sharing the suite's database and Redis; all stopped on exit."""
    folder = Path(tempfile.mkdtemp(prefix="kanmon-gateways-"))
    started: list[Gateway] = []
    try:
        for index in range(count):
            started.append(await start_gateway(settings, f"{prefix}-{index}", env, folder))
        yield started
    finally:
        codes = [await gateway.stop() for gateway in reversed(started)]
        failed = [
            f"{gateway.name} exited with {code}\n{gateway.log_tail()}"
            for gateway, code in zip(reversed(started), codes, strict=True)
            # uvicorn re-raises the signal after its orderly shutdown: -SIGTERM is a clean exit.
            if code not in (0, -signal.SIGTERM)
        ]
        assert not failed, "\n".join(failed)


@asynccontextmanager
async def running_worker(
    settings: Settings, queue: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[KanmonProcess]:
    """`kanmon worker --queue <queue>` (crons included) until the block ends, then SIGTERM."""
    folder = Path(tempfile.mkdtemp(prefix="kanmon-workers-"))
    worker = await _spawn(
        f"worker-{queue}", ["worker", "--queue", queue], process_environment(settings, env), folder
    )
    try:
        yield worker
    finally:
        code = await worker.stop()
        assert code == 0, f"worker exited with {code}\n{worker.log_tail()}"


def redis_client_ports(pid: int, redis_port: int) -> set[int]:
    """Local TCP ports of `pid`'s connections to `redis_port` (from /proc), so a test can name
    one process's Redis clients in CLIENT LIST on a server other processes share."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            lines = Path(table).read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
