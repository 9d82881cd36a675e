"""Phones, SMS codes and the messages that carry them (S1-S5)."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


# One phone per account. A new number waits in the pending fields until it verifies (S1).
class Phone(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(unique=True)
    number = fields.CharField(max_length=20, null=True, db_index=True)
    carrier = fields.CharField(max_length=64, null=True)
    verified_at = fields.DatetimeField(null=True)
    sms_paused = fields.BooleanField(default=False)
    pending_number = fields.CharField(max_length=20, null=True, db_index=True)
    pending_carrier = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "phones"


class SmsCodePurpose(StrEnum):
    LOGIN = "LOGIN"
    VERIFY_PHONE = "VERIFY_PHONE"


# A code as sent: verified by keyed hash only; the sealed copy lets retries and a GO resend
# send the same code, and is erased once the code expires.
class SmsCode(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(db_index=True)
    purpose = fields.CharEnumField(SmsCodePurpose, max_length=16)
    challenge_id = fields.UUIDField(null=True, db_index=True)
    number = fields.CharField(max_length=20)
    code_hash = fields.CharField(max_length=80)
    code_sealed = fields.TextField(null=True)
    expires_at = fields.DatetimeField(db_index=True)
    used_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "sms_codes"


class SmsStatus(StrEnum):
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    UNDELIVERED = "UNDELIVERED"


FINAL_STATUSES = frozenset({SmsStatus.DELIVERED, SmsStatus.FAILED, SmsStatus.UNDELIVERED})


class SmsMessage(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.UUIDField(null=True, db_index=True)
    to_number = fields.CharField(max_length=20)
    code_id = fields.UUIDField(null=True)
    notice = fields.CharField(max_length=64, null=True)
    # Only messages without secrets (notices, keyword replies) keep their text.
    body = fields.TextField(null=True)
    status = fields.CharEnumField(SmsStatus, max_length=16, default=SmsStatus.QUEUED)
    provider = fields.CharField(max_length=32, null=True)
    provider_sid = fields.CharField(max_length=64, null=True, unique=True)
    attempts = fields.IntField(default=0)
    duplicates = fields.IntField(default=0)
    error_code = fields.CharField(max_length=32, null=True)
    expires_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    sent_at = fields.DatetimeField(null=True)
    delivered_at = fields.DatetimeField(null=True)

    class Meta:
        table = "sms_messages"


# A delivery receipt that came before the worker recorded its message's sid (the provider's
# callback can beat the worker's write): kept until the sid is known, then applied (S3).
class SmsEarlyReceipt(Model):
    id = fields.BigIntField(primary_key=True)
    provider_sid = fields.CharField(max_length=64, db_index=True)
    status = fields.CharEnumField(SmsStatus, max_length=16)
    error_code = fields.CharField(max_length=32, null=True)
    received_at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "sms_early_receipts"


# Every provider call, recorded before it starts and completed after, so a worker killed
# mid-call leaves a trace and the retry counts the possible duplicate (S4).
class SmsAttempt(Model):
    id = fields.BigIntField(primary_key=True)
    message_id = fields.UUIDField(db_index=True)
    provider = fields.CharField(max_length=32)
    outcome = fields.CharField(max_length=16, null=True)
    http_status = fields.IntField(null=True)
    error_code = fields.CharField(max_length=32, null=True)
    started_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "sms_attempts"
