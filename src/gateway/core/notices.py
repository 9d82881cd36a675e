"""The notice port: tells a user about a security change on the channels they have.

The SMS and push features add channels; until then notices are recorded in the log (by kind
only: the logging policy forbids codes, secrets, numbers and tokens).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Protocol
from uuid import UUID

log = logging.getLogger(__name__)


class Notice(StrEnum):
    BACKUP_CODES_INVALIDATED = "backup_codes_invalidated"
    TWO_FACTOR_DISABLED = "two_factor_disabled"
    PHONE_REMOVED = "phone_removed"


class NoticeChannel(Protocol):
    async def send(self, user_id: UUID, notice: Notice) -> bool:
        """Returns whether the user was reached on this channel."""
        ...


class Notifier:
    def __init__(self, channels: list[NoticeChannel]) -> None:
        self._channels = channels

    async def notify(self, user_id: UUID, notice: Notice) -> int:
        reached = 0
        for channel in self._channels:
            if await channel.send(user_id, notice):
                reached += 1
        log.info("notice sent", extra={"notice": notice.value, "channels_reached": reached})
        return reached
