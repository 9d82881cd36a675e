"""SMS jobs: send one message (S3, S4), purge expired codes (F4)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from arq import Retry

from gateway.factors.sms.delivery import SmsDelivery, purge_expired_codes


async def sms_send(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    delivery: SmsDelivery = ctx["sms_delivery"]
    result = await delivery.deliver(UUID(payload["message_id"]), ctx["job_try"])
    if result.retry_in is not None:
        raise Retry(defer=result.retry_in)
    return result.status.value


async def sms_purge_expired_codes(ctx: dict[str, Any]) -> int:
    return await purge_expired_codes()
