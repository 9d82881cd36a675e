"""The notice port: tells a user about a security change on the channels they have.

Channels (SMS now, push later) queue their own messages in the caller's unit of work. The log
line names the notice kind and how many channels took it, never a number or a code.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from gateway.core.jobs import JOB_NOTICE_SEND, QUEUE_MAINTENANCE, JobRequest
from gateway.core.uow import UnitOfWork

log = logging.getLogger(__name__)


class Notice(StrEnum):
    BACKUP_CODES_INVALIDATED = "backup_codes_invalidated"
    TWO_FACTOR_DISABLED = "two_factor_disabled"
    PHONE_REMOVED = "phone_removed"
    PUSH_PAUSED = "push_paused"


NOTICE_TEXT = {
    Notice.BACKUP_CODES_INVALIDATED: (
        "Kanmon: your backup codes were invalidated because one was used out of order. "
        "Get a new one in Settings > Account > Security > Backup code."
    ),
    Notice.TWO_FACTOR_DISABLED: (
        "Kanmon: login verification was turned off for your account. "
        "If this wasn't you, change your password and contact support."
    ),
    Notice.PHONE_REMOVED: (
        "Kanmon: this number was removed from your account's login verification."
    ),
    Notice.PUSH_PAUSED: (
        # The count and the pause are settings (P10): the text names neither.
        "Kanmon: several login requests in a row were denied or ignored, so push approvals "
        "are paused for a while. If those weren't you, change your password."
    ),
}


class NoticeChannel(Protocol):
    async def send(
        self, user_id: UUID, notice: Notice, work: UnitOfWork, *, number: str | None = None
    ) -> bool:
        """Queues the notice on this channel; returns whether the user has the channel."""
        ...


class Notifier:
    def __init__(self, channels: list[NoticeChannel]) -> None:
        self._channels = channels

    async def notify(
        self, user_id: UUID, notice: Notice, work: UnitOfWork, *, number: str | None = None
    ) -> int:
        reached = 0
        for channel in self._channels:
            if await channel.send(user_id, notice, work, number=number):
                reached += 1
        log.info("notice queued", extra={"notice": notice.value, "channels": reached})
        return reached


def notice_job(user_id: UUID, notice: Notice, number: str | None = None) -> JobRequest:
    """The `notices.send` job: notices go out after commit, from the maintenance pool."""
    payload = {"user_id": str(user_id), "notice": notice.value}
    if number is not None:
        payload["number"] = number
    return JobRequest(name=JOB_NOTICE_SEND, queue=QUEUE_MAINTENANCE, payload=payload)
