"""L6: one active temporary password per account, kept only as a keyed hash."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class TemporaryPassword(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(unique=True)
    password_hash = fields.CharField(max_length=80)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "temporary_passwords"
