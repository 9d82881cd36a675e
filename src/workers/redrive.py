"""S4 after the hand-off: work that was dispatched to arq but that Redis lost (a restart of a
server that keeps nothing on disk, the last second of an AOF) is found from the database and
enqueued again under the same job id.

Only work whose business state shows it never finished is offered to the relay, and the relay
enqueues nothing while Redis still holds the job or its kept result: a job still queued,
deferred for a retry, running or finished is never doubled.

- `sms.send`: a message still QUEUED, or SENDING with no provider call started for
  REDRIVE_AFTER. The re-run is the ordinary job: an expired code fails unsent (S3), a call that
  was cut off counts as a duplicate (S4), a paused number gets nothing (S5).
- `push.fan_out`: a login request still PENDING, not expired, whose user has a device to push
  to, and for which no device's send was ever recorded (its fan-out never ran), or some
  device's last send failed transiently (its retry, P2, was lost). The re-run sends only to the
  devices still owed a message: the job reads that from the recorded sends, not from its try
  number, which starts again at 1.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from gateway.container import Services
from gateway.factors.push.models import Device, LoginRequest, LoginRequestStatus, PushSend
from gateway.factors.push.port import PushOutcome
from gateway.factors.sms.delivery import stalled_messages

RETRY = PushOutcome.RETRY.value

# Long past any job's timeout (10 s for sms.send and push.fan_out): a job that has not moved
# for this long is not running. Also H3's "wait at least 2 minutes" for an SMS.
REDRIVE_AFTER = timedelta(minutes=2)
# Older messages are left to `kanmon admin sms-stuck`: their codes expired long ago.
REDRIVE_HORIZON = timedelta(hours=1)
BATCH = 500


async def redrive_lost_jobs(services: Services, quiet_for: timedelta = REDRIVE_AFTER) -> int:
    """Enqueues again what Redis lost after dispatch; returns how many jobs were enqueued."""
    now = services.clock()
    stalled = await stalled_messages(now, quiet_for, REDRIVE_HORIZON, BATCH)
    stalled += await unsent_login_requests(now, quiet_for, BATCH)
    return await services.relay.redrive(stalled, dispatched_before=now - quiet_for)


async def unsent_login_requests(now: datetime, quiet_for: timedelta, limit: int) -> list[UUID]:
    """P2: pending requests older than `quiet_for` with a device to push to and no send
    recorded, or with a send still to be retried (the request id is its fan-out's outbox row
    id)."""
    waiting = (
        await LoginRequest.filter(
            status=LoginRequestStatus.PENDING,
            expires_at__gt=now,
            created_at__lt=now - quiet_for,
        )
        .order_by("created_at")
        .limit(limit)
        .values_list("id", "user_id")
    )
    if not waiting:
        return []
    requests = {UUID(str(request_id)): UUID(str(user_id)) for request_id, user_id in waiting}
    sent = await PushSend.filter(request_id__in=list(requests)).values_list("request_id", "outcome")
    pushable = await Device.filter(
        user_id__in=set(requests.values()), push_enabled=True
    ).values_list("user_id", flat=True)
    tried = {UUID(str(request_id)) for request_id, _ in sent}
    owed = {UUID(str(request_id)) for request_id, outcome in sent if outcome == RETRY}
    reachable = {UUID(str(value)) for value in pushable}
    return [
        r for r, user in requests.items() if user in reachable and (r not in tried or r in owed)
    ]
