"""O1, H1 "contact support": an operator resets a user's 2FA after an identity check.

The reset is one transaction with the user row locked: every method goes (authenticator, phone,
devices), backup codes and the temporary password stop working, every session is revoked, and
the user is told on the phone that was on the account. The ticket and the operator are kept in
the `support.two_factor_reset` security event, which the user sees in their history (F3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from gateway.accounts.models import Session, User
from gateway.accounts.store import lock_user
from gateway.container import Services
from gateway.core import audit
from gateway.core.errors import BadUserInput, NotFound
from gateway.core.events import user_channel
from gateway.core.uow import UnitOfWork
from gateway.factors.sms.phones import mask

log = logging.getLogger(__name__)

MAX_TICKET = 64
MAX_OPERATOR = 64
MAX_DETAIL = 255
EVENT_KIND = "support.two_factor_reset"
REASON = "support_reset"


class UnknownUser(NotFound):
    default_message = "No account has that username."


def clean_ticket(text: str) -> str:
    """O1: a ticket reference is required: 1 to 64 printable characters."""
    ticket = text.strip()
    if not 1 <= len(ticket) <= MAX_TICKET or not ticket.isprintable():
        raise BadUserInput(f"A ticket reference has 1 to {MAX_TICKET} printable characters.")
    return ticket


def clean_operator(text: str) -> str:
    operator = text.strip()
    if not 1 <= len(operator) <= MAX_OPERATOR or not operator.isprintable():
        raise BadUserInput(f"An operator name has 1 to {MAX_OPERATOR} printable characters.")
    return operator


@dataclass(frozen=True)
class ResetRequest:
    username: str
    ticket: str
    operator: str
    reason: str | None = None

    def detail(self) -> str:
        """The event's detail: ticket and operator always fit; a long reason is cut."""
        text = f"ticket={self.ticket} operator={self.operator}"
        reason = " ".join((self.reason or "").split())
        if reason:
            text = f"{text} reason={reason}"
        return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


@dataclass(frozen=True)
class ResetReport:
    user_id: UUID
    username: str
    two_factor_was_enabled: bool
    totp_removed: bool
    phone_removed: bool
    # The verified number that was removed (masked), which the notice goes to.
    masked_phone: str | None
    devices_removed: int
    backup_codes_invalidated: int
    temporary_password_revoked: bool
    sessions_revoked: int


async def reset_two_factor(services: Services, request: ResetRequest) -> ResetReport:
    """O1, H1: turns 2FA off and removes every method of the account, in one transaction.

    Raises UnknownUser (NOT_FOUND) when no account has the username, BadUserInput for an empty
    or over-long ticket or operator."""
    request = ResetRequest(
        request.username,
        clean_ticket(request.ticket),
        clean_operator(request.operator),
        request.reason,
    )
    async with services.uow() as work:
        found = await services.accounts.find_user(request.username)
        if found is None:
            raise UnknownUser()
        user = await lock_user(found.id)
        report = await _reset(services, user, request, work)
    log.info(
        "two-factor reset by support",
        extra={"user_id": str(user.id), "ticket": request.ticket, "operator": request.operator},
    )
    return report


async def _reset(
    services: Services, user: User, request: ResetRequest, work: UnitOfWork
) -> ResetReport:
    devices = await services.push.devices(user.id)
    for device in devices:
        await services.push.remove_device(device)
    had_phone = await services.sms.phone(user.id) is not None
    removed_number = await services.sms.remove_phone(user.id)
    totp_removed = await services.totp.remove(user.id)
    if totp_removed:
        await audit.record(user.id, "totp.removed")
    temporary = await services.temporary_passwords.expires_at(user.id) is not None
    await services.temporary_passwords.revoke(user.id)
    invalidated = await services.backup_codes.invalidate_all(user.id, work, reason=REASON)
    # To the number that was on the account: whoever asked support, the owner hears of it.
    was_enabled = await services.security.turn_off(
        user.id, work, reason=REASON, notify_number=removed_number
    )
    sessions = await Session.filter(user_id=user.id, revoked_at__isnull=True).update(
        revoked_at=services.clock()
    )
    await audit.record(user.id, EVENT_KIND, detail=request.detail())
    work.signal(user_channel(user.id))
    return ResetReport(
        user_id=user.id,
        username=user.username,
        two_factor_was_enabled=was_enabled,
        totp_removed=totp_removed,
        phone_removed=had_phone,
        masked_phone=mask(removed_number) if removed_number else None,
        devices_removed=len(devices),
        backup_codes_invalidated=invalidated,
        temporary_password_revoked=temporary,
        sessions_revoked=sessions,
    )
