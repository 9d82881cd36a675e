"""F5: the per-account, per-method back-off on wrong codes, kept in the database (it survives a
Redis restart) inside the caller's transaction (the user's row is locked, so the
read-modify-write cannot race)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from uuid import UUID

from tortoise import fields
from tortoise.models import Model

from gateway.core import sql
from gateway.core.errors import RateLimited
from gateway.core.throttle import backoff_seconds


class FactorThrottle(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField()
    method = fields.CharField(max_length=16)
    consecutive_failures = fields.IntField(default=0)
    blocked_until = fields.DatetimeField(null=True)

    class Meta:
        table = "factor_throttles"
        unique_together = (("user_id", "method"),)
        # The retention purge finds lapsed back-offs and zeroed counters by these
        # (gateway.core.retention).
        indexes = (("blocked_until", "consecutive_failures"),)


_COUNTER = sql.select_model(
    FactorThrottle, "t", 'FROM "factor_throttles" t WHERE t."user_id" = {0} AND t."method" = {1}'
)


async def check(user_id: UUID, method: str, now: datetime) -> FactorThrottle | None:
    """Raises RATE_LIMITED (not evaluated, not counted) while the back-off runs; returns the
    counter row (if any) for `failed` and `succeeded`, saving them a read."""
    row = await sql.fetch_model(FactorThrottle, _COUNTER(), [user_id, method])
    if row is not None and row.blocked_until is not None and row.blocked_until > now:
        raise RateLimited(math.ceil((row.blocked_until - now).total_seconds()))
    return row


async def failed(
    user_id: UUID, method: str, now: datetime, row: FactorThrottle | None = None
) -> None:
    if row is None:
        row, _ = await FactorThrottle.get_or_create(user_id=user_id, method=method)
    row.consecutive_failures += 1
    wait = backoff_seconds(row.consecutive_failures)
    row.blocked_until = now + timedelta(seconds=wait) if wait else None
    await row.save(update_fields=["consecutive_failures", "blocked_until"])


async def succeeded(row: FactorThrottle | None) -> None:
    """A success resets only its own method's counter (and writes nothing when it is 0)."""
    if row is not None and (row.consecutive_failures or row.blocked_until is not None):
        await FactorThrottle.filter(id=row.id).update(consecutive_failures=0, blocked_until=None)
