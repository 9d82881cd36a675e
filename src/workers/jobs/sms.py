"""SMS jobs: send one message (S3, S4), purge expired codes (F4), settle early receipts (S3)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from arq import Retry

from gateway.factors.sms.delivery import SmsDelivery, purge_expired_codes, settle_early_receipts

log = logging.getLogger(__name__)


async def sms_send(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    delivery: SmsDelivery = ctx["sms_delivery"]
    try:
        result = await delivery.deliver(UUID(payload["message_id"]), ctx["job_try"])
    except Retry:
        raise
    except Exception as exc:
        # A database hiccup must not fail the message for good: arq retries only on Retry.
        log.warning("sms.send failed; retrying", extra={"error": type(exc).__name__})
        raise Retry(defer=min(2 ** ctx["job_try"], 30)) from exc
    if result.retry_in is not None:
        raise Retry(defer=result.retry_in)
    return result.status.value


async def sms_purge_expired_codes(ctx: dict[str, Any]) -> int:
    await settle_early_receipts()
    return await purge_expired_codes()
