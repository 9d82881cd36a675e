"""`kanmon dev`: the whole system in one process for a fresh machine.

SQLite under ./data and, when KANMON_REDIS_URL is unset, an embedded valkey-server on a unix
socket; migrations; the gateway; one arq worker per queue. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.core.db import apply_migrations
from gateway.core.jobs import QUEUES
from gateway.embedded_redis import start_embedded_redis
from gateway.logs import configure_logging
from gateway.serve import WEBSOCKET_OPTIONS, GracefulServer
from gateway.settings import ConfigurationError, Environment, Settings

log = logging.getLogger("kanmon.dev")


class _AnnouncingServer(GracefulServer):
    """Sets `listening` once the socket is bound, so the banner never precedes the server; on
    the way out, runs `before_shutdown` first: the workers share the gateway's database, which
    its shutdown closes, and a cron job running in between failed with "DB configuration not
    initialised"."""

    def __init__(
        self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self._before_shutdown = before_shutdown

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        await self._before_shutdown()
        await super().shutdown(sockets)


def port_in_use(host: str, port: int) -> bool:
    """Checked before anything starts: uvicorn finds out only after the workers and the
    embedded server are up, and stops with an exit that asyncio reports as a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


async def run_dev(settings: Settings) -> int:
    configure_logging()
    if port_in_use(settings.host, settings.port):
        raise ConfigurationError(
            f"{settings.host}:{settings.port} is in use: set KANMON_PORT to a free port"
        )
    settings = settings.model_copy(update={"env": Environment.DEVELOPMENT})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if not settings.redis_url:
        embedded, url = start_embedded_redis()
        settings = settings.model_copy(update={"redis_url": url})
        log.info("embedded Redis-compatible server started")
    shared = _write_shared_settings(settings, with_redis=embedded is not None)
    try:
        await apply_migrations(settings.resolved_database_url())
        return await _serve_all(settings)
    finally:
        shared.unlink(missing_ok=True)
        if embedded is not None:
            embedded.stop()


def _write_shared_settings(settings: Settings, *, with_redis: bool) -> Path:
    """`kanmon admin`, `kanmon worker --check` and a second worker need this system's settings
    while it runs: development (the key under the data directory) and the embedded server's
    socket, which no one could otherwise guess. `env $(cat data/dev.env) kanmon admin queues`."""
    path = settings.data_dir / "dev.env"
    lines = ["KANMON_ENV=development"]
    if with_redis:
        lines.append(f"KANMON_REDIS_URL={settings.redis_url}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def _serve_all(settings: Settings) -> int:
    from workers.runner import KanmonWorker
    from workers.settings import functions_for, worker_options

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        **WEBSOCKET_OPTIONS,
        log_level="info",
    )
    workers = [
        KanmonWorker(**worker_options(settings, q), handle_signals=False)
        for q in QUEUES
        if functions_for(q)
    ]

    async def stop_workers() -> None:
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.close()

    server = _AnnouncingServer(config, before_shutdown=stop_workers)
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    serving = asyncio.create_task(server.serve())
    try:
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if server.started:
            url = f"http://{settings.host}:{settings.port}/graphql"
            print(f"Kanmon is running. GraphiQL: {url}  (Ctrl-C stops)", flush=True)
            print(
                f"Other kanmon commands against it: env $(cat {settings.data_dir}/dev.env) ...",
                flush=True,
            )
        await serving
    finally:
        await stop_workers()  # done already unless the server failed to start
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0
