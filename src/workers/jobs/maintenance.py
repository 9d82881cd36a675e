"""Maintenance jobs: backup-code invalidation follow-up, notices, the outbox sweeper and
redrive, the retention purge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from gateway.container import Services
from gateway.core import audit
from gateway.core.notices import Notice
from workers.redrive import redrive_lost_jobs


async def backup_codes_invalidate(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """B4: the codes are already invalid (same transaction as the check); this records the
    event once, even when the job runs twice, and tells the user on their other channels."""
    services: Services = ctx["services"]
    user_id = UUID(payload["user_id"])
    async with services.uow() as work:
        _, created = await audit.record_once(
            user_id,
            "backup_codes.invalidated",
            detail=f"{payload.get('reason', 'unknown')}: {int(payload.get('count', 0))} codes",
            dedupe_key=f"job:{ctx['job_id']}",
        )
        if created:
            await services.notifier.notify(user_id, Notice.BACKUP_CODES_INVALIDATED, work)


async def notices_send(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """At least once: a notice repeated after a crash is better than one lost."""
    services: Services = ctx["services"]
    async with services.uow() as work:
        await services.notifier.notify(
            UUID(payload["user_id"]), Notice(payload["notice"]), work, number=payload.get("number")
        )


async def outbox_sweep(ctx: dict[str, Any]) -> int:
    """S4: re-enqueues outbox rows whose hand-off to Redis was lost."""
    services: Services = ctx["services"]
    after = timedelta(seconds=services.settings.outbox_sweep_after_seconds)
    return await services.relay.sweep(after)


async def outbox_redrive(ctx: dict[str, Any]) -> int:
    """S4: enqueues again dispatched work that Redis lost (workers.redrive)."""
    services: Services = ctx["services"]
    return await redrive_lost_jobs(services)


async def housekeeping_purge(ctx: dict[str, Any]) -> int:
    """Deletes rows past their retention, in bounded batches (gateway.login.retention)."""
    services: Services = ctx["services"]
    report = await services.retention.purge()
    return report.total
