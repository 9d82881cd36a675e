"""The push port (P2, P10): what the fan-out asks of a provider, and what it hears back.
`workers.adapters.fcm` implements it with firebase-admin; without FCM settings nothing is
pushed and apps still learn of requests over the subscription and the list (P3)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from uuid import UUID

MAX_BATCH = 500


class PushOutcome(StrEnum):
    SENT = "sent"
    # The token is dead: switch the device's push off (shown in settings).
    UNREGISTERED = "unregistered"
    SENDER_ID_MISMATCH = "sender_id_mismatch"
    # QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL: try this device again later.
    RETRY = "retry"
    # Anything else (a payload or configuration error): not sent twice.
    FAILED = "failed"


@dataclass(frozen=True)
class PushMessage:
    """Only the type and the request id ride on the push; the app fetches the rest (P10)."""

    device_id: UUID
    token: str
    request_id: str
    ttl_seconds: int


@dataclass(frozen=True)
class PushResult:
    device_id: UUID
    outcome: PushOutcome
    detail: str | None = None


class PushSender(Protocol):
    async def send(self, messages: list[PushMessage]) -> list[PushResult]:
        """Sends at most MAX_BATCH messages; one result per message, in order."""
        ...


class NoPushSender:
    """Used when FCM is not configured."""

    async def send(self, messages: list[PushMessage]) -> list[PushResult]:
        return [PushResult(m.device_id, PushOutcome.FAILED, "fcm_not_configured") for m in messages]
