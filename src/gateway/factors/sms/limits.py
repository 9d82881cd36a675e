"""S7 anti-abuse (SMS pumping): send limits per number, number block, account, IP and
globally, checked before a message is created. They fail closed: if Redis cannot count, no SMS
is sent.

Codes to a number nobody has proved yet (`addPhone`) and login codes to an account's verified
number count in separate number and IP windows. Anyone can ask for the first kind to any
number; if both shared them, twenty `addPhone` calls next to a victim's number would fill its
block and number windows and take away the victim's SMS login for an hour. Login codes go only
to a number its account proved, at a login that proved the password, so a stranger cannot fill
their windows. The block window guards against pumping through ranges of numbers, which needs
the first kind: each number must be verified before a login code can go to it. The account and
global windows count both."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from uuid import UUID

from redis.exceptions import RedisError

from gateway.core.addresses import throttle_key
from gateway.core.errors import RateLimited, ServiceUnavailable
from gateway.core.throttle import WindowCounter
from gateway.factors.sms.phones import ParsedNumber

HOUR = 3600
MINUTE = 60


class SendPurpose(Enum):
    VERIFY_NUMBER = "verify"
    LOGIN_CODE = "login"


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
        self, number: ParsedNumber, user_id: UUID | None, ip: str | None, purpose: SendPurpose
    ) -> list[tuple[str, int, int]]:
        limits = self._limits
        if purpose is SendPurpose.VERIFY_NUMBER:
            scope = "sms"
            windows = [
                (f"{scope}:num:{number.e164}", limits.per_number_per_hour, HOUR),
                (f"sms:block:{number.block}", limits.per_block_per_hour, HOUR),
            ]
        else:
            scope = "sms:login"
            windows = [(f"{scope}:num:{number.e164}", limits.per_number_per_hour, HOUR)]
        windows.append(("sms:global", limits.global_per_minute, MINUTE))
        if user_id is not None:
            windows.append((f"sms:acct:{user_id}", limits.per_account_per_hour, HOUR))
        if ip:
            windows.append((f"{scope}:ip:{throttle_key(ip)}", limits.per_ip_per_hour, HOUR))
        return windows

    async def admit(
        self, number: ParsedNumber, user_id: UUID | None, ip: str | None, purpose: SendPurpose
    ) -> None:
        """Counts one send against every window, or raises RATE_LIMITED without counting."""
        try:
            wait = await self._counter.admit_all(self._windows(number, user_id, ip, purpose))
        except RedisError as exc:
            raise ServiceUnavailable("Text messages are unavailable right now.") from exc
        if wait:
            raise RateLimited(wait, "Too many text messages; try again later.")

    async def login_code_wait(self, number: ParsedNumber, user_id: UUID, ip: str | None) -> int:
        """The seconds until a login code to `number` for `user_id`, asked from `ip`, would
        pass the limits (0: now); counts nothing."""
        windows = self._windows(number, user_id, ip, SendPurpose.LOGIN_CODE)
        try:
            return await self._counter.wait(windows)
        except RedisError as exc:
            raise ServiceUnavailable("Text messages are unavailable right now.") from exc
