"""Sending one message (S3, S4): the `sms.send` job's domain side.

Every provider call is recorded before it starts and completed after, transient failures come
back as a delay for arq to retry after, the secondary provider takes over once the primary's
tries are spent, and a code is never sent after it expires.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from tortoise.transactions import in_transaction

from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.metrics import SMS_MESSAGES
from gateway.factors.sms import codes
from gateway.factors.sms.models import (
    FINAL_STATUSES,
    Phone,
    SmsAttempt,
    SmsCode,
    SmsCodePurpose,
    SmsMessage,
    SmsStatus,
)

MAX_BACKOFF_SECONDS = 60.0
UNSUBSCRIBED = "21610"


class ProviderOutcome(StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class ProviderResult:
    outcome: ProviderOutcome
    sid: str | None = None
    http_status: int | None = None
    error_code: str | None = None
    retry_after: float | None = None


class SmsProvider(Protocol):
    """The port the adapters in `workers.adapters` implement."""

    name: str

    async def send(self, to: str, body: str) -> ProviderResult: ...


@dataclass(frozen=True)
class DeliveryResult:
    status: SmsStatus
    retry_in: float | None = None


def backoff_seconds(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential with full jitter around the step, never sooner than the provider asked."""
    step = min(base * 2 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS)
    delay: float = step * random.uniform(0.5, 1.5)
    return max(delay, retry_after or 0.0)


class SmsDelivery:
    def __init__(
        self,
        box: SecretBox,
        primary: SmsProvider,
        fallback: SmsProvider | None,
        *,
        primary_tries: int,
        fallback_tries: int,
        retry_base_seconds: float,
        clock: Clock = utc_now,
    ) -> None:
        self._box = box
        self._primary = primary
        self._fallback = fallback
        self._primary_tries = primary_tries
        self._fallback_tries = fallback_tries if fallback else 0
        self._base = retry_base_seconds
        self._clock = clock

    @property
    def max_tries(self) -> int:
        return self._primary_tries + self._fallback_tries

    def _provider_for(self, job_try: int) -> SmsProvider | None:
        if job_try <= self._primary_tries:
            return self._primary
        if self._fallback is not None and job_try <= self.max_tries:
            return self._fallback
        return None

    async def deliver(self, message_id: UUID, job_try: int) -> DeliveryResult:
        """S3: one try of one message. Idempotent: a sent or final message is left alone."""
        message = await SmsMessage.get_or_none(id=message_id)
        if message is None:
            return DeliveryResult(SmsStatus.FAILED)
        if message.status is SmsStatus.SENT or message.status in FINAL_STATUSES:
            return DeliveryResult(message.status)
        now = self._clock()
        earlier = [
            a.outcome for a in await SmsAttempt.filter(message_id=message.id).only("id", "outcome")
        ]
        interrupted = sum(1 for outcome in earlier if outcome is None)
        if interrupted:
            # S4: the provider may have sent it before the worker died; count, don't hide.
            await SmsAttempt.filter(message_id=message.id, outcome__isnull=True).update(
                outcome="interrupted", finished_at=now
            )
            message.duplicates += interrupted
        if "sent" in earlier:
            # The provider took it but the status never settled: it went; don't send again.
            message.status = SmsStatus.SENT
            message.sent_at = now
            await message.save(update_fields=["status", "sent_at", "duplicates"])
            return DeliveryResult(SmsStatus.SENT)
        if message.expires_at is not None and message.expires_at <= now:
            return await self._fail(message, "expired")
        body = await self._body(message)
        if body is None:
            return await self._fail(message, "expired")
        provider = self._provider_for(job_try)
        if provider is None:
            return await self._fail(message, message.error_code or "retries_exhausted")
        message.status = SmsStatus.SENDING
        message.attempts += 1
        message.provider = provider.name
        # Dying between these two writes leaves no attempt: the re-run sends, nothing went yet.
        await message.save(update_fields=["status", "attempts", "provider", "duplicates"])
        attempt = await SmsAttempt.create(message_id=message.id, provider=provider.name)
        result = await provider.send(message.to_number, body)
        # The attempt's outcome and the message's new status commit together: a worker dying
        # in between must not leave a "sent" attempt on an unsettled message (S4).
        async with in_transaction("default"):
            await SmsAttempt.filter(id=attempt.id).update(
                outcome=result.outcome.value,
                http_status=result.http_status,
                error_code=result.error_code,
                finished_at=self._clock(),
            )
            return await self._settle(message, result, job_try)

    async def _settle(
        self, message: SmsMessage, result: ProviderResult, job_try: int
    ) -> DeliveryResult:
        if result.outcome is ProviderOutcome.SENT:
            message.status = SmsStatus.SENT
            message.provider_sid = result.sid
            message.sent_at = self._clock()
            message.error_code = None
            await message.save(update_fields=["status", "provider_sid", "sent_at", "error_code"])
            SMS_MESSAGES.labels(SmsStatus.SENT.value, message.provider or "none").inc()
            return DeliveryResult(SmsStatus.SENT)
        if result.outcome is ProviderOutcome.PERMANENT:
            if result.error_code == UNSUBSCRIBED:
                await Phone.filter(number=message.to_number).update(sms_paused=True)
            return await self._fail(message, result.error_code or "permanent")
        message.error_code = result.error_code or (
            f"http_{result.http_status}" if result.http_status else "timeout"
        )
        if self._provider_for(job_try + 1) is None:
            return await self._fail(message, message.error_code)
        message.status = SmsStatus.QUEUED
        await message.save(update_fields=["status", "error_code"])
        # The first try of the fallback goes at once: the primary's back-off is its own.
        switching = self._provider_for(job_try + 1) is not self._provider_for(job_try)
        delay = 0.0 if switching else backoff_seconds(job_try, self._base, result.retry_after)
        return DeliveryResult(SmsStatus.QUEUED, retry_in=delay)

    async def _fail(self, message: SmsMessage, error: str) -> DeliveryResult:
        message.status = SmsStatus.FAILED
        message.error_code = error
        await message.save(update_fields=["status", "error_code", "duplicates"])
        SMS_MESSAGES.labels(SmsStatus.FAILED.value, message.provider or "none").inc()
        return DeliveryResult(SmsStatus.FAILED)

    async def _body(self, message: SmsMessage) -> str | None:
        if message.code_id is None:
            return message.body
        code = await SmsCode.get_or_none(id=message.code_id)
        if code is None or code.code_sealed is None or code.expires_at <= self._clock():
            return None
        plain = self._box.decrypt(code.code_sealed, context=f"sms:{code.id}")
        if code.purpose is SmsCodePurpose.VERIFY_PHONE:
            return codes.verification_body(plain)
        return codes.login_body(plain)


