"""The `push.fan_out` job's domain side (P2): one data message per device, the outcome of each
recorded, dead tokens switched off, and only the devices that failed transiently tried again."""

from __future__ import annotations

import math
import random
from uuid import UUID

from gateway.core.clock import Clock, utc_now
from gateway.core.metrics import PUSH_SENDS
from gateway.factors.push import fanout_store
from gateway.factors.push.models import Device, LoginRequestStatus, PushSend
from gateway.factors.push.port import MAX_BATCH, PushMessage, PushOutcome, PushSender

DEAD_TOKEN = frozenset({PushOutcome.UNREGISTERED, PushOutcome.SENDER_ID_MISMATCH})
MAX_BACKOFF_SECONDS = 30.0


class PushFanOut:
    def __init__(self, sender: PushSender, clock: Clock = utc_now) -> None:
        self._sender = sender
        self._clock = clock

    async def run(self, request_id: UUID, job_try: int) -> float | None:
        """Sends what is left to send; returns a delay when some devices should be retried.
        `job_try` only sets the back-off: what is left comes from the recorded sends."""
        found = await fanout_store.request_and_devices(request_id)
        now = self._clock()
        if found is None:
            return None
        request, targets = found
        if request.status is not LoginRequestStatus.PENDING:
            return None
        ttl = math.floor((request.expires_at - now).total_seconds())
        if ttl <= 0:
            return None
        devices = [t for t in targets if not t.settled]
        recorded = {t.device_id for t in devices if t.recorded}
        retry = False
        for start in range(0, len(devices), MAX_BATCH):
            batch = devices[start : start + MAX_BATCH]
            messages = [PushMessage(d.device_id, d.push_token, str(request.id), ttl) for d in batch]
            results = await self._sender.send(messages)
            first = [r for r in results if r.device_id not in recorded]
            await fanout_store.record_first_sends(request.id, first, self._clock())
            for result in results:
                if result.device_id in recorded:
                    await self._record_retry(request.id, result.device_id, result.outcome)
                PUSH_SENDS.labels(result.outcome.value).inc()
                if result.outcome in DEAD_TOKEN:
                    await Device.filter(id=result.device_id).update(
                        push_enabled=False, push_disabled_reason=result.outcome.value
                    )
                retry = retry or result.outcome is PushOutcome.RETRY
        if not retry:
            return None
        delay = min(2 ** max(job_try - 1, 0), MAX_BACKOFF_SECONDS) * random.uniform(0.5, 1.5)
        return delay if delay < ttl else None

    async def _record_retry(self, request_id: UUID, device_id: UUID, outcome: PushOutcome) -> None:
        row, _ = await PushSend.get_or_create(request_id=request_id, device_id=device_id)
        row.outcome = outcome.value
        row.attempts += 1
        if outcome is PushOutcome.SENT:
            row.sent_at = self._clock()
        await row.save(update_fields=["outcome", "attempts", "sent_at"])
