"""A Redis that can freeze and thaw, as one stopped with SIGSTOP and resumed with SIGCONT does.

A TCP proxy in front of a real server: thawed, it passes bytes both ways; frozen, it still
accepts connections (the kernel's backlog does that for a stopped process) but passes nothing
in either direction, holding what it read until it thaws. Connections opened while frozen reach
the server once it thaws; bytes held for a client that has since hung up reach no one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.container import redis_settings


class FreezableRedis:
    def __init__(self, upstream_url: str) -> None:
        self._upstream = redis_settings(upstream_url)
        self._answering = asyncio.Event()
        self._answering.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's URL, on the upstream URL's database."""
        return f"redis://127.0.0.1:{self.port}/{self._upstream.database}"

    def freeze(self) -> None:
        self._answering.clear()

    def thaw(self) -> None:
        self._answering.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            await self._answering.wait()
            up_reader, up_writer = await self._open_upstream()
            self._writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            # `stop`, on a connection held frozen: asyncio's server logs a cancelled handler
            # as an error, and nothing is left to clean up but the sockets `stop` closes.
            pass
        finally:
            self._tasks.discard(task)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._upstream.unix_socket_path:
            return await asyncio.open_unix_connection(self._upstream.unix_socket_path)
        assert isinstance(self._upstream.host, str)
        return await asyncio.open_connection(self._upstream.host, self._upstream.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._answering.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def freezable_redis(upstream_url: str) -> AsyncIterator[FreezableRedis]:
    proxy = FreezableRedis(upstream_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
