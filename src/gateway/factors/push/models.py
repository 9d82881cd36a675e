"""Enrolled devices, login requests and push fatigue (P1-P10)."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class Platform(StrEnum):
    IOS = "IOS"
    ANDROID = "ANDROID"


class Device(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    # The app session that enrolled the device; logging it out ends the enrollment (P7).
    session_id = fields.UUIDField(unique=True)
    name = fields.CharField(max_length=64)
    platform = fields.CharEnumField(Platform, max_length=8)
    push_token = fields.CharField(max_length=4096)
    push_enabled = fields.BooleanField(default=True)
    push_disabled_reason = fields.CharField(max_length=32, null=True)
    public_key = fields.CharField(max_length=64)
    login_code_secret_sealed = fields.TextField()
    last_code_step = fields.BigIntField(default=-1)
    last_seen_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "devices"


class LoginRequestStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"


class LoginRequest(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    challenge_id = fields.UUIDField(unique=True)
    nonce = fields.CharField(max_length=64)
    status = fields.CharEnumField(
        LoginRequestStatus, max_length=16, default=LoginRequestStatus.PENDING
    )
    match_number = fields.IntField(null=True)
    wrong_matches = fields.IntField(default=0)
    browser = fields.CharField(max_length=128, null=True)
    ip_address = fields.CharField(max_length=64, null=True)
    location = fields.CharField(max_length=128, null=True)
    expires_at = fields.DatetimeField(db_index=True)
    decided_at = fields.DatetimeField(null=True)
    decided_by = fields.UUIDField(null=True)
    created_at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "login_requests"


class PushSend(Model):
    """One FCM message per device per request: the retry sends only what failed (P2)."""

    id = fields.UUIDField(primary_key=True)
    request_id = fields.UUIDField(db_index=True)
    device_id = fields.UUIDField()
    outcome = fields.CharField(max_length=32, null=True)
    attempts = fields.IntField(default=0)
    sent_at = fields.DatetimeField(null=True)

    class Meta:
        table = "push_sends"
        unique_together = (("request_id", "device_id"),)


class PushFatigue(Model):
    """P10: consecutive denials or expiries per account, and the pause they cause."""

    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(unique=True)
    consecutive_rejections = fields.IntField(default=0)
    paused_until = fields.DatetimeField(null=True)

    class Meta:
        table = "push_fatigue"
