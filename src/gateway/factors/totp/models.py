"""T1, T3: one authenticator per user; the secret is kept only encrypted."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class TotpCredential(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(unique=True)
    secret_encrypted: str | None = fields.TextField(null=True)
    # A re-enrollment waits here until confirmed, so the working authenticator keeps working.
    pending_secret_encrypted: str | None = fields.TextField(null=True)
    # T2: the last accepted time step; only a later one is accepted.
    last_step = fields.BigIntField(default=-1)
    confirmed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "totp_credentials"
