"""S7 anti-abuse (SMS pumping): send limits per number, number block, account, IP and
globally, checked before a message is created. They fail closed: if Redis cannot count, no SMS
is sent."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from redis.exceptions import RedisError

from gateway.core.errors import RateLimited, ServiceUnavailable
from gateway.core.throttle import WindowCounter
from gateway.factors.sms.phones import ParsedNumber

HOUR = 3600
MINUTE = 60


@dataclass(frozen=True)
class SendLimits:
    per_number_per_hour: int
    per_block_per_hour: int
    per_account_per_hour: int
    per_ip_per_hour: int
    global_per_minute: int
    allowed_country_codes: frozenset[int]


class SendGuard:
    def __init__(self, counter: WindowCounter, limits: SendLimits) -> None:
        self._counter = counter
        self._limits = limits

    def country_allowed(self, number: ParsedNumber) -> bool:
        allowed = self._limits.allowed_country_codes
        return not allowed or number.country_code in allowed

    def _windows(
        self, number: ParsedNumber, user_id: UUID | None, ip: str | None
    ) -> list[tuple[str, int, int]]:
        windows = [
            (f"sms:num:{number.e164}", self._limits.per_number_per_hour, HOUR),
            (f"sms:block:{number.block}", self._limits.per_block_per_hour, HOUR),
            ("sms:global", self._limits.global_per_minute, MINUTE),
        ]
        if user_id is not None:
            windows.append((f"sms:acct:{user_id}", self._limits.per_account_per_hour, HOUR))
        if ip:
            windows.append((f"sms:ip:{ip}", self._limits.per_ip_per_hour, HOUR))
        return windows

    async def admit(self, number: ParsedNumber, user_id: UUID | None, ip: str | None) -> None:
        """Counts one send against every window, or raises RATE_LIMITED without counting."""
        try:
            wait = await self._counter.admit_all(self._windows(number, user_id, ip))
        except RedisError as exc:
            raise ServiceUnavailable("Text messages are unavailable right now.") from exc
        if wait:
            raise RateLimited(wait, "Too many text messages; try again later.")

    async def wait(self, number: ParsedNumber, user_id: UUID) -> int:
        """The seconds until a send to `number` for `user_id` would pass the limits that do not
        depend on the caller's address (0: now); counts nothing."""
        try:
            return await self._counter.wait(self._windows(number, user_id, None))
        except RedisError as exc:
            raise ServiceUnavailable("Text messages are unavailable right now.") from exc
