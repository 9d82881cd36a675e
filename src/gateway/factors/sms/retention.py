"""Retention of text messages (S3, S4): what a message and its code leave behind once nothing
can change them any more (gateway.core.retention)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tortoise.expressions import Q

from gateway.core.retention import Child, ModelRule, Rule
from gateway.factors.sms.models import (
    FINAL_STATUSES,
    SmsAttempt,
    SmsCode,
    SmsMessage,
    SmsStatus,
)

TABLES = (
    SmsMessage._meta.db_table,
    SmsAttempt._meta.db_table,
    SmsCode._meta.db_table,
)


def rules(now: datetime, keep: timedelta) -> list[Rule]:
    """Messages created more than `keep` ago that are settled, with their provider calls; and
    codes that expired more than `keep` ago.

    A message still QUEUED or SENDING is never deleted: a worker, the re-drive or
    `kanmon admin sms-stuck` still has it. A SENT one waits for its delivery receipt, but not
    for ever (the console provider and carriers that report nothing leave it SENT): it goes
    once it was sent `keep` ago. A receipt that still came would find no message and be dropped
    like any stray one (`settle_early_receipts`, which also drops the early receipts a day
    old). A code is read only while it can be used, and by the resends of its live challenge."""
    cutoff = now - keep
    settled = Q(status__in=list(FINAL_STATUSES)) | Q(status=SmsStatus.SENT, sent_at__lt=cutoff)
    return [
        ModelRule(
            SmsMessage,
            Q(created_at__lt=cutoff) & settled,
            children=(Child(SmsAttempt, "message_id"),),
        ),
        ModelRule(SmsCode, Q(expires_at__lt=cutoff)),
    ]
