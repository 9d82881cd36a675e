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
from typing import Any, Protocol
from uuid import UUID

from tortoise.expressions import F
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
    SmsEarlyReceipt,
    SmsMessage,
    SmsStatus,
)

MAX_BACKOFF_SECONDS = 60.0
UNSUBSCRIBED = "21610"
# The error of a message not sent because its number texted STOP (S5).
PAUSED = "sms_paused"
# QUEUED > SENDING > SENT > DELIVERED, or FAILED / UNDELIVERED (S3): the worker moves a message
# while it is one of these; after SENT only receipts move it, and only to a final status.
UNSENT = (SmsStatus.QUEUED, SmsStatus.SENDING)
# The error of a try whose request got no answer in time: unlike a refusal, it may have reached
# the provider, and counts as a possible duplicate once a later try is sent (S4).
TIMED_OUT = "timeout"
# The error of a try whose connection broke once the request could have gone out (closed or reset
# before an answer): like a timeout, the provider may have taken it (S4).
CONNECTION_LOST = "connection_lost"
# The error of a try that never reached the provider (no connection could be opened): it sent
# nothing, so it is no duplicate.
CONNECT_FAILED = "connect_failed"
# The errors of tries that may have sent the message without the worker hearing so.
POSSIBLY_SENT = frozenset({TIMED_OUT, CONNECTION_LOST})
# A receipt whose message never got its sid (a cut-off try, resent under another) is dropped.
EARLY_RECEIPT_KEEP = timedelta(days=1)


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
        """S3: one try of one message. Idempotent: a sent or final message is left alone. Each
        status move is conditional on the status it moves from, so a delivery receipt that got
        there first is never overwritten."""
        message = await SmsMessage.get_or_none(id=message_id)
        if message is None:
            return DeliveryResult(SmsStatus.FAILED)
        if message.status not in UNSENT:
            return DeliveryResult(message.status)
        earlier = await self._close_interrupted(message)
        if any(a.outcome == ProviderOutcome.SENT.value for a in earlier):
            # The provider took it but the status never settled: it went; don't send again.
            return await self._move(message, SmsStatus.SENT, sent_at=self._clock())
        if await number_paused(message.to_number):
            # S5: STOP came after this was queued (keyword replies are TwiML, not messages).
            return await self._fail(message, PAUSED)
        body = await self._body(message)
        if body is None:
            return await self._fail(message, "expired")
        provider = self._provider_for(job_try)
        if provider is None:
            return await self._fail(message, message.error_code or "retries_exhausted")
        message.provider = provider.name
        # Dying between these two writes leaves no attempt: the re-run sends, nothing went yet.
        claimed = await self._move(
            message, SmsStatus.SENDING, attempts=F("attempts") + 1, provider=provider.name
        )
        if claimed.status is not SmsStatus.SENDING:
            return claimed
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
            settled = await self._settle(message, result, job_try, _possibly_sent(earlier))
        if result.outcome is ProviderOutcome.SENT and result.sid:
            # Only now can a receipt that came before the sid was recorded find its message.
            await apply_early_receipts(result.sid, self._clock)
        return settled

    async def _close_interrupted(self, message: SmsMessage) -> list[SmsAttempt]:
        """S4: a try without an outcome was cut off by a dead worker, and the provider may have
        sent it: it is closed and counted as a possible duplicate in one step. Returns the
        earlier tries (their outcome, HTTP status and error)."""
        earlier = await SmsAttempt.filter(message_id=message.id).only(
            "id", "outcome", "http_status", "error_code"
        )
        interrupted = sum(1 for a in earlier if a.outcome is None)
        if interrupted:
            async with in_transaction("default"):
                await SmsAttempt.filter(message_id=message.id, outcome__isnull=True).update(
                    outcome="interrupted", finished_at=self._clock()
                )
                await SmsMessage.filter(id=message.id).update(
                    duplicates=F("duplicates") + interrupted
                )
        return earlier

    async def _settle(
        self, message: SmsMessage, result: ProviderResult, job_try: int, possibly_sent: int
    ) -> DeliveryResult:
        if result.outcome is ProviderOutcome.SENT:
            # The sid is recorded whatever the status became meanwhile: receipts look for it.
            await SmsMessage.filter(id=message.id).update(
                provider_sid=result.sid,
                sent_at=self._clock(),
                duplicates=F("duplicates") + possibly_sent,
            )
            return await self._move(message, SmsStatus.SENT, error_code=None)
        if result.outcome is ProviderOutcome.PERMANENT:
            if result.error_code == UNSUBSCRIBED:
                await Phone.filter(number=message.to_number).update(sms_paused=True)
            return await self._fail(message, result.error_code or "permanent")
        error = result.error_code or (
            f"http_{result.http_status}" if result.http_status else TIMED_OUT
        )
        if self._provider_for(job_try + 1) is None:
            return await self._fail(message, error)
        queued = await self._move(message, SmsStatus.QUEUED, error_code=error)
        if queued.status is not SmsStatus.QUEUED:
            return queued
        # The first try of the fallback goes at once: the primary's back-off is its own.
        switching = self._provider_for(job_try + 1) is not self._provider_for(job_try)
        delay = 0.0 if switching else backoff_seconds(job_try, self._base, result.retry_after)
        return DeliveryResult(SmsStatus.QUEUED, retry_in=delay)

    async def _fail(self, message: SmsMessage, error: str) -> DeliveryResult:
        return await self._move(message, SmsStatus.FAILED, error_code=error)

    async def _move(self, message: SmsMessage, status: SmsStatus, **changes: Any) -> DeliveryResult:
        """S3: the worker moves a message only while it is QUEUED or SENDING; once SENT or
        final it belongs to the receipts. Returns the status the message has afterwards."""
        moved = await SmsMessage.filter(id=message.id, status__in=list(UNSENT)).update(
            status=status, **changes
        )
        if not moved:
            current = await SmsMessage.get(id=message.id).only("id", "status")
            return DeliveryResult(current.status)
        if status in (SmsStatus.SENT, SmsStatus.FAILED):
            SMS_MESSAGES.labels(status.value, message.provider or "none").inc()
        return DeliveryResult(status)

    async def _body(self, message: SmsMessage) -> str | None:
        """The text to send, or None once the message or its code expired (S3)."""
        if message.expires_at is not None and message.expires_at <= self._clock():
            return None
        if message.code_id is None:
            return message.body
        code = await SmsCode.get_or_none(id=message.code_id)
        if code is None or code.code_sealed is None or code.expires_at <= self._clock():
            return None
        plain = self._box.decrypt(code.code_sealed, context=f"sms:{code.id}")
        if code.purpose is SmsCodePurpose.VERIFY_PHONE:
            return codes.verification_body(plain)
        return codes.login_body(plain)


