"""Push approvals on the challenge side (P4, P5, P6, P10): a decision moves the challenge, the
waiting client exchanges an approved challenge for its session once, and expiry is published."""

from __future__ import annotations

from gateway.accounts.models import Session
from gateway.accounts.service import AccountService, Client, IssuedSession, plausible_token
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import token_digest
from gateway.core.errors import ChallengeClosed, ChallengeExpired, ChallengeLocked, DomainError
from gateway.core.events import challenge_channel
from gateway.core.metrics import CHALLENGE_OUTCOMES
from gateway.core.notices import Notice, notice_job
from gateway.core.outcome import Outcome
from gateway.core.uow import UnitOfWork
from gateway.factors.push import store as push_store
from gateway.factors.push.errors import RequestNotPending
from gateway.factors.push.models import Device, LoginRequest, LoginRequestStatus
from gateway.factors.push.service import Decision, PushService
from gateway.login import store
from gateway.login.models import ChallengeStatus, LoginChallenge
from gateway.login.service import LoginService, current_status


class ChallengeNotApproved(DomainError):
    code = "CHALLENGE_NOT_APPROVED"
    default_message = "The login request has not been approved yet."


class PushApprovals:
    def __init__(
        self,
        login: LoginService,
        push: PushService,
        accounts: AccountService,
        clock: Clock = utc_now,
    ) -> None:
        self._login = login
        self._push = push
        self._accounts = accounts
        self._clock = clock

    async def app_session(self, token: str) -> tuple[Session, Device | None] | None:
        """G4 and the session's device in one round trip, for an approval or a denial: a usable
        session (else None) and the device enrolled from it (None for a web session)."""
        if not plausible_token(token):
            return None
        found = await push_store.session_with_device(token_digest(token))
        if found is None:
            return None
        session, device = found
        return (session, device) if self._accounts.usable(session) else None

    async def decide(
        self,
        session: Session,
        device: Device | None,
        request_id: str,
        signature: str,
        *,
        approve: bool,
        match_number: int | None,
        work: UnitOfWork,
    ) -> Outcome[LoginRequest]:
        """P4, P6: the request and its challenge change together, or not at all. `device` is
        the one enrolled from `session` (`app_session` reads both)."""
        device = self._push.require_app_device(device)
        # `decide` locks the user's row first, then the request's, then this moves the challenge.
        decision, error = await self._push.decide(
            device, session.id, request_id, signature, approve, match_number, work
        )
        if decision is not None:
            await self._move_challenge(decision, work)
            CHALLENGE_OUTCOMES.labels("PUSH", decision.request.status.value.lower()).inc()
        return Outcome(value=decision.request if decision else None, error=error)

    async def _move_challenge(self, decision: Decision, work: UnitOfWork) -> None:
        request = decision.request
        approved = request.status is LoginRequestStatus.APPROVED
        target = ChallengeStatus.APPROVED if approved else ChallengeStatus.DENIED
        moved = await LoginChallenge.filter(
            id=request.challenge_id, status=ChallengeStatus.PENDING, expires_at__gt=self._clock()
        ).update(status=target)
        if not moved and approved:
            # The challenge finished another way meanwhile: this approval must not stand.
            raise RequestNotPending()
        work.signal(challenge_channel(request.challenge_id))
        if decision.paused:
            await work.enqueue(notice_job(request.user_id, Notice.PUSH_PAUSED))

    async def complete(
        self, challenge_id: str, token: str, ip_address: str | None, work: UnitOfWork
    ) -> IssuedSession:
        """P5, L5: after APPROVED, the waiting client's token buys exactly one session."""
        challenge = await self._login.lock_challenge(challenge_id, token)
        now = self._clock()
        status = current_status(challenge, now)
        if status is ChallengeStatus.PENDING:
            raise ChallengeNotApproved()
        if status is ChallengeStatus.EXPIRED:
            raise ChallengeExpired()
        if status is ChallengeStatus.LOCKED:
            raise ChallengeLocked()
        if status is not ChallengeStatus.APPROVED:
            raise ChallengeClosed()
        if challenge.expires_at <= now:
            # L2: an approval does not make the challenge token good forever.
            raise ChallengeExpired()
        # The challenge's row is locked and APPROVED: this is the one completion.
        client = Client(challenge.client_kind, challenge.client_name, ip_address)
        row, session = self._accounts.new_session(
            challenge.user_id, client, password_proved_at=self._login.password_proved_at(challenge)
        )
        await store.complete(challenge, now, [("login.succeeded", "PUSH")], ip_address, row)
        work.signal(challenge_channel(challenge.id))
        CHALLENGE_OUTCOMES.labels("PUSH", "success").inc()
        return session

    async def expire_due(self, work: UnitOfWork) -> int:
        """P5, P10: requests and challenges past their time become EXPIRED, and their
        subscribers hear of it; an expiry counts toward push fatigue."""
        now = self._clock()
        expired = await self._push.expire_due(work)
        for decision in expired:
            if decision.paused:
                await work.enqueue(notice_job(decision.request.user_id, Notice.PUSH_PAUSED))
        due = await LoginChallenge.filter(status=ChallengeStatus.PENDING, expires_at__lte=now)
        for challenge in due:
            changed = await LoginChallenge.filter(
                id=challenge.id, status=ChallengeStatus.PENDING
            ).update(status=ChallengeStatus.EXPIRED)
            if changed:
                work.signal(challenge_channel(challenge.id))
                CHALLENGE_OUTCOMES.labels("ANY", "expired").inc()
        return len(expired) + len(due)
