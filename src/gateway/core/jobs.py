"""Job names, queues and the JSON wire format shared by the relay and the workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

QUEUE_SMS = "sms"
QUEUE_PUSH = "push"
QUEUE_MAINTENANCE = "maintenance"
QUEUES = (QUEUE_SMS, QUEUE_PUSH, QUEUE_MAINTENANCE)

JOB_BACKUP_CODES_INVALIDATE = "backup_codes.invalidate"
JOB_OUTBOX_SWEEP = "outbox.sweep"
JOB_NOTICE_SEND = "notices.send"
JOB_SMS_SEND = "sms.send"
JOB_SMS_PURGE = "sms.purge_expired_codes"
JOB_PUSH_FAN_OUT = "push.fan_out"
JOB_EXPIRE_DUE = "login.expire_due"
JOB_HOUSEKEEPING_PURGE = "housekeeping.purge"


def queue_key(queue: str) -> str:
    """The Redis key arq uses for a logical queue; prefixed so a shared Redis stays tidy."""
    return f"kanmon:queue:{queue}"


@dataclass(frozen=True)
class JobRequest:
    name: str
    queue: str
    payload: dict[str, Any]
    # Also the outbox row's id: a message relayed twice is still one arq job.
    job_id: str | None = None


def serialize(value: Any) -> bytes:
    """JSON rather than arq's default pickle: a poisoned queue must not run code."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def deserialize(raw: bytes) -> Any:
    return json.loads(raw)
