"""B1-B6: backup codes, kept only as keyed hashes, ordered by the sequence they were obtained in."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class BackupCodeStatus(StrEnum):
    ACTIVE = "ACTIVE"
    USED = "USED"
    INVALIDATED = "INVALIDATED"


class BackupCode(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    sequence = fields.IntField()
    code_hash = fields.CharField(max_length=80, db_index=True)
    status = fields.CharEnumField(BackupCodeStatus, max_length=16, default=BackupCodeStatus.ACTIVE)
    created_at = fields.DatetimeField(auto_now_add=True)
    used_at = fields.DatetimeField(null=True)
    invalidated_at = fields.DatetimeField(null=True)

    class Meta:
        table = "backup_codes"
        unique_together = (("user_id", "sequence"),)
