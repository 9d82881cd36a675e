"""Login challenges (L2, L5)."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model

from gateway.accounts.clients import ClientKind


class ChallengeStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    LOCKED = "LOCKED"
    COMPLETED = "COMPLETED"


class LoginChallenge(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    token_hash = fields.CharField(max_length=64)
    client_kind = fields.CharEnumField(ClientKind, max_length=16)
    client_name = fields.CharField(max_length=128, null=True)
    ip_address = fields.CharField(max_length=64, null=True)
    status = fields.CharEnumField(ChallengeStatus, max_length=16, default=ChallengeStatus.PENDING)
    methods: fields.JSONField[list[str]] = fields.JSONField()
    wrong_attempts = fields.IntField(default=0)
    expires_at = fields.DatetimeField(db_index=True)
    completed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "login_challenges"
