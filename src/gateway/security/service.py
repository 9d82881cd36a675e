"""Two-factor state and the settings page (F1, F2, A3, B1, S6/P7's "last method" rule)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from gateway.accounts.models import Session, User
from gateway.accounts.service import AccountService, plausible_token
from gateway.accounts.store import lock_user, session_from_row, session_with_user_sql
from gateway.core import audit, code_throttle, sql
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import token_digest
from gateway.core.errors import BadUserInput, InvalidCode, MethodNotAvailable
from gateway.core.events import challenge_channel
from gateway.core.notices import Notice, notice_job
from gateway.core.outcome import Outcome
from gateway.core.sizes import require_code_size
from gateway.core.uow import UnitOfWork
from gateway.factors.backup_codes.service import BackupCodeService, IssuedBackupCode
from gateway.factors.base import METHOD_ORDER, PRIMARY_METHODS, TwoFactorMethod
from gateway.factors.push.models import Device, Platform
from gateway.factors.push.service import Enrollment, PushService
from gateway.factors.sms.service import PhoneView, SmsService, phone_view
from gateway.factors.summary import (
    MethodSummary,
    method_summary,
    summary_columns,
    summary_from_row,
)
from gateway.factors.temporary_passwords.service import (
    IssuedTemporaryPassword,
    TemporaryPasswordService,
)
from gateway.factors.totp.service import TotpEnrollment, TotpService
from gateway.login import store as login_store


class SettingsView:
    """F2: what the account has, never a secret or a code. The methods come from one summary
    query; the phone, the devices and the temporary password are read only when asked for."""

    def __init__(self, user_id: UUID, summary: MethodSummary, security: SecurityService) -> None:
        self.user_id = user_id
        self.summary = summary
        self._security = security

    @property
    def two_factor_enabled(self) -> bool:
        return self.summary.two_factor_enabled

    @property
    def totp_enabled(self) -> bool:
        return self.summary.totp

    @property
    def backup_codes_active(self) -> int:
        return self.summary.backup_codes_active

    @property
    def methods(self) -> list[TwoFactorMethod]:
        """What a login can offer now. A device whose push FCM refused (P9) still keeps 2FA on
        and shows login codes, but PUSH waits for a new push token, as at login."""
        has = methods_of(self.summary)
        if not self.summary.pushable:
            has.discard(TwoFactorMethod.PUSH)
        if self.summary.backup_codes_active:
            has.add(TwoFactorMethod.BACKUP_CODE)
        return [m for m in METHOD_ORDER if m in has]

    async def phone(self) -> PhoneView | None:
        return phone_view(await self._security.sms.phone(self.user_id))

    async def devices(self) -> list[Device]:
        return await self._security.push.devices(self.user_id)

    async def temporary_password_expires_at(self) -> datetime | None:
        return await self._security.temporary.expires_at(self.user_id)


def methods_of(summary: MethodSummary) -> set[TwoFactorMethod]:
    found: set[TwoFactorMethod] = set()
    if summary.totp:
        found.add(TwoFactorMethod.TOTP)
    if summary.phone_verified:
        found.add(TwoFactorMethod.SMS)
    if summary.devices:
        # An enrolled device keeps 2FA on even while FCM cannot reach it: it still answers
        # over the subscription and the list, and shows login codes (P3, P8).
        found.update({TwoFactorMethod.PUSH, TwoFactorMethod.APP_CODE})
    return found


@dataclass(frozen=True)
class SettingsChange:
    settings: SettingsView
    two_factor_disabled: bool


_SESSION_WITH_SUMMARY = sql.statement(lambda: session_with_user_sql(summary_columns('u."id"')))


class SecurityService:
    def __init__(
        self,
        accounts: AccountService,
        totp: TotpService,
        backup_codes: BackupCodeService,
        temporary_passwords: TemporaryPasswordService,
        sms: SmsService,
        push: PushService,
        clock: Clock = utc_now,
    ) -> None:
        self._accounts = accounts
        self._sms = sms
        self._push = push
        self._clock = clock
        self._totp = totp
        self._backup = backup_codes
        self._temporary = temporary_passwords

    @property
    def sms(self) -> SmsService:
        return self._sms

    @property
    def push(self) -> PushService:
        return self._push

    @property
    def temporary(self) -> TemporaryPasswordService:
        return self._temporary

    async def settings(self, user_id: UUID) -> SettingsView:
        """F2."""
        return SettingsView(user_id, await method_summary(user_id), self)

    async def session_with_settings(self, token: str) -> tuple[Session, SettingsView] | None:
        """G4 and F2 in one round trip, for `viewer { securitySettings }`: the session lookup
        every authenticated request makes, with the summary the settings page shows."""
        if not plausible_token(token):
            return None
        rows = await sql.fetch_rows(_SESSION_WITH_SUMMARY(), [token_digest(token)])
        session = self._accounts.usable(session_from_row(rows[0])) if rows else None
        if session is None:
            return None
        summary = summary_from_row(session.user.two_factor_enabled, rows[0])
        return session, SettingsView(session.user.id, summary, self)

    async def primary_methods(self, user_id: UUID) -> set[TwoFactorMethod]:
        """What keeps 2FA on: a verified phone, a confirmed authenticator, a push device."""
        return methods_of(await method_summary(user_id)) & PRIMARY_METHODS

    async def add_phone(
        self,
        session: Session,
        number: str,
        carrier: str | None,
        ip_address: str | None,
        work: UnitOfWork,
    ) -> PhoneView:
        """S1, A3: a number that would replace a verified one asks for a recent password
        before any code is sent to it."""
        user_id = session.user.id
        if await self._sms.verified_number(user_id) is not None:
            self._accounts.require_recent_auth(session)
        return await self._sms.add_phone(user_id, number, carrier, ip_address, work)

    async def verify_phone(
        self, session: Session, code: str, work: UnitOfWork
    ) -> Outcome[PhoneView]:
        """S1, F5, A3: a wrong code counts toward the SMS back-off and is committed as such.
        Replacing a verified number removes it: that needs a recent password, is recorded,
        and the old number hears of it (a stolen session must not move 2FA to its phone).
        G2: an oversize code is BAD_USER_INPUT and counts nothing."""
        require_code_size(code)
        user_id = session.user.id
        await lock_user(user_id)
        phone = await self._sms.phone(user_id)
        replaced = None
        if phone is not None and phone.verified_at is not None:
            self._accounts.require_recent_auth(session)
            if phone.pending_number != phone.number:
                replaced = phone.number
        now = self._clock()
        counter = await code_throttle.check(user_id, TwoFactorMethod.SMS.value, now)
        try:
            view = await self._sms.verify_phone(user_id, code)
        except InvalidCode as exc:
            await code_throttle.failed(user_id, TwoFactorMethod.SMS.value, now, counter)
            return Outcome(error=exc)
        await code_throttle.succeeded(counter)
        if replaced is not None:
            await work.enqueue(notice_job(user_id, Notice.PHONE_REMOVED, replaced))
        return Outcome(value=view)

    async def enroll_device(
        self, session: Session, name: str, platform: Platform, push_token: str, public_key: str
    ) -> Enrollment:
        """P1; A3 when the session's device is replaced by a new key: a stolen app session
        must not swap in a key of its own without the password."""
        await lock_user(session.user.id)
        if await self._push.device_of_session(session) is not None:
            self._accounts.require_recent_auth(session)
        return await self._push.enroll(session, name, platform, push_token, public_key)

    async def remove_device(
        self, session: Session, device_id: str, work: UnitOfWork
    ) -> SettingsChange:
        """P7, A3: removing the last method turns 2FA off."""
        self._accounts.require_recent_auth(session)
        user_id = session.user.id
        await lock_user(user_id)
        device = await self._push.owned_device(user_id, device_id)
        await self._push.remove_device(device)
        disabled = await self._after_method_removed(user_id, work)
        return SettingsChange(await self.settings(user_id), disabled)

    async def logout(self, session: Session, work: UnitOfWork) -> bool:
        """A2, P7, H5: logging out of an enrolled device's session ends its enrollment, and
        2FA turns off when no other method is left."""
        await lock_user(session.user.id)
        revoked = await self._accounts.logout(session)
        device = await self._push.device_of_session(session)
        if device is not None:
            await self._push.remove_device(device)
            await self._after_method_removed(session.user.id, work)
        return revoked

    async def remove_phone(self, session: Session, work: UnitOfWork) -> SettingsChange:
        """S6, H1, A3: without the phone, an account whose only method was SMS has 2FA off."""
        self._accounts.require_recent_auth(session)
        user_id = session.user.id
        await lock_user(user_id)
        if await self._sms.phone(user_id) is None:
            raise MethodNotAvailable("No phone is registered.")
        number = await self._sms.remove_phone(user_id)
        if number is not None:
            await work.enqueue(notice_job(user_id, Notice.PHONE_REMOVED, number))
        disabled = await self._after_method_removed(user_id, work)
        return SettingsChange(await self.settings(user_id), disabled)

    async def begin_totp(self, session: Session) -> TotpEnrollment:
        """T1, A3: a new secret that would replace a confirmed one asks for a recent password
        first."""
        if (await method_summary(session.user.id)).totp:
            self._accounts.require_recent_auth(session)
        return await self._totp.begin(session.user.id, session.user.username)

    async def confirm_totp(self, session: Session, code: str) -> SettingsView:
        """T1: TOTP is on once a code from the new secret is accepted. A3: confirming a new
        secret removes the old one, so it needs a recent password and is recorded as such.
        G2: an oversize code is BAD_USER_INPUT, as at login."""
        require_code_size(code)
        user_id = session.user.id
        await lock_user(user_id)
        replacing = (await method_summary(user_id)).totp
        if replacing:
            self._accounts.require_recent_auth(session)
        await self._totp.confirm(user_id, code)
        if replacing:
            await audit.record(user_id, "totp.removed", detail="replaced")
        await audit.record(user_id, "totp.enabled")
        return await self.settings(user_id)

    async def remove_totp(self, session: Session, work: UnitOfWork) -> SettingsChange:
        """A3; when TOTP was the last primary method, 2FA turns off with it."""
        self._accounts.require_recent_auth(session)
        user_id = session.user.id
        await lock_user(user_id)
        if not await self._totp.remove(user_id):
            raise MethodNotAvailable("No authenticator is enrolled.")
        await audit.record(user_id, "totp.removed")
        disabled = await self._after_method_removed(user_id, work)
        return SettingsChange(await self.settings(user_id), disabled)

    async def enable(
        self, session: Session, work: UnitOfWork
    ) -> tuple[SettingsView, IssuedBackupCode]:
        """F1, B1: needs a verified primary method; answers with the first backup code."""
        user = await lock_user(session.user.id)
        if user.two_factor_enabled:
            raise BadUserInput("Two-factor authentication is already on.")
        if not await self.primary_methods(user.id):
            raise MethodNotAvailable("Verify a phone, an authenticator or a device first.")
        await User.filter(id=user.id).update(two_factor_enabled=True)
        await audit.record(user.id, "two_factor.enabled")
        code = await self._backup.issue_next(user.id)
        return await self.settings(user.id), code

    async def disable(self, session: Session, work: UnitOfWork) -> SettingsView:
        """F1, A3: turning 2FA off invalidates the backup codes."""
        self._accounts.require_recent_auth(session)
        await lock_user(session.user.id)
        await self.turn_off(session.user.id, work, reason="user")
        return await self.settings(session.user.id)

    async def new_backup_code(self, session: Session) -> IssuedBackupCode:
        """B2: only while 2FA is on; at most 5 active."""
        user = await lock_user(session.user.id)
        if not user.two_factor_enabled:
            raise MethodNotAvailable("Turn two-factor authentication on first.")
        return await self._backup.issue_next(user.id)

    async def create_temporary_password(self, session: Session) -> IssuedTemporaryPassword:
        """L6, A3."""
        self._accounts.require_recent_auth(session)
        issued = await self._temporary.create(session.user.id)
        await audit.record(session.user.id, "temporary_password.created")
        return issued

    async def _after_method_removed(self, user_id: UUID, work: UnitOfWork) -> bool:
        user = await User.get(id=user_id)
        if user.two_factor_enabled and not await self.primary_methods(user_id):
            await self.turn_off(user_id, work, reason="last_method_removed")
            return True
        await self._narrow_open_challenges(user_id, work)
        return False

    async def _narrow_open_challenges(self, user_id: UUID, work: UnitOfWork) -> None:
        """L5: a code of a method the account no longer has completes no challenge, not even
        one opened before the method went; the waiting clients hear of their new methods, and
        a login request no device is left to answer expires."""
        summary = await method_summary(user_id)
        usable = {method.value for method in methods_of(summary)}
        if summary.backup_codes_active:
            usable.add(TwoFactorMethod.BACKUP_CODE.value)
        dropped = await login_store.narrow_pending(user_id, usable, self._clock())
        for challenge_id, methods in dropped.items():
            if TwoFactorMethod.PUSH.value in methods:
                await self._push.close_for_challenge(challenge_id, work)
            work.signal(challenge_channel(challenge_id))

    async def turn_off(
        self, user_id: UUID, work: UnitOfWork, *, reason: str, notify_number: str | None = None
    ) -> bool:
        """F1: 2FA off, backup codes invalidated, an event, and a notice (to `notify_number`
        when the phone that should hear of it was just removed); open challenges keep only
        what can still complete them. Returns whether it was on. The caller holds the user's
        row lock."""
        changed = await User.filter(id=user_id, two_factor_enabled=True).update(
            two_factor_enabled=False
        )
        if changed:
            await self._backup.invalidate_all(user_id, work, reason="two_factor_disabled")
            await audit.record(user_id, "two_factor.disabled", detail=reason)
            await work.enqueue(notice_job(user_id, Notice.TWO_FACTOR_DISABLED, notify_number))
        await self._narrow_open_challenges(user_id, work)
        return bool(changed)
