"""The SMS channel of the notice port."""

from __future__ import annotations

from uuid import UUID

from gateway.core.notices import NOTICE_TEXT, Notice
from gateway.core.uow import UnitOfWork
from gateway.factors.sms.service import SmsService


class SmsNoticeChannel:
    def __init__(self, sms: SmsService) -> None:
        self._sms = sms

    async def send(
        self, user_id: UUID, notice: Notice, work: UnitOfWork, *, number: str | None = None
    ) -> bool:
        """Goes to the given number (a phone just removed) or the account's active phone."""
        target = number or await self._sms.sms_ready_number(user_id)
        if target is None:
            return False
        await self._sms.queue_text(user_id, target, NOTICE_TEXT[notice], notice.value, work)
        return True