async def stalled_messages(
    now: datetime, quiet_for: timedelta, horizon: timedelta, limit: int = 500
) -> list[UUID]:
    """S4: messages created within `horizon` that a worker has not finished, with no provider
    call started in the last `quiet_for` (QUEUED, or SENDING past that lease). Their job is
    deferred for a retry, waiting in a long queue, or was lost with Redis: the outbox's redrive
    tells these apart by asking Redis. The oldest `limit`, oldest first; the message id is its
    outbox row's id."""
    found = (
        await SmsMessage.filter(
            status__in=[SmsStatus.QUEUED, SmsStatus.SENDING],
            created_at__gte=now - horizon,
            created_at__lt=now - quiet_for,
        )
        .order_by("created_at")
        .limit(limit)
        .values_list("id", flat=True)
    )
    ids = [UUID(str(value)) for value in found]
    if not ids:
        return []
    busy = await SmsAttempt.filter(message_id__in=ids, started_at__gte=now - quiet_for).values_list(
        "message_id", flat=True
    )
    recent = {UUID(str(value)) for value in busy}
    return [message_id for message_id in ids if message_id not in recent]


async def purge_expired_codes(now_clock: Clock = utc_now) -> int:
    """F4, T3: the sealed copy of a code is kept only while the code can still be used."""
    return await SmsCode.filter(code_sealed__isnull=False, expires_at__lte=now_clock()).update(
        code_sealed=None
    )


RECEIPT_STATUSES = {
    "queued": SmsStatus.QUEUED,
    "sending": SmsStatus.SENDING,
    "sent": SmsStatus.SENT,
    "delivered": SmsStatus.DELIVERED,
    "undelivered": SmsStatus.UNDELIVERED,
    "failed": SmsStatus.FAILED,
}
ORDER = [SmsStatus.QUEUED, SmsStatus.SENDING, SmsStatus.SENT]


async def apply_receipt(sid: str, status_text: str, error_code: str | None, clock: Clock) -> bool:
    """S3: a delivery receipt moves a message forward, never back; unknown ids and replays
    change nothing. Returns whether anything changed."""
    status = RECEIPT_STATUSES.get(status_text.strip().lower())
    if status is None or not sid or len(sid) > 64:
        return False
    message = await SmsMessage.get_or_none(provider_sid=sid)
    if message is None or message.status in FINAL_STATUSES or status in ORDER:
        return False
    update: dict[str, object] = {"status": status}
    if status is SmsStatus.DELIVERED:
        update["delivered_at"] = clock()
    elif error_code:
        update["error_code"] = error_code[:32]
    changed = await SmsMessage.filter(id=message.id, status__not_in=list(FINAL_STATUSES)).update(
        **update
    )
    if changed:
        SMS_MESSAGES.labels(status.value, message.provider or "none").inc()
    if status is not SmsStatus.DELIVERED and error_code == UNSUBSCRIBED:
        await Phone.filter(number=message.to_number).update(sms_paused=True)
    return changed == 1
