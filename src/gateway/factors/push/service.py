"""Push login verification (P1-P10, H4, H5, H6): devices, login requests, fatigue.

The challenge side of an approval (the challenge turning APPROVED or DENIED) is the login
layer's business; this module decides about devices and requests and reports what it did.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from cryptography.exceptions import InvalidTag
from tortoise.expressions import Q

from gateway.accounts.clients import APP_CLIENTS
from gateway.accounts.models import Session
from gateway.accounts.store import lock_user
from gateway.core import audit, geo, otp
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.errors import BadUserInput, DomainError, Forbidden, NotFound
from gateway.core.events import challenge_channel, user_channel
from gateway.core.jobs import JOB_PUSH_FAN_OUT, QUEUE_PUSH, JobRequest
from gateway.core.uow import UnitOfWork
from gateway.factors.base import ACCEPTED, Attempt, TwoFactorMethod, Verdict
from gateway.factors.push import signing, store
from gateway.factors.push.errors import (
    InvalidSignature,
    MatchNumberMismatch,
    RequestNotPending,
    WrongAppCode,
)
from gateway.factors.push.models import (
    Device,
    LoginRequest,
    LoginRequestStatus,
    Platform,
    PushFatigue,
)
from gateway.factors.summary import MethodSummary

log = logging.getLogger(__name__)

MAX_NAME = 64
MAX_TOKEN = 4096
MAX_WRONG_MATCHES = 3


@dataclass(frozen=True)
class PushPolicy:
    number_matching: bool
    max_pending: int
    fatigue_threshold: int
    pause: timedelta


@dataclass(frozen=True)
class Enrollment:
    device: Device
    login_code_secret: str


@dataclass(frozen=True)
class Decision:
    """What an approve or deny changed: the request, and whether push is now paused."""

    request: LoginRequest
    paused: bool = False


def _secret_context(device_id: UUID) -> str:
    return f"device:{device_id}"


class PushService:
    method = TwoFactorMethod.PUSH

    def __init__(self, box: SecretBox, policy: PushPolicy, clock: Clock = utc_now) -> None:
        self._box = box
        self._policy = policy
        self._clock = clock

    # Devices (P1, P7, P9) -----------------------------------------------------------------

    async def enroll(
        self, session: Session, name: str, platform: Platform, push_token: str, public_key: str
    ) -> Enrollment:
        """P1: from an app session only; the answer carries the login-code secret, once."""
        if session.client_kind not in APP_CLIENTS:
            raise Forbidden("Devices enroll from the iOS or Android app.")
        if not 1 <= len(name.strip()) <= MAX_NAME:
            raise BadUserInput(f"Device names have 1 to {MAX_NAME} characters.")
        if not 1 <= len(push_token) <= MAX_TOKEN:
            raise BadUserInput("The push token is empty or too long.")
        if signing.decode_public_key(public_key) is None:
            raise BadUserInput("publicKey must be the base64 of a raw 32-byte Ed25519 key.")
        if await Device.filter(session_id=session.id).delete():
            await audit.record(session.user.id, "device.removed", detail="replaced")
        secret = otp.new_secret()
        device = Device(
            user_id=session.user.id,
            session_id=session.id,
            name=name.strip(),
            platform=platform,
            push_token=push_token,
            public_key=public_key,
            last_seen_at=self._clock(),
        )
        device.login_code_secret_sealed = self._box.encrypt(
            secret, context=_secret_context(device.id)
        )
        await device.save()
        await Session.filter(id=session.id).update(device_id=device.id)
        await audit.record(session.user.id, "device.enrolled", detail=device.name)
        return Enrollment(device=device, login_code_secret=secret)

    async def devices(self, user_id: UUID) -> list[Device]:
        return await Device.filter(user_id=user_id).order_by("created_at")

    async def owned_device(self, user_id: UUID, device_id: str) -> Device:
        try:
            parsed = UUID(device_id)
        except ValueError as exc:
            raise BadUserInput("Malformed id.") from exc
        device = await Device.get_or_none(id=parsed, user_id=user_id)
        if device is None:
            raise NotFound()
        return device

    async def update_push_token(self, session: Session, device_id: str, push_token: str) -> Device:
        """P9: Firebase rotated the token; push works again if it had been switched off.

        Only the device's own app session may do it: from any other session (a web one, say)
        it would be a way to send the device's pushes elsewhere, or to switch them off with a
        dead token, without the password that removing the device needs (A3)."""
        if not 1 <= len(push_token) <= MAX_TOKEN:
            raise BadUserInput("The push token is empty or too long.")
        device = await self.owned_device(session.user.id, device_id)
        if session.device_id != device.id:
            raise Forbidden("Only the device's own app session can replace its push token.")
        device.push_token = push_token
        device.push_enabled = True
        device.push_disabled_reason = None
        device.last_seen_at = self._clock()
        await device.save()
        await audit.record(session.user.id, "device.push_token_replaced", detail=device.name)
        return device

    async def remove_device(self, device: Device) -> None:
        await Device.filter(id=device.id).delete()
        await Session.filter(device_id=device.id).update(device_id=None)
        await audit.record(device.user_id, "device.removed", detail=device.name)

    async def device_of_session(self, session: Session) -> Device | None:
        return await store.device_of_session(session.id)

    async def app_device(self, session: Session) -> Device:
        """Approve, deny and the app's subscription act for the session's enrolled device."""
        return self.require_app_device(await self.device_of_session(session))

    def require_app_device(self, device: Device | None) -> Device:
        if device is None:
            raise self._not_enrolled()
        return device

    @staticmethod
    def _not_enrolled() -> Forbidden:
        return Forbidden("Only an enrolled app session can answer login requests.")

    # APP_CODE (P8, H4) --------------------------------------------------------------------

    async def verify_app_code(self, user_id: UUID, code: str) -> Verdict:
        """P8: a TOTP of any enrolled device's login-code secret, with T2's replay rule."""
        now = self._clock()
        for device in await Device.filter(user_id=user_id):
            secret = self._login_code_secret(device)
            if secret is None:
                continue
            step = otp.matching_step(secret, code, now, after_step=device.last_code_step)
            if step is None:
                continue
            claimed = await Device.filter(id=device.id, last_code_step__lt=step).update(
                last_code_step=step, last_seen_at=now
            )
            if claimed == 1:
                return ACCEPTED
        return Verdict(accepted=False, error=WrongAppCode())

    def _login_code_secret(self, device: Device) -> str | None:
        """T3: None (logged, without the secret) when no accepted key opens it, e.g. after an
        old key was dropped before `kanmon admin rekey` re-sealed it: the device's codes are
        then refused like wrong ones."""
        try:
            return self._box.decrypt(
                device.login_code_secret_sealed, context=_secret_context(device.id)
            )
        except (ValueError, InvalidTag):
            log.error(
                "device login-code secret cannot be opened with any accepted key",
                extra={"device_id": str(device.id)},
            )
            return None

    # Login requests (P2, P3, P10) ----------------------------------------------------------

    async def push_ready(self, user_id: UUID) -> bool:
        if not await Device.exists(user_id=user_id, push_enabled=True):
            return False
        fatigue = await PushFatigue.get_or_none(user_id=user_id)
        return not (
            fatigue is not None
            and fatigue.paused_until is not None
            and fatigue.paused_until > self._clock()
        )

    async def open_request(
        self,
        user_id: UUID,
        challenge_id: UUID,
        expires_at: datetime,
        browser: str | None,
        ip_address: str | None,
        work: UnitOfWork,
    ) -> LoginRequest | None:
        """P2, P10: a request for every pushable device, unless push is paused or 3 are
        pending already (then PUSH is not offered and the other methods are). The user's row
        lock makes the count and the insert one step: logins racing for the last free place
        (a push-bombing script) get one request between them, not one each."""
        await lock_user(user_id)
        if not await self.push_ready(user_id):
            return None
        now = self._clock()
        pending = await LoginRequest.filter(
            user_id=user_id, status=LoginRequestStatus.PENDING, expires_at__gt=now
        ).count()
        if pending >= self._policy.max_pending:
            return None
        request = await LoginRequest.create(
            user_id=user_id,
            challenge_id=challenge_id,
            nonce=secrets.token_urlsafe(16),
            match_number=secrets.randbelow(90) + 10 if self._policy.number_matching else None,
            browser=(browser or None) and browser[:128],
            ip_address=ip_address,
            location=geo.rough_location(ip_address),
            expires_at=expires_at,
            created_at=now,
        )
        await work.enqueue(
            JobRequest(
                name=JOB_PUSH_FAN_OUT,
                queue=QUEUE_PUSH,
                payload={"request_id": str(request.id)},
                job_id=str(request.id),
            )
        )
        work.signal(user_channel(user_id))
        return request

    async def request_for_challenge(self, challenge_id: UUID) -> LoginRequest | None:
        return await LoginRequest.get_or_none(challenge_id=challenge_id)

    async def decide(
        self,
        device: Device,
        session_id: UUID,
        request_id: str,
        signature: str,
        approve: bool,
        match_number: int | None,
        work: UnitOfWork,
    ) -> tuple[Decision | None, DomainError | None]:
        """P4, P6: the signature over the exact message, the request's state and expiry, and
        the number match, then one conditional update: one decision wins. Takes the user's row
        lock (with the request's) for the caller's transaction; after it, the answering session
        (`session_id`) must still be live and the device's (P7: a logout or a removal that won
        the lock ends its say)."""
        try:
            parsed = UUID(request_id)
        except ValueError as exc:
            raise BadUserInput("Malformed id.") from exc
        request = await store.lock_request(parsed, device.user_id)
        if request is None:
            raise NotFound()
        # The signed message names a number only when the request asked for one (API.md).
        signed_number = match_number if request.match_number is not None else None
        message = (
            signing.approve_message(str(request.id), request.nonce, signed_number)
            if approve
            else signing.deny_message(str(request.id), request.nonce)
        )
        if not signing.valid_signature(
            signing.decode_public_key(device.public_key) or b"", message, signature
        ):
            raise InvalidSignature()
        now = self._clock()
        if request.status is not LoginRequestStatus.PENDING or request.expires_at <= now:
            raise RequestNotPending()
        if approve and request.match_number is not None and match_number != request.match_number:
            if not await store.still_enrolled(device.id, session_id):
                raise self._not_enrolled()
            return await self._wrong_match(device, request, work)
        status = LoginRequestStatus.APPROVED if approve else LoginRequestStatus.DENIED
        kind = "login_request.approved" if approve else "login_request.denied"
        result = await store.record_decision(request, status, device, session_id, now, kind)
        if result is store.DecisionResult.NOT_ENROLLED:
            raise self._not_enrolled()
        if result is store.DecisionResult.NOT_PENDING:
            raise RequestNotPending()
        request.status = status
        request.decided_at = now
        work.signal(user_channel(request.user_id))
        work.signal(challenge_channel(request.challenge_id))
        # An approval ended any run of rejections in `record_decision`; a denial counts.
        paused = False if approve else await self._count_rejection(request.user_id)
        return Decision(request, paused), None

    async def _wrong_match(
        self, device: Device, request: LoginRequest, work: UnitOfWork
    ) -> tuple[Decision | None, DomainError | None]:
        """P4: a wrong number leaves the request pending; the 3rd denies it."""
        wrong = request.wrong_matches + 1
        if wrong < MAX_WRONG_MATCHES:
            await LoginRequest.filter(id=request.id).update(wrong_matches=wrong)
            return None, MatchNumberMismatch()
        now = self._clock()
        await LoginRequest.filter(id=request.id, status=LoginRequestStatus.PENDING).update(
            wrong_matches=wrong,
            status=LoginRequestStatus.DENIED,
            decided_at=now,
            decided_by=device.id,
        )
        request.status = LoginRequestStatus.DENIED
        work.signal(user_channel(request.user_id))
        work.signal(challenge_channel(request.challenge_id))
        await audit.record(request.user_id, "login_request.denied", detail="match_number")
        paused = await self._count_rejection(request.user_id)
        return Decision(request, paused), MatchNumberMismatch(
            "That is not the number shown on the login page; the request is now denied."
        )

    async def close_for_challenge(self, challenge_id: UUID, work: UnitOfWork) -> None:
        """A challenge completed another way, locked or expired: its request expires."""
        request = await LoginRequest.get_or_none(
            challenge_id=challenge_id, status=LoginRequestStatus.PENDING
        )
        if request is None:
            return
        changed = await LoginRequest.filter(
            id=request.id, status=LoginRequestStatus.PENDING
        ).update(status=LoginRequestStatus.EXPIRED, decided_at=self._clock())
        if changed:
            work.signal(user_channel(request.user_id))

    async def expire_due(self, work: UnitOfWork) -> list[Decision]:
        """Requests past their time become EXPIRED; each counts toward push fatigue."""
        now = self._clock()
        due = await LoginRequest.filter(status=LoginRequestStatus.PENDING, expires_at__lte=now)
        expired: list[Decision] = []
        for request in due:
            changed = await LoginRequest.filter(
                id=request.id, status=LoginRequestStatus.PENDING
            ).update(status=LoginRequestStatus.EXPIRED, decided_at=now)
            if changed:
                request.status = LoginRequestStatus.EXPIRED
                work.signal(user_channel(request.user_id))
                work.signal(challenge_channel(request.challenge_id))
                paused = await self._count_rejection(request.user_id)
                expired.append(Decision(request, paused))
        return expired

    async def _count_rejection(self, user_id: UUID) -> bool:
        """P10: 3 consecutive denials or expiries pause push for an hour (an approval resets the
        run, in `store.record_decision`). Returns whether this call started a pause."""
        fatigue, _ = await PushFatigue.get_or_create(user_id=user_id)
        fatigue.consecutive_rejections += 1
        started = fatigue.consecutive_rejections >= self._policy.fatigue_threshold
        if started:
            fatigue.consecutive_rejections = 0
            fatigue.paused_until = self._clock() + self._policy.pause
        await fatigue.save(update_fields=["consecutive_rejections", "paused_until"])
        return started

    async def list_requests(
        self,
        user_id: UUID,
        status: LoginRequestStatus | None,
        first: int,
        after: tuple[datetime, UUID] | None,
    ) -> tuple[list[LoginRequest], bool]:
        """H6: the app's pull-to-refresh list, newest first."""
        query = LoginRequest.filter(user_id=user_id)
        now = self._clock()
        if status is LoginRequestStatus.PENDING:
            query = query.filter(status=status, expires_at__gt=now)
        elif status is not None:
            query = query.filter(status=status)
        if after is not None:
            created, request_id = after
            query = query.filter(
                Q(created_at__lt=created) | Q(created_at=created, id__lt=request_id)
            )
        rows = await query.order_by("-created_at", "-id").limit(first + 1)
        return rows[:first], len(rows) > first

    async def recent_requests(self, user_id: UUID, since: datetime) -> list[LoginRequest]:
        """Oldest first, for the app's subscription."""
        return await LoginRequest.filter(user_id=user_id, created_at__gte=since).order_by(
            "created_at", "id"
        )


class AppCodeFactor:
    """APP_CODE as a challenge method: offered when a device is enrolled (P8)."""

    method = TwoFactorMethod.APP_CODE

    def __init__(self, push: PushService) -> None:
        self._push = push

    def offered(self, summary: MethodSummary, client: object) -> bool:
        return summary.devices

    def client_refusal(self, client: object) -> DomainError | None:
        return None

    async def verify(self, attempt: Attempt) -> Verdict:
        return await self._push.verify_app_code(attempt.user_id, attempt.code)
