"""arq WorkerSettings per queue, sharing one startup that builds the services (one
composition root for the gateway and the workers)."""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.worker import Function, func

from gateway.container import build_services, connect_redis, redis_settings
from gateway.core.db import close_database, database_is_open, open_database
from gateway.core.jobs import (
    JOB_BACKUP_CODES_INVALIDATE,
    JOB_NOTICE_SEND,
    JOB_OUTBOX_SWEEP,
    QUEUE_MAINTENANCE,
    QUEUES,
    deserialize,
    queue_key,
    serialize,
)
from gateway.core.notices import Notifier
from gateway.settings import ConfigurationError, Settings
from workers.jobs import maintenance


def functions_for(queue: str) -> list[Function]:
    if queue == QUEUE_MAINTENANCE:
        return [
            func(maintenance.backup_codes_invalidate, name=JOB_BACKUP_CODES_INVALIDATE, timeout=30),
            func(maintenance.notices_send, name=JOB_NOTICE_SEND, timeout=30),
        ]
    return []


def worker_options(settings: Settings, queue: str) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker`, shared by `kanmon worker`, `kanmon dev` and
    the tests, so all three run the same configuration."""
    if queue not in QUEUES:
        raise ConfigurationError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUES)}")
    if not settings.redis_url:
        raise ConfigurationError("KANMON_REDIS_URL is required")

    async def startup(ctx: dict[str, Any]) -> None:
        # A worker embedded in a process that already has the database (kanmon dev, tests)
        # shares it rather than replacing the process's connections.
        ctx["owns_database"] = not database_is_open()
        if ctx["owns_database"]:
            await open_database(settings.resolved_database_url())
        assert settings.redis_url is not None
        redis = await connect_redis(settings.redis_url)
        ctx["services"] = build_services(settings, redis)
        ctx["notifier"] = Notifier([])

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "services" in ctx:
            await ctx["services"].close()
        if ctx.get("owns_database"):
            await close_database()

    if not functions_for(queue):
        raise ConfigurationError(f"queue {queue!r} has no jobs in this version")
    cron_jobs = []
    if queue == QUEUE_MAINTENANCE:
        cron_jobs.append(
            cron(
                maintenance.outbox_sweep,
                name=JOB_OUTBOX_SWEEP,
                second=set(range(0, 60, 10)),
                run_at_startup=True,
                timeout=30,
            )
        )
    return {
        "functions": functions_for(queue),
        "cron_jobs": cron_jobs,
        "queue_name": queue_key(queue),
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "poll_delay": settings.worker_poll_delay_seconds,
        "max_tries": 5,
        "health_check_interval": 30,
        "health_check_key": f"{queue_key(queue)}:health-check",
    }