def _possibly_sent(earlier: list[SmsAttempt]) -> int:
    """S4: the earlier tries that got no answer after their request could have gone out (timed
    out, or the connection closed or reset under them). Each may have reached the provider, so
    once a later try is sent each is a possible duplicate; a try the provider answered (even with
    an error), or that could not connect, sent nothing."""
    return sum(
        1
        for a in earlier
        if a.outcome == ProviderOutcome.TRANSIENT.value
        and a.http_status is None
        and a.error_code in POSSIBLY_SENT
    )


async def number_paused(number: str) -> bool:
    """S5: a registered phone with this number texted STOP (or the provider said it did)."""
    return await Phone.filter(number=number, verified_at__isnull=False, sms_paused=True).exists()


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


async def apply_receipt(sid: str, status_text: str, error_code: str | None, clock: Clock) -> bool:
    """S3: a delivery receipt settles a message (DELIVERED, FAILED, UNDELIVERED) and never
    moves it back; earlier states, unknown ids and replays change nothing. A receipt that comes
    before the worker recorded the message's sid waits for it. Returns whether a message
    changed."""
    status = RECEIPT_STATUSES.get(status_text.strip().lower())
    if status is None or status not in FINAL_STATUSES or not sid or len(sid) > 64:
        return False
    code = error_code[:32] if error_code else None
    message = await SmsMessage.get_or_none(provider_sid=sid)
    if message is not None:
        return await _settle_by_receipt(message, status, code, clock())
    await SmsEarlyReceipt.create(
        provider_sid=sid, status=status, error_code=code, received_at=clock()
    )
    # The worker looks for early receipts after it records the sid, and this looks for the sid
    # after keeping the receipt: whichever comes second applies it.
    return await apply_early_receipts(sid, clock)


async def apply_early_receipts(sid: str, clock: Clock) -> bool:
    """S3: once the message of `sid` is known, settles it with the first receipt kept for it,
    and forgets them. Applying twice changes nothing the second time."""
    message = await SmsMessage.get_or_none(provider_sid=sid)
    if message is None:
        return False
    first = await SmsEarlyReceipt.filter(provider_sid=sid).order_by("id").first()
    if first is None:
        return False
    changed = await _settle_by_receipt(message, first.status, first.error_code, first.received_at)
    await SmsEarlyReceipt.filter(provider_sid=sid).delete()
    return changed


async def settle_early_receipts(clock: Clock = utc_now, limit: int = 500) -> int:
    """S3: applies kept receipts whose message is known by now (a worker died between
    recording the sid and looking for them) and drops those older than EARLY_RECEIPT_KEEP.
    Returns how many messages changed."""
    sids = (
        await SmsEarlyReceipt.all()
        .order_by("id")
        .limit(limit)
        .values_list("provider_sid", flat=True)
    )
    known = await SmsMessage.filter(provider_sid__in={str(s) for s in sids}).values_list(
        "provider_sid", flat=True
    )
    changed = [await apply_early_receipts(str(sid), clock) for sid in known]
    await SmsEarlyReceipt.filter(received_at__lt=clock() - EARLY_RECEIPT_KEEP).delete()
    return sum(changed)


async def _settle_by_receipt(
    message: SmsMessage, status: SmsStatus, error_code: str | None, at: datetime
) -> bool:
    update: dict[str, object] = {"status": status}
    if status is SmsStatus.DELIVERED:
        update["delivered_at"] = at
    elif error_code:
        update["error_code"] = error_code
    changed = await SmsMessage.filter(id=message.id, status__not_in=list(FINAL_STATUSES)).update(
        **update
    )
    if changed:
        SMS_MESSAGES.labels(status.value, message.provider or "none").inc()
    if status is not SmsStatus.DELIVERED and error_code == UNSUBSCRIBED:
        await Phone.filter(number=message.to_number).update(sms_paused=True)
    return changed == 1
