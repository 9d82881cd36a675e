"""The highest ratio to the argon2 bound an HTTP server can reach on this machine.

The login bench (`bench/login_totp.py`, phase (b)) reports full logins against the bound
cores / CPU seconds of one lone argon2id verify. This bench measures what that ratio can be at
most here: it starts its own server (not Kanmon), two uvicorn processes of a bare ASGI app whose
only work per request is one verify with the gateway's own `Passwords` (one hashing thread per
process, as `kanmon serve --workers 2` runs them), and drives it like phase (b): a closed loop
of keep-alive connections, the bound probed before and after the same way.

    .venv/bin/python bench/argon2_ceiling.py [--seconds 20] [--concurrency 12] [--runs 3]

What it leaves out of 1.0 is the machine's: two verifies side by side on the two cores slow
each other (their 19 MiB each share the caches and the memory bus), and HTTP, the event loops
and the load generator take the rest. What phase (b) leaves out beyond it is Kanmon's own
login: two GraphQL requests, PostgreSQL's transactions and Redis.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.core.passwords import Passwords
from keepalive import HttpError, KeepAliveConnection, RequestFailed
from login_totp import PASSWORD, argon2_verify_cpu_seconds

HOST = "127.0.0.1"
WORKERS = 2
START_SECONDS = 30.0
HERE = Path(__file__).resolve().parent

# --- the server: imported by each uvicorn worker process ----------------------------------------

_passwords: Passwords | None = None
_hash: str | None = None

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """POST /verify: one argon2id verify of PASSWORD; POST /pid: which process answered."""
    global _passwords, _hash
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body"))
    if _passwords is None or _hash is None:
        _passwords = Passwords(threads=max(1, (os.cpu_count() or 1) // WORKERS))
        _hash = await _passwords.hash(PASSWORD)
    if scope["path"] == "/verify":
        answer: dict[str, Any] = {"ok": await _passwords.verify(_hash, PASSWORD)}
    else:
        answer = {"pid": os.getpid()}
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the load generator -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


async def balanced_connections(port: int, count: int) -> list[KeepAliveConnection]:
    """`count` connections, as many to each server process: the kernel hands a new connection
    to whichever process accepts first, and a process with none would leave its core idle."""
    per_process = count // WORKERS
    kept: dict[int, list[KeepAliveConnection]] = {}
    deadline = time.monotonic() + START_SECONDS
    while sum(len(held) for held in kept.values()) < per_process * WORKERS:
        if time.monotonic() > deadline:
            raise SystemExit(f"could not reach {WORKERS} server processes")
        connection = KeepAliveConnection(HOST, port)
        try:
            pid = int((await connection.post_json("/pid", {}, None))["pid"])
        except (HttpError, RequestFailed):
            await connection.close()
            await asyncio.sleep(0.1)
            continue
        held = kept.setdefault(pid, [])
        if len(held) < per_process:
            held.append(connection)
        else:
            await connection.close()
    return [connection for held in kept.values() for connection in held]


async def closed_loop(connections: list[KeepAliveConnection], seconds: float) -> tuple[int, float]:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(connection: KeepAliveConnection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            answer = await connection.post_json("/verify", {}, None)
            if answer.get("ok") is not True:
                raise SystemExit("the server's verify failed")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    return done, time.perf_counter() - started


async def one_run(port: int, args: argparse.Namespace, probe_hash: str) -> dict[str, Any]:
    passwords = Passwords(threads=1)
    connections = await balanced_connections(port, args.concurrency)
    try:
        await closed_loop(connections, args.warmup)
        before = argon2_verify_cpu_seconds(passwords, probe_hash)
        done, elapsed = await closed_loop(connections, args.seconds)
        after = argon2_verify_cpu_seconds(passwords, probe_hash)
    finally:
        for connection in connections:
            await connection.close()
    cores = os.cpu_count() or 1
    verify = (before + after) / 2
    rate = done / elapsed
    return {
        "verifies_per_s": round(rate, 1),
        "argon2_verify_cpu_ms_probes": [round(before * 1000, 2), round(after * 1000, 2)],
        "argon2_bound_per_s": round(cores / verify, 1),
        "ratio_to_bound": round(rate * verify / cores, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "uvicorn", "argon2_ceiling:app", "--host", HOST, "--port", str(port)),
        *("--workers", str(WORKERS), "--no-access-log", "--log-level", "warning"),
        cwd=HERE,
        start_new_session=True,
    )
    try:
        probe_hash = await Passwords(threads=1).hash(PASSWORD)
        runs = [await one_run(port, args, probe_hash) for _ in range(args.runs)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        async with asyncio.timeout(START_SECONDS):
            await server.wait()
    return {
        "bench": "argon2_ceiling",
        "params": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "server_processes": WORKERS,
        },
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per run")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if not WORKERS <= args.concurrency <= 256 or not 0 < args.seconds <= 600:
        parser.error(f"--concurrency {WORKERS}..256, --seconds 0..600")
    if not 0 <= args.warmup <= 60 or not 1 <= args.runs <= 20:
        parser.error("--warmup 0..60, --runs 1..20")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), separators=(",", ":")))
