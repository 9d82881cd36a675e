"""F3: security events the user can page through, newest first."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model


class SecurityEvent(Model):
    id = fields.BigIntField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    kind = fields.CharField(max_length=64)
    detail = fields.CharField(max_length=255, null=True)
    ip_address = fields.CharField(max_length=64, null=True)
    # Set by jobs that may run twice, so a retried job records its event once.
    dedupe_key = fields.CharField(max_length=64, null=True, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "security_events"


async def record(
    user_id: Any, kind: str, *, detail: str | None = None, ip_address: str | None = None
) -> None:
    await SecurityEvent.create(user_id=user_id, kind=kind, detail=detail, ip_address=ip_address)


async def record_once(
    user_id: Any, kind: str, *, dedupe_key: str, detail: str | None = None
) -> tuple[SecurityEvent, bool]:
    """For jobs that may run twice: the event, and whether this run created it."""
    return await SecurityEvent.get_or_create(
        dedupe_key=dedupe_key, defaults={"user_id": user_id, "kind": kind, "detail": detail}
    )


async def page(
    user_id: Any, *, first: int, before_id: int | None
) -> tuple[list[SecurityEvent], bool]:
    query = SecurityEvent.filter(user_id=user_id)
    if before_id is not None:
        query = query.filter(id__lt=before_id)
    rows = await query.order_by("-id").limit(first + 1)
    return rows[:first], len(rows) > first
