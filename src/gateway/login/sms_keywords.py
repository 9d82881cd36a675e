"""Inbound SMS keywords to the short code (S5, H9): GO/START resumes, STOP/OFF pauses, HELP
helps; anything else gets a polite answer and changes nothing. Keyword spellings and replies
are data, so a carrier's quirk is a new row, not new code."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from gateway.core.clock import Clock, utc_now
from gateway.core.events import challenge_channel
from gateway.core.uow import UnitOfWork
from gateway.factors.base import TwoFactorMethod, with_method
from gateway.factors.sms import phones
from gateway.factors.sms.phones import InvalidPhoneNumber
from gateway.factors.sms.service import SmsService
from gateway.login.models import ChallengeStatus, LoginChallenge


class Keyword(StrEnum):
    RESUME = "resume"
    PAUSE = "pause"
    HELP = "help"


KEYWORDS = {
    "GO": Keyword.RESUME,
    "START": Keyword.RESUME,
    "UNSTOP": Keyword.RESUME,
    "YES": Keyword.RESUME,
    "STOP": Keyword.PAUSE,
    "OFF": Keyword.PAUSE,
    "STOPALL": Keyword.PAUSE,
    "UNSUBSCRIBE": Keyword.PAUSE,
    "CANCEL": Keyword.PAUSE,
    "END": Keyword.PAUSE,
    "QUIT": Keyword.PAUSE,
    "HELP": Keyword.HELP,
    "INFO": Keyword.HELP,
}

REPLIES = {
    Keyword.RESUME: "Kanmon: text messages are on again for this number. Reply STOP to pause.",
    Keyword.PAUSE: "Kanmon: you won't get text messages from us. Reply GO to turn them back on.",
    Keyword.HELP: (
        "Kanmon login verification. Reply GO to get texts, STOP to pause them. "
        "Lost your phone? Log in with a backup code or contact support."
    ),
}
UNKNOWN_SENDER = "Kanmon: this number isn't linked to an account. Add it in your security settings."
UNKNOWN_WORD = "Kanmon: sorry, we didn't understand. Reply HELP for help, GO or STOP."


@dataclass(frozen=True)
class InboundSms:
    sender: str
    body: str


class SmsKeywords:
    def __init__(self, sms: SmsService, clock: Clock = utc_now) -> None:
        self._sms = sms
        self._clock = clock

    async def handle(self, message: InboundSms, work: UnitOfWork) -> str:
        """Returns the reply text."""
        try:
            number = phones.parse(message.sender).e164
        except InvalidPhoneNumber:
            return UNKNOWN_SENDER
        users = await self._sms.registered_number_users(number)
        if not users:
            return UNKNOWN_SENDER
        words = message.body.strip().split()
        keyword = KEYWORDS.get(words[0].upper()) if words else None
        if keyword is None:
            return UNKNOWN_WORD
        if keyword is Keyword.PAUSE:
            await self._sms.set_paused(number, paused=True)
        elif keyword is Keyword.RESUME:
            await self._sms.set_paused(number, paused=False)
            for user_id in users:
                await self._resend(user_id, number, work)
        return REPLIES[keyword]

    async def _resend(self, user_id: UUID, number: str, work: UnitOfWork) -> None:
        """H9: GO resends the latest unexpired code of the newest waiting challenge unchanged,
        or sends its first one if none was sent: the user is looking at their newest login,
        and a code of an older one would not complete it."""
        waiting = await LoginChallenge.filter(
            user_id=user_id, status=ChallengeStatus.PENDING, expires_at__gt=self._clock()
        ).order_by("-created_at")
        if not waiting:
            return
        challenge = waiting[0]
        if await self._sms.resend_latest(user_id, number, challenge.id, work):
            return
        if TwoFactorMethod.SMS.value not in challenge.methods:
            challenge.methods = with_method(challenge.methods, TwoFactorMethod.SMS)
            await challenge.save(update_fields=["methods"])
            work.signal(challenge_channel(challenge.id))  # the page now offers SMS
        await self._sms.start_challenge(
            user_id, challenge.id, number, challenge.expires_at, None, work
        )
