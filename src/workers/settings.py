"""arq WorkerSettings per queue, sharing one startup that builds the services (one
composition root for the gateway and the workers)."""

from __future__ import annotations

from typing import Any

import httpx
from arq import cron
from arq.worker import Function, func

from gateway.container import build_services, redis_client, redis_settings
from gateway.core.db import close_database, database_is_open, open_database
from gateway.core.jobs import (
    JOB_BACKUP_CODES_INVALIDATE,
    JOB_EXPIRE_DUE,
    JOB_HOUSEKEEPING_PURGE,
    JOB_NOTICE_SEND,
    JOB_OUTBOX_SWEEP,
    JOB_PUSH_FAN_OUT,
    JOB_SMS_PURGE,
    JOB_SMS_SEND,
    QUEUE_MAINTENANCE,
    QUEUE_PUSH,
    QUEUE_SMS,
    QUEUES,
    deserialize,
    queue_key,
    serialize,
)
from gateway.factors.push.fanout import PushFanOut
from gateway.settings import ConfigurationError, Settings
from workers.jobs import maintenance, push, sms
from workers.providers import build_push_sender, build_sms_delivery

SMS_JOB_TIMEOUT = 10
PUSH_JOB_TIMEOUT = 10
# Fan-out jobs mostly wait on FCM (tens of ms away in production); arq's default of 10 at once
# would cap a worker at 10 / FCM's latency. 50 in flight keep one core busy either way, and the
# poll that refills free slots runs once for many jobs instead of once for one or two.
PUSH_CONCURRENCY = 50
MAINTENANCE_JOB_TIMEOUT = 30
JOB_OUTBOX_REDRIVE = "outbox.redrive"


def functions_for(queue: str) -> list[Function]:
    if queue == QUEUE_MAINTENANCE:
        return [
            func(
                maintenance.backup_codes_invalidate,
                name=JOB_BACKUP_CODES_INVALIDATE,
                timeout=MAINTENANCE_JOB_TIMEOUT,
            ),
            func(maintenance.notices_send, name=JOB_NOTICE_SEND, timeout=MAINTENANCE_JOB_TIMEOUT),
        ]
    if queue == QUEUE_SMS:
        # Short timeouts: a killed worker's job comes back after timeout + 10 s (S4).
        return [func(sms.sms_send, name=JOB_SMS_SEND, timeout=SMS_JOB_TIMEOUT)]
    if queue == QUEUE_PUSH:
        return [func(push.push_fan_out, name=JOB_PUSH_FAN_OUT, timeout=PUSH_JOB_TIMEOUT)]
    return []


def max_tries(settings: Settings) -> int:
    fallback = settings.sms_fallback_tries if settings.twilio_fallback_base_url else 0
    return max(5, settings.sms_primary_tries + fallback + 1)


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
        services = build_services(settings, redis_client(settings.redis_url))
        ctx["services"] = services
        if queue == QUEUE_SMS:
            ctx["http"] = httpx.AsyncClient()
            ctx["sms_delivery"] = build_sms_delivery(settings, ctx["http"], services.box)
        if queue == QUEUE_PUSH:
            ctx["push_sender"] = await build_push_sender(settings)
            ctx["push_fan_out"] = PushFanOut(ctx["push_sender"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        try:
            if "http" in ctx:
                await ctx["http"].aclose()
            close = getattr(ctx.get("push_sender"), "close", None)
            if close is not None:
                await close()
            if "services" in ctx:
                await ctx["services"].close()
        finally:
            # Last and whatever failed above: SQLite's connection thread would keep the
            # process alive.
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
        cron_jobs.append(
            cron(
                maintenance.outbox_redrive,
                name=JOB_OUTBOX_REDRIVE,
                second={45},
                timeout=MAINTENANCE_JOB_TIMEOUT,
            )
        )
        cron_jobs.append(
            cron(sms.sms_purge_expired_codes, name=JOB_SMS_PURGE, second={30}, timeout=60)
        )
        # Every 10 minutes: a run's work stays bounded (gateway.core.retention's limits).
        cron_jobs.append(
            cron(
                maintenance.housekeeping_purge,
                name=JOB_HOUSEKEEPING_PURGE,
                minute=set(range(0, 60, 10)),
                second={20},
                timeout=MAINTENANCE_JOB_TIMEOUT,
            )
        )
        cron_jobs.append(
            cron(
                push.login_expire_due,
                name=JOB_EXPIRE_DUE,
                second=set(range(60)),
                timeout=10,
                unique=True,
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
        "poll_delay": settings.worker_poll_delay_seconds
        if queue == QUEUE_MAINTENANCE
        else settings.fast_poll_delay_seconds,
        "max_tries": max_tries(settings),
        **({"max_jobs": PUSH_CONCURRENCY} if queue == QUEUE_PUSH else {}),
        # An SMS job checks the message's status before sending, so a kept result (one more
        # Redis write per job) buys nothing there; push keeps it: its job id dedupes a request
        # relayed twice, whose first try does not read what was already sent.
        "keep_result": 0 if queue == QUEUE_SMS else 3600,
        # O2: on SIGTERM stop taking jobs and let running ones finish (the rest are re-queued).
        "job_completion_wait": MAINTENANCE_JOB_TIMEOUT
        if queue == QUEUE_MAINTENANCE
        else SMS_JOB_TIMEOUT,
        "health_check_interval": 30,
        "health_check_key": f"{queue_key(queue)}:health-check",
    }
