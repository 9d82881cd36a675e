"""The SMS factor (S1, S2, S5, S6, L4, H3, H6, H9): phones, codes, and the messages that carry
them. Sending itself happens in the `sms.send` job (delivery.py); this module only decides what
to send and writes it, with its outbox row, in the caller's transaction."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID, uuid4

from gateway.accounts.clients import ClientKind
from gateway.core import audit
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.errors import BadUserInput, DomainError, RateLimited
from gateway.core.jobs import JOB_SMS_SEND, QUEUE_SMS, JobRequest
from gateway.core.uow import UnitOfWork
from gateway.factors.base import ACCEPTED, Attempt, TwoFactorMethod, Verdict
from gateway.factors.sms import codes, phones
from gateway.factors.sms.errors import NoPendingPhone, SmsNotAvailable, WrongSmsCode
from gateway.factors.sms.limits import SendGuard, SendPurpose
from gateway.factors.sms.models import Phone, SmsCode, SmsCodePurpose, SmsMessage
from gateway.factors.sms.phones import InvalidPhoneNumber, ParsedNumber
from gateway.factors.summary import MethodSummary

MAX_CARRIER = 64


@dataclass(frozen=True)
class PhoneView:
    masked_number: str
    verified: bool
    carrier: str | None
    sms_paused: bool


def phone_view(phone: Phone | None) -> PhoneView | None:
    """F2: the verified number if there is one, else the one waiting for its code."""
    if phone is None:
        return None
    if phone.number is not None:
        return PhoneView(
            phones.mask(phone.number),
            phone.verified_at is not None,
            phone.carrier,
            phone.sms_paused,
        )
    if phone.pending_number is not None:
        return PhoneView(phones.mask(phone.pending_number), False, phone.pending_carrier, False)
    return None


class SmsService:
    method = TwoFactorMethod.SMS

    def __init__(
        self,
        box: SecretBox,
        guard: SendGuard,
        *,
        code_ttl: timedelta,
        resend_cooldown: timedelta,
        max_sends_per_challenge: int,
        clock: Clock = utc_now,
    ) -> None:
        self._box = box
        self._guard = guard
        self._code_ttl = code_ttl
        self._cooldown = resend_cooldown
        self._max_sends = max_sends_per_challenge
        self._clock = clock

    # Phones (S1, S6) ---------------------------------------------------------------------

    async def phone(self, user_id: UUID) -> Phone | None:
        return await Phone.get_or_none(user_id=user_id)

    async def add_phone(
        self,
        user_id: UUID,
        number_text: str,
        carrier: str | None,
        ip: str | None,
        work: UnitOfWork,
    ) -> PhoneView:
        """S1: the number waits, unused, until the code sent to it is confirmed."""
        if carrier is not None and len(carrier) > MAX_CARRIER:
            raise BadUserInput(f"Carrier names have at most {MAX_CARRIER} characters.")
        number = phones.parse(number_text)
        if not self._guard.country_allowed(number):
            raise InvalidPhoneNumber("Text messages cannot be sent to that country.")
        await self._guard.admit(number, user_id, ip, SendPurpose.VERIFY_NUMBER)
        phone, _ = await Phone.get_or_create(user_id=user_id)
        phone.pending_number = number.e164
        phone.pending_carrier = carrier
        await phone.save(update_fields=["pending_number", "pending_carrier"])
        code = codes.new_code()
        row = await self._store_code(
            user_id,
            SmsCodePurpose.VERIFY_PHONE,
            None,
            number.e164,
            code,
            self._clock() + self._code_ttl,
        )
        await self._queue_code_message(user_id, number.e164, row, work)
        return PhoneView(phones.mask(number.e164), False, carrier, False)

    async def verify_phone(self, user_id: UUID, code: str) -> PhoneView:
        """S1: the confirmed number replaces the old one (recorded as its removal); SMS to it
        starts unpaused."""
        phone = await Phone.get_or_none(user_id=user_id)
        if phone is None or phone.pending_number is None:
            raise NoPendingPhone()
        if not await self._spend_code(
            user_id=user_id,
            purpose=SmsCodePurpose.VERIFY_PHONE,
            code=code,
            number=phone.pending_number,
        ):
            raise WrongSmsCode()
        replaced = phone.verified_at is not None and phone.number != phone.pending_number
        phone.number = phone.pending_number
        phone.carrier = phone.pending_carrier
        phone.pending_number = None
        phone.pending_carrier = None
        phone.verified_at = self._clock()
        phone.sms_paused = False
        await phone.save()
        if replaced:
            await audit.record(user_id, "phone.removed", detail="replaced")
        await audit.record(user_id, "phone.added")
        view = phone_view(phone)
        assert view is not None
        return view

    async def remove_phone(self, user_id: UUID) -> str | None:
        """Returns the removed verified number (for the notice), or None if there was none."""
        phone = await Phone.get_or_none(user_id=user_id)
        if phone is None:
            return None
        await Phone.filter(id=phone.id).delete()
        await audit.record(user_id, "phone.removed")
        return phone.number if phone.verified_at else None

    async def verified_number(self, user_id: UUID) -> str | None:
        phone = await Phone.get_or_none(user_id=user_id, verified_at__isnull=False)
        return phone.number if phone else None

    async def sms_ready_number(self, user_id: UUID) -> str | None:
        phone = await Phone.get_or_none(
            user_id=user_id, verified_at__isnull=False, sms_paused=False
        )
        return phone.number if phone else None

    def sendable(self, number: str) -> bool:
        """False when no code can go to a stored number any more: it no longer parses (a
        numbering-plan update in a library upgrade) or its country left the allow-list. A
        login then does not offer SMS, rather than fail or offer what cannot arrive."""
        return self._sendable(number) is not None

    def _sendable(self, number: str) -> ParsedNumber | None:
        try:
            parsed = phones.parse(number)
        except InvalidPhoneNumber:
            return None
        return parsed if self._guard.country_allowed(parsed) else None

    # The factor (L5, S2) -----------------------------------------------------------------

    def offered(self, summary: MethodSummary, client: ClientKind) -> bool:
        return summary.sms_ready

    def client_refusal(self, client: ClientKind) -> DomainError | None:
        return None

    async def verify(self, attempt: Attempt) -> Verdict:
        """S2: any code sent for this challenge to the phone the account has now, each once,
        while the challenge lives. A code sent to a number since removed or replaced is
        worthless: whoever holds that phone may not be the account's owner any more."""
        number = await self.verified_number(attempt.user_id)
        if number is not None and await self._spend_code(
            user_id=attempt.user_id,
            purpose=SmsCodePurpose.LOGIN,
            code=attempt.code,
            challenge_id=attempt.challenge_id,
            number=number,
        ):
            return ACCEPTED
        return Verdict(accepted=False, error=WrongSmsCode())

    async def start_challenge(
        self,
        user_id: UUID,
        challenge_id: UUID,
        number: str,
        expires_at: datetime,
        ip: str | None,
        work: UnitOfWork,
    ) -> None:
        """L4: the first code goes at once to `number`, the account's `sms_ready_number` (S7
        still applies; a refusal leaves the challenge to the other methods and to
        `requestSmsCode`)."""
        with contextlib.suppress(RateLimited, InvalidPhoneNumber):
            await self._send_login_code(user_id, challenge_id, number, expires_at, ip, work)

    async def request_code(
        self,
        user_id: UUID,
        challenge_id: UUID,
        expires_at: datetime,
        ip: str | None,
        work: UnitOfWork,
    ) -> None:
        """S2, H6: another code after the cooldown, at most 3 per challenge."""
        number = await self.sms_ready_number(user_id)
        if number is None:
            raise SmsNotAvailable()
        sent = await self._sent_at(challenge_id)
        if len(sent) >= self._max_sends:
            remaining = self._seconds_until(expires_at, at_least=1)
            raise RateLimited(remaining, "No more codes for this login; log in again later.")
        if sent and (wait := self._seconds_until(sent[0] + self._cooldown)):
            raise RateLimited(wait, "Wait before asking for another code.")
        await self._send_login_code(user_id, challenge_id, number, expires_at, ip, work)

    async def retry_after(
        self,
        challenge_id: UUID,
        expires_at: datetime,
        user_id: UUID,
        number: str | None,
        ip: str | None,
    ) -> int:
        """Seconds before `requestSmsCode` may send again (0: now), the `retryAfter` it would
        answer otherwise: the cooldown after the last code, or, once the challenge has had
        all its codes, the rest of its life; longer while an S7 send limit of `number` (the
        user's `sms_ready_number`), of the account or of `ip` (the login's address) is full
        (then no code went at login either, and the page must not promise one). A number no
        code can go to any more has the rest of the challenge's life too."""
        sent = await self._sent_at(challenge_id)
        if len(sent) >= self._max_sends:
            return self._seconds_until(expires_at, at_least=1)
        wait = self._seconds_until(sent[0] + self._cooldown) if sent else 0
        if number is not None:
            parsed = self._sendable(number)
            if parsed is None:
                return self._seconds_until(expires_at, at_least=1)
            wait = max(wait, await self._guard.login_code_wait(parsed, user_id, ip))
        return wait

    async def _sent_at(self, challenge_id: UUID) -> list[datetime]:
        """When each code of the challenge was made, newest first."""
        query = SmsCode.filter(challenge_id=challenge_id).order_by("-created_at")
        return [code.created_at for code in await query.only("id", "created_at")]

    def _seconds_until(self, moment: datetime, at_least: int = 0) -> int:
        return max(at_least, math.ceil((moment - self._clock()).total_seconds()))

    # Keywords (S5, H9) -------------------------------------------------------------------

    async def registered_number_users(self, number: str) -> list[UUID]:
        """Every account that verified `number`: a family may share one phone, and a keyword
        from it speaks for each of them."""
        rows = Phone.filter(number=number, verified_at__isnull=False).order_by("user_id")
        return [phone.user_id for phone in await rows.only("id", "user_id")]

    async def set_paused(self, number: str, *, paused: bool) -> int:
        return await Phone.filter(number=number, verified_at__isnull=False).update(
            sms_paused=paused
        )

    async def resend_latest(
        self, user_id: UUID, number: str, challenge_id: UUID, work: UnitOfWork
    ) -> bool:
        """H9 GO: resends, unchanged, the latest unexpired code sent to `number` for the
        waiting challenge (S7 applies). Returns whether a message was queued."""
        latest = (
            await SmsCode.filter(
                user_id=user_id,
                purpose=SmsCodePurpose.LOGIN,
                number=number,
                challenge_id=challenge_id,
                used_at__isnull=True,
                expires_at__gt=self._clock(),
            )
            .order_by("-created_at")
            .first()
        )
        if latest is None:
            return False
        try:
            await self._guard.admit(phones.parse(number), user_id, None, SendPurpose.LOGIN_CODE)
        except (RateLimited, InvalidPhoneNumber):
            return False
        await self._queue_code_message(user_id, number, latest, work)
        return True

    # Internals -----------------------------------------------------------------------------

    async def _send_login_code(
        self,
        user_id: UUID,
        challenge_id: UUID,
        number: str,
        expires_at: datetime,
        ip: str | None,
        work: UnitOfWork,
    ) -> None:
        parsed = phones.parse(number)
        if not self._guard.country_allowed(parsed):
            raise InvalidPhoneNumber("Text messages cannot be sent to that country.")
        await self._guard.admit(parsed, user_id, ip, SendPurpose.LOGIN_CODE)
        code = codes.new_code()
        row = await self._store_code(
            user_id, SmsCodePurpose.LOGIN, challenge_id, number, code, expires_at
        )
        await self._queue_code_message(user_id, number, row, work)

    async def _store_code(
        self,
        user_id: UUID,
        purpose: SmsCodePurpose,
        challenge_id: UUID | None,
        number: str,
        code: str,
        expires_at: datetime,
    ) -> SmsCode:
        code_id = uuid4()
        return await SmsCode.create(
            id=code_id,
            user_id=user_id,
            purpose=purpose,
            challenge_id=challenge_id,
            number=number,
            code_hash=self._box.keyed_hash(code),
            code_sealed=self._box.encrypt(code, context=f"sms:{code_id}"),
            expires_at=expires_at,
            created_at=self._clock(),
        )

    async def _queue_code_message(
        self, user_id: UUID, number: str, code: SmsCode, work: UnitOfWork
    ) -> None:
        message = await SmsMessage.create(
            user_id=user_id, to_number=number, code_id=code.id, expires_at=code.expires_at
        )
        await work.enqueue(send_job(message.id))

    async def queue_text(
        self, user_id: UUID | None, number: str, body: str, notice: str, work: UnitOfWork
    ) -> UUID:
        """A message without secrets: notices and keyword replies."""
        message = await SmsMessage.create(
            user_id=user_id, to_number=number, notice=notice, body=body
        )
        await work.enqueue(send_job(message.id))
        return message.id

    async def _spend_code(
        self,
        *,
        user_id: UUID,
        purpose: SmsCodePurpose,
        code: str,
        challenge_id: UUID | None = None,
        number: str | None = None,
    ) -> bool:
        normalized = codes.normalize(code)
        if normalized is None:
            return False
        query = SmsCode.filter(
            user_id=user_id,
            purpose=purpose,
            code_hash__in=self._box.keyed_hash_candidates(normalized),
            used_at__isnull=True,
            expires_at__gt=self._clock(),
        )
        if challenge_id is not None:
            query = query.filter(challenge_id=challenge_id)
        if number is not None:
            query = query.filter(number=number)
        return await query.update(used_at=self._clock()) >= 1


def send_job(message_id: UUID) -> JobRequest:
    """S4: the message id is the job id, so a message is one job however often it is relayed."""
    return JobRequest(
        name=JOB_SMS_SEND,
        queue=QUEUE_SMS,
        payload={"message_id": str(message_id)},
        job_id=str(message_id),
    )
