"""Temporary passwords (L6, H2, H7): for third-party apps and for app re-login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.factors.temporary_passwords import codes
from gateway.factors.temporary_passwords.models import TemporaryPassword


@dataclass(frozen=True)
class IssuedTemporaryPassword:
    password: str
    expires_at: datetime


class TemporaryPasswordService:
    def __init__(self, box: SecretBox, ttl: timedelta, clock: Clock = utc_now) -> None:
        self._box = box
        self._ttl = ttl
        self._clock = clock

    async def create(self, user_id: UUID) -> IssuedTemporaryPassword:
        """L6: a new password replaces the account's previous one; valid for 60 minutes."""
        password = codes.new_password()
        normalized = codes.normalize(password)
        assert normalized is not None
        expires_at = self._clock() + self._ttl
        await TemporaryPassword.update_or_create(
            user_id=user_id,
            defaults={
                "password_hash": self._box.keyed_hash(normalized),
                "expires_at": expires_at,
                "used_at": None,
            },
        )
        return IssuedTemporaryPassword(password=password, expires_at=expires_at)

    async def consume(self, user_id: UUID, text: str) -> bool:
        """L6: single use. The conditional update is the compare-and-set, so two logins racing
        with the same password get one session."""
        normalized = codes.normalize(text)
        if normalized is None:
            return False
        spent = await TemporaryPassword.filter(
            user_id=user_id,
            password_hash__in=self._box.keyed_hash_candidates(normalized),
            used_at__isnull=True,
            expires_at__gt=self._clock(),
        ).update(used_at=self._clock())
        return spent == 1

    async def expires_at(self, user_id: UUID) -> datetime | None:
        row = await TemporaryPassword.get_or_none(
            user_id=user_id, used_at__isnull=True, expires_at__gt=self._clock()
        )
        return row.expires_at if row else None

    async def revoke(self, user_id: UUID) -> None:
        await TemporaryPassword.filter(user_id=user_id).delete()
