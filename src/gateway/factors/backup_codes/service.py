"""Backup codes (B1-B6, H7, H8): an ordered set, at most 5 active, used oldest first."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import User
from gateway.accounts.store import lock_user
from gateway.core import audit
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.errors import DomainError
from gateway.core.jobs import JOB_BACKUP_CODES_INVALIDATE, QUEUE_MAINTENANCE, JobRequest
from gateway.core.uow import UnitOfWork
from gateway.factors.backup_codes import codes
from gateway.factors.backup_codes.errors import (
    BackupCodeLimit,
    BackupCodeNotAllowed,
    BackupCodeOutOfOrder,
    InvalidBackupCode,
)
from gateway.factors.backup_codes.models import BackupCode, BackupCodeStatus
from gateway.factors.base import ACCEPTED, Attempt, TwoFactorMethod, Verdict
from gateway.factors.summary import MethodSummary

MAX_ACTIVE = 5


@dataclass(frozen=True)
class IssuedBackupCode:
    code: str
    sequence: int
    active_count: int


class BackupCodeService:
    method = TwoFactorMethod.BACKUP_CODE

    def __init__(self, box: SecretBox, clock: Clock = utc_now) -> None:
        self._box = box
        self._clock = clock

    async def issue_next(self, user_id: UUID) -> IssuedBackupCode:
        """B2: the next code in sequence; refused with BACKUP_CODE_LIMIT at 5 active.
        Runs inside the caller's transaction. A new code is a new way past the second factor,
        so its issue is a security event (F3), with its sequence number."""
        user = await lock_user(user_id)
        active = await self.active_count(user_id)
        if active >= MAX_ACTIVE:
            raise BackupCodeLimit()
        sequence = user.backup_code_sequence + 1
        await User.filter(id=user_id).update(backup_code_sequence=sequence)
        code = codes.new_code()
        await BackupCode.create(
            user_id=user_id, sequence=sequence, code_hash=self._box.keyed_hash(code)
        )
        await audit.record(user_id, "backup_code.issued", detail=str(sequence))
        return IssuedBackupCode(
            code=codes.display(code), sequence=sequence, active_count=active + 1
        )

    async def active_count(self, user_id: UUID) -> int:
        return await BackupCode.filter(user_id=user_id, status=BackupCodeStatus.ACTIVE).count()

    def offered(self, summary: MethodSummary, client: ClientKind) -> bool:
        return client is not ClientKind.THIRD_PARTY and summary.backup_codes_active > 0

    def client_refusal(self, client: ClientKind) -> DomainError | None:
        """L7, H7: third-party apps use a temporary password instead."""
        return BackupCodeNotAllowed() if client is ClientKind.THIRD_PARTY else None

    async def verify(self, attempt: Attempt) -> Verdict:
        return await self.verify_code(attempt.user_id, attempt.code, attempt.work)

    async def verify_code(self, user_id: UUID, code: str, work: UnitOfWork) -> Verdict:
        """B3-B6. The caller holds the user's row lock, so the order check and the spend (or
        the invalidation of the whole set) are one atomic step. One keyed hash per accepted
        key finds the row; its sequence says whether it is the oldest active code."""
        normalized = codes.normalize(code)
        if normalized is None:
            return Verdict(accepted=False, error=InvalidBackupCode())
        candidates = self._box.keyed_hash_candidates(normalized)
        row = await BackupCode.filter(user_id=user_id, code_hash__in=candidates).first()
        if row is None or row.status is not BackupCodeStatus.ACTIVE:
            return Verdict(accepted=False, error=InvalidBackupCode())
        oldest = (
            await BackupCode.filter(user_id=user_id, status=BackupCodeStatus.ACTIVE)
            .order_by("sequence")
            .first()
        )
        if oldest is not None and oldest.id != row.id:
            await self.invalidate_all(user_id, work, reason="out_of_order")
            return Verdict(accepted=False, error=BackupCodeOutOfOrder())
        spent = await BackupCode.filter(id=row.id, status=BackupCodeStatus.ACTIVE).update(
            status=BackupCodeStatus.USED, used_at=self._clock()
        )
        if spent != 1:
            return Verdict(accepted=False, error=InvalidBackupCode())
        return ACCEPTED

    async def invalidate_all(self, user_id: UUID, work: UnitOfWork, *, reason: str) -> int:
        """B4, F1: every active code stops working in this transaction; the worker job then
        records the event and tells the user on their other channels."""
        count = await BackupCode.filter(user_id=user_id, status=BackupCodeStatus.ACTIVE).update(
            status=BackupCodeStatus.INVALIDATED, invalidated_at=self._clock()
        )
        if count:
            await work.enqueue(
                JobRequest(
                    name=JOB_BACKUP_CODES_INVALIDATE,
                    queue=QUEUE_MAINTENANCE,
                    payload={"user_id": str(user_id), "reason": reason, "count": count},
                )
            )
        return count
