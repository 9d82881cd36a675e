"""Login with challenges (L1-L7): password first, then one second factor, one session, once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID, uuid4

from gateway.accounts.models import User
from gateway.accounts.service import AccountService, Client, IssuedSession, PasswordAttempt
from gateway.core import audit
from gateway.core import code_throttle as throttle
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import new_token, same_digest, token_digest
from gateway.core.errors import (
    BadUserInput,
    ChallengeClosed,
    ChallengeExpired,
    ChallengeLocked,
    DomainError,
    InvalidCredentials,
    MethodNotAvailable,
    NotFound,
    RateLimited,
)
from gateway.core.events import challenge_channel
from gateway.core.metrics import CHALLENGE_OUTCOMES
from gateway.core.outcome import Outcome
from gateway.core.sizes import MAX_PASSWORD_LENGTH, require_code_size
from gateway.core.uow import UnitOfWork
from gateway.factors.base import (
    METHOD_ORDER,
    Attempt,
    CodeFactor,
    TwoFactorMethod,
    with_method,
)
from gateway.factors.push.service import PushService
from gateway.factors.sms.service import SmsService
from gateway.factors.summary import MethodSummary
from gateway.factors.temporary_passwords.service import TemporaryPasswordService
from gateway.login import store
from gateway.login.models import ChallengeStatus, LoginChallenge

MAX_WRONG_CODES = 5


@dataclass(frozen=True)
class ChallengeView:
    id: UUID
    token: str
    status: ChallengeStatus
    methods: list[TwoFactorMethod]
    expires_at: datetime
    sms_retry_after: int | None = None
    match_number: int | None = None


LoginResult = IssuedSession | ChallengeView


@dataclass(frozen=True)
class PasswordCheck:
    """`check_password`'s findings, for `finish_login`."""

    password: str = field(repr=False)
    attempt: PasswordAttempt
    candidate: tuple[User, MethodSummary] | None
    password_ok: bool


def parse_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except (ValueError, AttributeError) as exc:
        raise BadUserInput("Malformed id.") from exc


def current_status(challenge: LoginChallenge, now: datetime) -> ChallengeStatus:
    """Expiry is derived from the clock, so no job has to run for a challenge to expire."""
    if challenge.status is ChallengeStatus.PENDING and challenge.expires_at <= now:
        return ChallengeStatus.EXPIRED
    return challenge.status


