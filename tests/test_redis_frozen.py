"""W2, O2: no Kanmon process hangs on a Redis that accepts connections and answers nothing (one
stopped with SIGSTOP, or partitioned away after the handshake). arq's `create_pool` pings with no
bound: a gateway or a worker started against such a Redis hung in its startup for good, and a
worker's own arq pool had no command bound, so a freeze mid-run held its poll for good. Real
`kanmon` processes run here against a proxy that freezes and thaws (tests.freezable_redis)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from uuid import uuid4

import httpx
import pytest
from arq.constants import result_key_prefix
from arq.jobs import Job

from gateway.admin.commands import EXIT_UNAVAILABLE
from gateway.core.job_queue import JobQueue
from gateway.core.jobs import (
    JOB_PUSH_FAN_OUT,
    QUEUE_MAINTENANCE,
    QUEUE_PUSH,
    deserialize,
    queue_key,
)
from gateway.settings import Settings
from tests.freezable_redis import freezable_redis
from tests.gateway_processes import (
    KANMON,
    KanmonProcess,
    process_environment,
    running_worker,
    spawn_gateway,
)
from tests.own_valkey import client, own_valkey

HEALTH_KEY = f"{queue_key(QUEUE_PUSH)}:health-check"
LOST = "Redis unreachable"
BACK = "Redis reachable again"
# Far above any bound a process keeps (a command's 5 s, a readiness check's 2 s): only a
# process that waits without bound runs into it.
EXIT_SECONDS = 60.0


def answers(
    http: httpx.AsyncClient, path: str, status: int, seen: list[httpx.Response] | None = None
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            response = await http.get(path)
        except httpx.TransportError:
            return False
        if seen is not None:
            seen.append(response)
        return response.status_code == status

    return check


def said(process: KanmonProcess, text: str, times: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        lines = process.log_path.read_text(errors="replace").splitlines()
        return sum(text in line for line in lines) >= times

    return check


async def test_w2_a_gateway_started_on_a_frozen_redis_is_live_not_ready_then_ready(
    settings: Settings,
) -> None:
    """It starts (/healthz 200), reads as not ready while Redis answers nothing (/readyz 503,
    naming Redis), says why in its log, and becomes ready by itself once Redis answers."""
    assert settings.redis_url
    async with freezable_redis(settings.redis_url) as proxy:
        proxy.freeze()
        gateway = await spawn_gateway(settings, "gateway-frozen", {"KANMON_REDIS_URL": proxy.url})
        try:
            async with gateway.http() as http:
                await gateway.until(answers(http, "/healthz", 200), "liveness (/healthz 200)")
                unready: list[httpx.Response] = []
                await gateway.until(answers(http, "/readyz", 503, unready), "/readyz 503")
                assert unready[-1].json()["checks"] == {"database": True, "redis": False}
                proxy.thaw()
                await gateway.until(answers(http, "/readyz", 200), "readiness once Redis answers")
        finally:
            code = await gateway.stop()
    # uvicorn re-raises the signal after its orderly shutdown: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM), gateway.log_tail()
    warnings = [r for r in gateway.records() if r["level"] == "WARNING"]
    assert any("Redis does not answer at startup" in r["message"] for r in warnings), warnings


async def test_o2_a_worker_waits_out_a_frozen_redis_at_startup_and_while_running(
    settings: Settings,
) -> None:
    """Frozen at the worker's start, the worker says so and waits; thawed, it starts and polls.
    Frozen again under its poll, its commands time out and it goes through the Redis-loss path:
    it says so once, waits, and once Redis answers it runs a job handed to it meanwhile. The
    worker's own server (a valkey-server this test owns): its queue is this test's alone."""
    async with (
        own_valkey("kanmon-freeze-") as valkey,
        freezable_redis(valkey.url) as proxy,
        client(valkey.url) as redis,
    ):
        proxy.freeze()
        env = {"KANMON_REDIS_URL": proxy.url}
        async with running_worker(settings, QUEUE_PUSH, env) as worker:
            await worker.until(said(worker, LOST, 1), "its word on a frozen Redis at start")
            assert not await redis.exists(HEALTH_KEY)  # it never got as far as polling
            proxy.thaw()
            await worker.until(lambda: redis.exists(HEALTH_KEY), "its first health check")

            proxy.freeze()
            await worker.until(said(worker, LOST, 2), "its word on Redis freezing under it")
            await redis.delete(HEALTH_KEY)
            job_id = str(uuid4())
            payload = {"request_id": str(uuid4())}  # unknown: the fan-out ends at once
            assert await JobQueue(redis).enqueue(JOB_PUSH_FAN_OUT, payload, job_id, QUEUE_PUSH)
            proxy.thaw()
            await worker.until(lambda: redis.exists(result_key_prefix + job_id), "the job's result")
            result = await Job(job_id, redis, _deserializer=deserialize).result_info()
            assert result is not None
            assert result.success, result.result
            await worker.until(lambda: redis.exists(HEALTH_KEY), "a new health check")
            await worker.until(said(worker, BACK, 2), "its word on Redis answering again")
        # running_worker has stopped it with SIGTERM and checked it exited 0.

    logged = worker.records()
    lost = [r for r in logged if r["level"] == "WARNING" and LOST in r["message"]]
    # Once per outage, and a frozen Redis reads as a timeout, not as a refusal.
    assert [r["error"] for r in lost] == ["TimeoutError", "TimeoutError"], lost
    assert not [r for r in logged if r["level"] in ("ERROR", "CRITICAL")], worker.log_tail()


@pytest.mark.parametrize(
    ("command", "code", "says"),
    [
        (["worker", "--queue", QUEUE_MAINTENANCE, "--check"], 1, "cannot reach Redis"),
        (["admin", "queues"], EXIT_UNAVAILABLE, "could not be used"),
    ],
    ids=["worker-check", "admin-queues"],
)
async def test_o2_probes_and_admin_commands_give_up_on_a_frozen_redis(
    settings: Settings, command: list[str], code: int, says: str
) -> None:
    """A startup or liveness probe (`kanmon worker --check`) and an operator's command fail
    with their exit code and a reason, where they used to wait for a reply for good."""
    assert settings.redis_url
    async with freezable_redis(settings.redis_url) as proxy:
        proxy.freeze()
        process = await asyncio.create_subprocess_exec(
            *KANMON,
            *command,
            env=process_environment(settings, {"KANMON_REDIS_URL": proxy.url}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(EXIT_SECONDS):
                _, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"kanmon {' '.join(command)} hung on a frozen Redis") from None
    assert process.returncode == code, err.decode()
    assert says in err.decode()
