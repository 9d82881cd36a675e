"""`kanmon serve`: uvicorn processes that each own a SO_REUSEPORT socket.

With one shared listening socket, a burst of connections (or a proxy's few long-lived ones)
tends to land on one process; with a socket per process the kernel spreads connections over
all of them. The parent only supervises: it restarts a process that dies and, on SIGTERM or
SIGINT, passes the signal on and waits for every process's orderly shutdown.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess

from gateway.graphql.limits import MAX_BODY_BYTES

APP = "gateway.asgi:app_from_environment"
# Every gateway server, `kanmon serve` and `kanmon dev` alike: no per-message compression (its
# buffers cost every open socket memory), and the HTTP body limit for websocket messages too.
WEBSOCKET_OPTIONS: dict[str, Any] = {"ws_per_message_deflate": False, "ws_max_size": MAX_BODY_BYTES}
RESTART_PAUSE_SECONDS = 1.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        **WEBSOCKET_OPTIONS,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


class GracefulServer(uvicorn.Server):
    """On SIGTERM, websocket clients hear "going away" (1001) and reconnect elsewhere, instead
    of uvicorn's abrupt close when its grace period runs out."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from gateway.app import close_websockets

        await close_websockets(1001)
        await super().shutdown(sockets)


def _run_one(host: str, port: int) -> None:
    server = GracefulServer(_config(host, port))
    server.run(sockets=[_bind(host, port)])


def serve(host: str, port: int, workers: int) -> int:
    if workers <= 1:
        GracefulServer(_config(host, port)).run()
        return 0
    # The processes share the cores: each hashes at most its share of passwords at once.
    cores = os.cpu_count() or 1
    os.environ.setdefault("KANMON_ARGON2_THREADS", str(max(1, cores // workers)))
    # Metrics of all processes in one scrape (prometheus-client's multiprocess mode).
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="kanmon-metrics-"))
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(target=_run_one, args=(host, port), name="kanmon-gateway")
        process.start()
        return process

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    processes = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        for index, process in enumerate(processes):
            process.join(timeout=0.5)
            if not stopping and not process.is_alive():
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                time.sleep(RESTART_PAUSE_SECONDS)
                processes[index] = start()
    for process in processes:
        process.join()
    return 0