class LoginService:
    def __init__(
        self,
        accounts: AccountService,
        temporary_passwords: TemporaryPasswordService,
        factors: list[CodeFactor],
        sms: SmsService,
        push: PushService,
        challenge_ttl: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._accounts = accounts
        self._temporary = temporary_passwords
        self._sms = sms
        self._push = push
        self._factors = {factor.method: factor for factor in factors}
        self._ttl = challenge_ttl
        self._clock = clock

    async def login(
        self, username: str, password: str, client: Client, work: UnitOfWork
    ) -> Outcome[LoginResult]:
        """L1, L2, L3, L6: both steps below in the caller's unit of work."""
        checked = await self.check_password(username, password, client)
        async with self._accounts.guard.released_on_error(checked.attempt):
            return await self.finish_login(checked, client, work)

    async def check_password(self, username: str, password: str, client: Client) -> PasswordCheck:
        """The throttle, the account and argon2, outside any transaction: a hash takes tens of
        milliseconds (more when logins queue for the cores), and a database connection held
        open meanwhile is one the other requests cannot have. Wrong passwords all look alike;
        the throttle counts the attempt before argon2."""
        if len(username) > 64 or len(password) > MAX_PASSWORD_LENGTH:
            raise BadUserInput("Username or password too long.")
        key = username.casefold()
        attempt = await self._accounts.guard.check(key, client.ip_address)
        async with self._accounts.guard.released_on_error(attempt):
            candidate = await store.login_candidate(key)
            password_ok = await self._accounts.passwords.verify(
                candidate[0].password_hash if candidate else None, password
            )
        return PasswordCheck(password, attempt, candidate, password_ok)

    async def finish_login(
        self, checked: PasswordCheck, client: Client, work: UnitOfWork
    ) -> Outcome[LoginResult]:
        """What the password check leads to, in the unit of work: a session, a challenge, or
        the failure counted and audited."""
        if checked.candidate is None:
            await self._accounts.guard.failed(checked.attempt)
            return Outcome(error=InvalidCredentials())
        user, summary = checked.candidate
        if not checked.password_ok:
            if await self._temporary.consume(user.id, checked.password):
                await self._accounts.guard.succeeded(checked.attempt)
                await audit.record(
                    user.id,
                    "login.succeeded",
                    detail="temporary_password",
                    ip_address=client.ip_address,
                )
                # L6, A3: a temporary password is not the account password.
                session = await self._accounts.issue_session(user.id, client, password_proved=False)
                return Outcome(value=session)
            await self._accounts.guard.failed(checked.attempt)
            await audit.record(
                user.id, "login.failed", detail="password", ip_address=client.ip_address
            )
            return Outcome(error=InvalidCredentials())
        await self._accounts.guard.succeeded(checked.attempt)
        if not user.two_factor_enabled:
            await audit.record(
                user.id, "login.succeeded", detail="password", ip_address=client.ip_address
            )
            session = await self._accounts.issue_session(user.id, client, password_proved=True)
            return Outcome(value=session)
        return Outcome(value=await self._open_challenge(user.id, summary, client, work))

    async def _open_challenge(
        self, user_id: UUID, summary: MethodSummary, client: Client, work: UnitOfWork
    ) -> ChallengeView:
        """L2: an id and a secret token for the waiting client, listing the methods it can use."""
        methods = [
            method
            for method in METHOD_ORDER
            if method in self._factors and self._factors[method].offered(summary, client.kind)
        ]
        sms_number = None
        if TwoFactorMethod.SMS in methods:
            sms_number = await self._sms.sms_ready_number(user_id)
            unusable = sms_number is None or not self._sms.sendable(sms_number)
            if unusable and len(methods) > 1:
                methods.remove(TwoFactorMethod.SMS)
        token = new_token()
        expires_at = self._clock() + self._ttl
        challenge_id = uuid4()
        # L4: push first: a login request for every pushable device...
        request = None
        if summary.devices:
            request = await self._push.open_request(
                user_id, challenge_id, expires_at, client.name, client.ip_address, work
            )
        if request is not None:
            methods = [m for m in METHOD_ORDER if m in methods or m is TwoFactorMethod.PUSH]
        challenge = await LoginChallenge.create(
            id=challenge_id,
            user_id=user_id,
            token_hash=token_digest(token),
            client_kind=client.kind,
            client_name=client.name,
            ip_address=client.ip_address,
            methods=[m.value for m in methods],
            expires_at=expires_at,
        )
        sms_retry = None
        if TwoFactorMethod.SMS in methods:
            if request is None and sms_number is not None:
                # ...otherwise SMS is the primary method: its first code goes now.
                await self._sms.start_challenge(
                    user_id, challenge.id, sms_number, expires_at, client.ip_address, work
                )
            sms_retry = await self._sms.retry_after(
                challenge.id, expires_at, user_id, sms_number, client.ip_address
            )
        match = request.match_number if request is not None else None
        return ChallengeView(
            challenge.id, token, ChallengeStatus.PENDING, methods, expires_at, sms_retry, match
        )

    def password_proved_at(self, challenge: LoginChallenge) -> datetime:
        """A3: the password was proved when the challenge opened (its lifetime before its
        expiry), so completing it late does not stretch the window."""
        return challenge.expires_at - self._ttl

    async def find_challenge(self, challenge_id: str, token: str) -> LoginChallenge:
        """The challenge token is the credential: a wrong one is NOT_FOUND, as is an unknown id."""
        return await self._by_token(challenge_id, token, store.find_challenge)

    async def view(self, challenge_id: str, token: str) -> ChallengeView:
        challenge = await self.find_challenge(challenge_id, token)
        return await self._view(challenge, token)

    async def _view(self, challenge: LoginChallenge, token: str) -> ChallengeView:
        methods = [TwoFactorMethod(m) for m in challenge.methods]
        status = current_status(challenge, self._clock())
        sms_retry = None
        match = None
        if status is ChallengeStatus.PENDING:
            if TwoFactorMethod.SMS in methods:
                number = await self._sms.sms_ready_number(challenge.user_id)
                sms_retry = await self._sms.retry_after(
                    challenge.id,
                    challenge.expires_at,
                    challenge.user_id,
                    number,
                    challenge.ip_address,
                )
            if TwoFactorMethod.PUSH in methods:
                request = await self._push.request_for_challenge(challenge.id)
                match = request.match_number if request is not None else None
        return ChallengeView(
            challenge.id, token, status, methods, challenge.expires_at, sms_retry, match
        )

    async def request_sms_code(
        self, challenge_id: str, token: str, ip_address: str | None, work: UnitOfWork
    ) -> ChallengeView:
        """S2, H6: "send me a code by SMS", also as the fallback when push does not arrive."""
        challenge = await self.lock_challenge(challenge_id, token)
        self._check_open(challenge, self._clock())
        if await self._sms.sms_ready_number(challenge.user_id) is None:
            raise MethodNotAvailable("This account has no phone that can receive SMS.")
        if TwoFactorMethod.SMS.value not in challenge.methods:
            challenge.methods = with_method(challenge.methods, TwoFactorMethod.SMS)
            await challenge.save(update_fields=["methods"])
        await self._sms.request_code(
            challenge.user_id, challenge.id, challenge.expires_at, ip_address, work
        )
        return await self._view(challenge, token)

    async def verify(
        self,
        challenge_id: str,
        token: str,
        method: TwoFactorMethod,
        code: str,
        ip_address: str | None,
        work: UnitOfWork,
    ) -> Outcome[IssuedSession]:
        """L2, L5, L7, F5: one code against one challenge; a success spends the challenge and
        issues exactly one session. Wrong codes are counted and committed before the error is
        reported."""
        require_code_size(code)
        challenge = await self.lock_challenge(challenge_id, token)
        now = self._clock()
        self._check_open(challenge, now)
        factor = self._factors.get(method)
        refusal = factor.client_refusal(challenge.client_kind) if factor else None
        if refusal is not None:
            raise refusal
        if factor is None or method.value not in challenge.methods:
            raise MethodNotAvailable("This challenge cannot be completed with that method.")
        try:
            counter = await throttle.check(challenge.user_id, method.value, now)
        except RateLimited:
            CHALLENGE_OUTCOMES.labels(method.value, "rate_limited").inc()
            raise
        verdict = await factor.verify(
            Attempt(challenge.user_id, challenge.id, code, challenge.client_kind, work)
        )
        if not verdict.accepted:
            await throttle.failed(challenge.user_id, method.value, now, counter)
            CHALLENGE_OUTCOMES.labels(method.value, "wrong_code").inc()
            error = await self._wrong_code(challenge, method, verdict.error, ip_address, work)
            return Outcome(error=error)
        await throttle.succeeded(counter)
        CHALLENGE_OUTCOMES.labels(method.value, "success").inc()
        await self._close_push_request(challenge, work)
        events: list[tuple[str, str | None]] = [("login.succeeded", method.value)]
        if method is TwoFactorMethod.BACKUP_CODE:
            events.append(("backup_code.used", None))
        client = Client(challenge.client_kind, challenge.client_name, ip_address)
        row, session = self._accounts.new_session(
            challenge.user_id, client, password_proved_at=self.password_proved_at(challenge)
        )
        await store.complete(challenge, now, events, ip_address, row)
        work.signal(challenge_channel(challenge.id))
        return Outcome(value=session)

    async def lock_challenge(self, challenge_id: str, token: str) -> LoginChallenge:
        """`find_challenge` and the locks of user and challenge in one round trip. A wrong token
        holds the locks only until its NOT_FOUND rolls the transaction back."""
        return await self._by_token(challenge_id, token, store.lock_challenge)

    async def _by_token(
        self,
        challenge_id: str,
        token: str,
        read: Callable[[UUID], Awaitable[LoginChallenge | None]],
    ) -> LoginChallenge:
        parsed = parse_id(challenge_id)
        if len(token) > 128:
            raise NotFound()
        challenge = await read(parsed)
        if challenge is None or not same_digest(challenge.token_hash, token_digest(token)):
            raise NotFound()
        return challenge

    async def _close_push_request(self, challenge: LoginChallenge, work: UnitOfWork) -> None:
        if TwoFactorMethod.PUSH.value in challenge.methods:
            await self._push.close_for_challenge(challenge.id, work)

    def _check_open(self, challenge: LoginChallenge, now: datetime) -> None:
        status = current_status(challenge, now)
        if status is ChallengeStatus.EXPIRED:
            raise ChallengeExpired()
        if status is ChallengeStatus.LOCKED:
            raise ChallengeLocked()
        if status is not ChallengeStatus.PENDING:
            raise ChallengeClosed()

    async def _wrong_code(
        self,
        challenge: LoginChallenge,
        method: TwoFactorMethod,
        error: DomainError | None,
        ip_address: str | None,
        work: UnitOfWork,
    ) -> DomainError:
        """L2: the 5th wrong code locks the challenge."""
        attempts = challenge.wrong_attempts + 1
        locked = attempts >= MAX_WRONG_CODES
        await LoginChallenge.filter(id=challenge.id).update(
            wrong_attempts=attempts,
            status=ChallengeStatus.LOCKED if locked else ChallengeStatus.PENDING,
        )
        await audit.record(
            challenge.user_id, "login.failed", detail=method.value, ip_address=ip_address
        )
        if locked:
            CHALLENGE_OUTCOMES.labels(method.value, "locked").inc()
            await self._close_push_request(challenge, work)
            work.signal(challenge_channel(challenge.id))
        if locked and not (error is not None and error.code == "BACKUP_CODE_OUT_OF_ORDER"):
            return ChallengeLocked()
        return error or MethodNotAvailable()
