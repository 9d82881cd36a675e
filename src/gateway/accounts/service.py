"""Accounts and sessions: sign-up, password proof, bearer sessions, the A3 window."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID, uuid4

from tortoise.exceptions import IntegrityError

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session, User
from gateway.accounts.store import session_with_user
from gateway.core.addresses import throttle_key
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import new_token, token_digest
from gateway.core.errors import (
    BadUserInput,
    InvalidCredentials,
    RateLimited,
    ReauthenticationRequired,
    UsernameTaken,
)
from gateway.core.passwords import Passwords
from gateway.core.sizes import MAX_PASSWORD_LENGTH, require_password_size
from gateway.core.throttle import WindowCounter

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.]{3,32}$")
MIN_PASSWORD = 8
HOUR = 3600


@dataclass(frozen=True)
class IssuedSession:
    """A new session with its bearer token: the token exists only in this answer (A2)."""

    token: str
    expires_at: datetime
    client_kind: ClientKind


@dataclass(frozen=True)
class Client:
    kind: ClientKind
    name: str | None
    ip_address: str | None


def plausible_token(token: str) -> bool:
    """Session tokens are 43 characters; anything empty or far longer is not looked up."""
    return bool(token) and len(token) <= 128


def username_key(username: str) -> str:
    return username.casefold()


def validate_username(username: str) -> None:
    if not USERNAME_PATTERN.fullmatch(username):
        raise BadUserInput("Usernames have 3 to 32 letters, digits, '_' or '.'.")


def validate_password_shape(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD_LENGTH:
        raise BadUserInput(f"Passwords have {MIN_PASSWORD} to {MAX_PASSWORD_LENGTH} characters.")


@dataclass(frozen=True)
class PasswordAttempt:
    """One password check in flight, for `PasswordGuard` to close."""

    account_key: str
    ip_address: str | None
    id: str
    earlier_failures: int


class PasswordGuard:
    """L3: wrong passwords are throttled per account and per IP in short Redis windows.

    A check starts, atomically with the limit check, as an attempt in flight that counts
    toward the limit until argon2 has answered; it then ends as a failure or not. A read-only
    check followed by a count after the hash let a burst of parallel guesses all pass before
    the first failure was counted (60 sent at once were all tried against the hash). A window
    full only of attempts in flight answers RATE_LIMITED for a second, not its whole life."""

    # An attempt whose process died before ending it stops counting after this.
    IN_FLIGHT_SECONDS = 30

    def __init__(self, counter: WindowCounter, per_account: int, per_ip: int, window: int) -> None:
        self._counter = counter
        self._per_account = per_account
        self._per_ip = per_ip
        self._window = window

    def _keys(self, account_key: str, ip_address: str | None) -> list[str]:
        keys = [f"pw:acct:{account_key}"]
        if ip_address:
            keys.append(f"pw:ip:{throttle_key(ip_address)}")
        return keys

    async def check(self, account_key: str, ip_address: str | None) -> PasswordAttempt:
        """Raises RATE_LIMITED while either window is full (counting nothing); else the
        attempt, which the caller ends with `succeeded` or `failed`."""
        keys = self._keys(account_key, ip_address)
        windows = list(zip(keys, [self._per_account, self._per_ip], strict=False))
        attempt_id = secrets.token_hex(8)
        wait, earlier = await self._counter.begin_attempt(
            windows, attempt_id, self.IN_FLIGHT_SECONDS
        )
        if wait:
            raise RateLimited(wait)
        return PasswordAttempt(account_key, ip_address, attempt_id, earlier)

    async def succeeded(self, attempt: PasswordAttempt) -> None:
        """A right password also clears the account's earlier wrong ones."""
        await self._end(attempt, failed=False, clear=attempt.earlier_failures > 0)

    async def failed(self, attempt: PasswordAttempt) -> None:
        await self._end(attempt, failed=True, clear=False)

    @asynccontextmanager
    async def released_on_error(self, attempt: PasswordAttempt) -> AsyncIterator[None]:
        """Around what follows `check` until the attempt has ended: if it raises (the database
        is down, the request is cancelled), the attempt leaves the window without counting.
        Left in flight, it filled the window for its 30 s, and a user retrying through a
        database outage met RATE_LIMITED for the right password once the database was back.
        Ending an attempt twice is harmless; if Redis is down too, the 30 s do it."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await self._end(attempt, failed=False, clear=False)
            raise

    async def _end(self, attempt: PasswordAttempt, *, failed: bool, clear: bool) -> None:
        await self._counter.end_attempt(
            self._keys(attempt.account_key, attempt.ip_address),
            attempt.id,
            failed=failed,
            clear_first=clear,
            window_seconds=self._window,
        )


@dataclass(frozen=True)
class NewAccount:
    """A sign-up that passed its checks and was hashed, not yet written."""

    username: str
    username_key: str
    password_hash: str


class SignUpWindow:
    """Sign-ups per caller address in an hour-long Redis window (an IPv6 caller per /64).

    Without it one address could create accounts without end: each costs an argon2 hash, and
    each new account brings its own S7 per-account SMS window. A sign-up counts when it is
    admitted, before the username is looked up or the password hashed, so a sign-up refused
    for a taken username has counted: probing which usernames exist is slowed by the same
    window. Input refused by its shape alone (username pattern, password length) is checked
    before and does not count: it cost nothing and told nothing. Like the L3 windows, it fails
    closed (no Redis, no sign-up) and a caller without an address counts in no window."""

    def __init__(self, counter: WindowCounter, per_ip_per_hour: int) -> None:
        self._counter = counter
        self._limit = per_ip_per_hour

    async def admit(self, ip_address: str | None) -> None:
        """Counts one sign-up from `ip_address`, or raises RATE_LIMITED counting nothing."""
        if not ip_address:
            return
        window = (f"signup:ip:{throttle_key(ip_address)}", self._limit, HOUR)
        wait = await self._counter.admit_all([window])
        if wait:
            raise RateLimited(wait, "Too many sign-ups from this address; try again later.")


class AccountService:
    def __init__(
        self,
        passwords: Passwords,
        guard: PasswordGuard,
        signups: SignUpWindow,
        session_ttl: timedelta,
        reauth_window: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self.passwords = passwords
        self.guard = guard
        self._signups = signups
        self._session_ttl = session_ttl
        self._reauth_window = reauth_window
        self._clock = clock

    async def sign_up(self, username: str, password: str, *, ip_address: str | None = None) -> User:
        """A1: `prepare_sign_up` then `create_account`, for callers already in a unit of work
        or outside any (seeding scripts)."""
        return await self.create_account(
            await self.prepare_sign_up(username, password, ip_address=ip_address)
        )

    async def prepare_sign_up(
        self, username: str, password: str, *, ip_address: str | None = None
    ) -> NewAccount:
        """A1: everything before the write, run before the unit of work opens so a pooled
        connection is not held in a transaction while the hash waits for a core (as login's
        `check_password`). Raises BAD_USER_INPUT, RATE_LIMITED (`SignUpWindow`: checked before
        anything is looked up or hashed) or USERNAME_TAKEN. `ip_address` is the caller's; None
        (seeding scripts) counts nowhere."""
        validate_username(username)
        validate_password_shape(password)
        await self._signups.admit(ip_address)
        key = username_key(username)
        if await User.exists(username_key=key):
            raise UsernameTaken()
        return NewAccount(username, key, await self.passwords.hash(password))

    async def create_account(self, account: NewAccount) -> User:
        """A1: the write. USERNAME_TAKEN when another sign-up took the name meanwhile."""
        try:
            return await User.create(
                username=account.username,
                username_key=account.username_key,
                password_hash=account.password_hash,
            )
        except IntegrityError as exc:
            raise UsernameTaken() from exc

    async def find_user(self, username: str) -> User | None:
        if len(username) > 64:
            return None
        return await User.get_or_none(username_key=username_key(username))

    async def issue_session(
        self, user_id: UUID, client: Client, *, password_proved: bool
    ) -> IssuedSession:
        """A2: an opaque random bearer token, stored only as its hash."""
        proved_at = self._clock() if password_proved else None
        row, issued = self.new_session(user_id, client, password_proved_at=proved_at)
        await row.save()
        return issued

    def new_session(
        self, user_id: UUID, client: Client, *, password_proved_at: datetime | None
    ) -> tuple[Session, IssuedSession]:
        """The unsaved row and the answer, for callers that write the row together with other
        changes (one round trip at the end of a login). `password_proved_at` starts the A3
        window: when the password was checked, which for a login completed through a
        challenge is when the challenge opened, not when it completed."""
        now = self._clock()
        token = new_token()
        expires_at = now + self._session_ttl
        row = Session(
            id=uuid4(),
            user_id=user_id,
            token_hash=token_digest(token),
            client_kind=client.kind,
            client_name=client.name,
            password_verified_at=password_proved_at,
            created_at=now,
            expires_at=expires_at,
        )
        return row, IssuedSession(token=token, expires_at=expires_at, client_kind=client.kind)

    async def session_for_token(self, token: str) -> Session | None:
        """A valid (known, unrevoked, unexpired) session with its user, else None."""
        if not plausible_token(token):
            return None
        return self.usable(await session_with_user(token_digest(token)))

    def usable(self, session: Session | None) -> Session | None:
        """The session if it is unrevoked and unexpired, else None."""
        if session is None or session.revoked_at is not None:
            return None
        return session if session.expires_at > self._clock() else None

    async def still_valid(self, session_id: UUID) -> bool:
        return await Session.exists(
            id=session_id, revoked_at__isnull=True, expires_at__gt=self._clock()
        )

    async def logout(self, session: Session) -> bool:
        changed = await Session.filter(id=session.id, revoked_at__isnull=True).update(
            revoked_at=self._clock()
        )
        return changed == 1

    async def reauthenticate(self, session: Session, password: str, ip_address: str | None) -> None:
        """A3: proving the password again opens the recent-authentication window. Raises
        BAD_USER_INPUT for an oversize password (G2, not counted), INVALID_CREDENTIALS."""
        require_password_size(password)
        user = session.user
        attempt = await self.guard.check(user.username_key, ip_address)
        async with self.guard.released_on_error(attempt):
            if not await self.passwords.verify(user.password_hash, password):
                await self.guard.failed(attempt)
                raise InvalidCredentials("The password is incorrect.")
            await self.guard.succeeded(attempt)
        await Session.filter(id=session.id).update(password_verified_at=self._clock())

    def require_recent_auth(self, session: Session) -> None:
        """A3: sensitive changes need the password proved within the window."""
        proved = session.password_verified_at
        if proved is None or self._clock() - proved > self._reauth_window:
            raise ReauthenticationRequired()
