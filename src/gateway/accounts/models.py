"""Users and sessions (A1, A2)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from gateway.accounts.clients import ClientKind


class User(Model):
    id = fields.UUIDField(primary_key=True)
    username = fields.CharField(max_length=64)
    # A1: uniqueness is case-insensitive, so the index is on the folded form.
    username_key = fields.CharField(max_length=64, unique=True)
    password_hash = fields.CharField(max_length=255)
    two_factor_enabled = fields.BooleanField(default=False)
    # B2: sequence numbers never repeat, even after a set is invalidated.
    backup_code_sequence = fields.IntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"


class Session(Model):
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "kanmon.User", related_name="sessions", on_delete=fields.CASCADE
    )
    token_hash = fields.CharField(max_length=64, unique=True)
    client_kind = fields.CharEnumField(ClientKind, max_length=16)
    client_name = fields.CharField(max_length=128, null=True)
    device_id = fields.UUIDField(null=True)
    # Null for sessions that never proved the account password (temporary passwords, A3).
    password_verified_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "sessions"
        # The retention purge's range scans (gateway.login.retention): by expiry among the
        # sessions no device is enrolled from (an app's expired session often still has one),
        # and by revocation.
        indexes = (("device_id", "expires_at"), ("revoked_at",))
