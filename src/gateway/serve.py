"""`kanmon serve`: uvicorn processes that each own a SO_REUSEPORT socket.

With one shared listening socket, a burst of connections (or a proxy's few long-lived ones)
tends to land on one process; with a socket per process the kernel spreads connections over
all of them. The parent only supervises: it restarts a process that dies (and gives up, exit 3,
when they keep dying at startup) and, on SIGTERM or SIGINT, passes the signal on and waits for
every process's orderly shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess

from gateway.graphql.limits import MAX_BODY_BYTES

APP = "gateway.asgi:app_from_environment"

log = logging.getLogger("kanmon.serve")
# Every gateway server, `kanmon serve` and `kanmon dev` alike: no per-message compression (its
# buffers cost every open socket memory), and the HTTP body limit for websocket messages too.
WEBSOCKET_OPTIONS: dict[str, Any] = {"ws_per_message_deflate": False, "ws_max_size": MAX_BODY_BYTES}
RESTART_PAUSE_SECONDS = 1.0
# A process that dies this soon after its start, this many times in a row, cannot start (a
# port it may not bind, a setting its startup refuses): restarting it forever helps no one.
STARTUP_SECONDS = 10.0
STARTUP_FAILURES = 3
EXIT_CANNOT_START = 3


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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # uvicorn's own line is below the log level an operator runs
            config = self.config
            log.info(
                "gateway listening",
                extra={"url": f"http://{config.host}:{config.port}/graphql", "pid": os.getpid()},
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from gateway.app import close_websockets

        await close_websockets(1001)
        await super().shutdown(sockets)


def _run_one(host: str, port: int) -> None:
    # Its own process group: a Ctrl-C at the terminal (SIGINT to the whole group) reaches the
    # parent alone, which passes it on once. Twice, uvicorn would skip the orderly shutdown.
    os.setpgrp()
    server = GracefulServer(_config(host, port))
    # uvicorn re-raises the Ctrl-C once it has shut down in order: nothing is left to report.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[_bind(host, port)])


def serve(host: str, port: int, workers: int) -> int:
    if workers <= 1:
        GracefulServer(_config(host, port)).run()
        return 0
    # The processes share the cores: each hashes at most its share of passwords at once.
    cores = os.cpu_count() or 1
    os.environ.setdefault("KANMON_ARGON2_THREADS", str(max(1, cores // workers)))
    # Metrics of all processes in one scrape (prometheus-client's multiprocess mode).
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="kanmon-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(host, port, workers)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(host: str, port: int, workers: int) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False
    started_at: dict[int, float] = {}
    quick_failures = 0

    def start(index: int) -> BaseProcess:
        process = context.Process(target=_run_one, args=(host, port), name="kanmon-gateway")
        process.start()
        started_at[index] = time.monotonic()
        return process

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    processes = [start(index) for index in range(workers)]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        for index, process in enumerate(processes):
            process.join(timeout=0.5)
            if stopping or process.is_alive():
                continue
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            lived = time.monotonic() - started_at[index]
            quick_failures = quick_failures + 1 if lived < STARTUP_SECONDS else 0
            if quick_failures >= STARTUP_FAILURES:
                print(
                    f"kanmon: a gateway process failed at startup {quick_failures} times in a "
                    "row (its error is above); stopping",
                    file=sys.stderr,
                )
                forward(signal.SIGTERM, None)
                break
            time.sleep(RESTART_PAUSE_SECONDS)
            processes[index] = start(index)
    for process in processes:
        process.join()
    return EXIT_CANNOT_START if quick_failures >= STARTUP_FAILURES else 0
