"""Retention (gateway.login.retention): rows past it go in bounded batches, by the domain rules
and by a real maintenance worker; everything something still reads stays."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
from arq.connections import ArqRedis
from tortoise.models import Model
from tortoise.transactions import in_transaction

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session, User
from gateway.accounts.store import lock_user
from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.code_throttle import FactorThrottle
from gateway.core.jobs import JOB_HOUSEKEEPING_PURGE, QUEUE_MAINTENANCE, QUEUES, queue_key
from gateway.core.outbox import OutboxMessage
from gateway.core.retention import RetentionPolicy
from gateway.factors.push.models import Device, LoginRequest, Platform, PushSend
from gateway.factors.sms.models import SmsAttempt, SmsCode, SmsCodePurpose, SmsMessage, SmsStatus
from gateway.factors.temporary_passwords.models import TemporaryPassword
from gateway.login.models import ChallengeStatus, LoginChallenge
from gateway.login.retention import TABLES, Retention
from gateway.settings import Settings
from tests.conftest import CAPTURED_LOGS, MovableClock, run_worker
from tests.statements import counted_statements, on_postgres
from workers import jobs
from workers.settings import worker_options

DAY = timedelta(days=1)
M = TypeVar("M", bound=Model)


class Rows:
    """Rows a test made, deleted again after it (kept ones included), so no other test meets
    them."""

    def __init__(self) -> None:
        self.made: list[Model] = []

    async def add(self, model: type[M], **values: Any) -> M:
        row = await model.create(**values)
        self.made.append(row)
        return row

    async def user(self) -> UUID:
        key = f"retention_{secrets.token_hex(6)}"
        user = await self.add(User, username=key, username_key=key, password_hash="unused")
        return UUID(str(user.id))

    async def challenge(
        self, expires_at: datetime, status: ChallengeStatus, sends: int = 0
    ) -> LoginChallenge:
        """A challenge; with `sends`, a login request and that many push sends."""
        user_id = uuid4()
        challenge = await self.add(
            LoginChallenge,
            user_id=user_id,
            token_hash=secrets.token_hex(32),
            client_kind=ClientKind.WEB,
            status=status,
            methods=["PUSH", "TOTP"],
            expires_at=expires_at,
        )
        if sends:
            request = await self.add(
                LoginRequest,
                user_id=user_id,
                challenge_id=challenge.id,
                nonce=secrets.token_hex(8),
                expires_at=expires_at,
                created_at=expires_at - timedelta(minutes=10),
            )
            for _ in range(sends):
                await self.add(PushSend, request_id=request.id, device_id=uuid4(), outcome="sent")
        return challenge

    async def session(
        self,
        user_id: UUID,
        expires_at: datetime,
        revoked_at: datetime | None = None,
        device_id: UUID | None = None,
    ) -> Session:
        return await self.add(
            Session,
            user_id=user_id,
            token_hash=secrets.token_hex(32),
            client_kind=ClientKind.IOS,
            created_at=expires_at - 30 * DAY,
            expires_at=expires_at,
            revoked_at=revoked_at,
            device_id=device_id,
        )

    async def device(self, user_id: UUID, session_id: UUID) -> Device:
        return await self.add(
            Device,
            user_id=user_id,
            session_id=session_id,
            name="phone",
            platform=Platform.IOS,
            push_token=secrets.token_hex(16),
            public_key="unused",
            login_code_secret_sealed="unused",
        )

    async def outbox(self, created_at: datetime, dispatched_at: datetime | None) -> OutboxMessage:
        return await self.add(
            OutboxMessage,
            queue=QUEUE_MAINTENANCE,
            job_name="retention.test",
            payload={},
            created_at=created_at,
            dispatched_at=dispatched_at,
        )

    async def message(
        self, created_at: datetime, status: SmsStatus, sent_at: datetime | None = None
    ) -> tuple[SmsMessage, SmsAttempt]:
        """A message with one provider call."""
        message = await self.add(
            SmsMessage,
            to_number="+15550000000",
            status=status,
            created_at=created_at,
            sent_at=sent_at,
        )
        attempt = await self.add(
            SmsAttempt, message_id=message.id, provider="console", started_at=created_at
        )
        return message, attempt

    async def code(self, expires_at: datetime) -> SmsCode:
        return await self.add(
            SmsCode,
            user_id=uuid4(),
            purpose=SmsCodePurpose.LOGIN,
            number="+15550000000",
            code_hash="unused",
            expires_at=expires_at,
        )

    async def throttle(
        self, user_id: UUID, method: str, failures: int, blocked_until: datetime | None
    ) -> FactorThrottle:
        return await self.add(
            FactorThrottle,
            user_id=user_id,
            method=method,
            consecutive_failures=failures,
            blocked_until=blocked_until,
        )

    async def cleanup(self) -> None:
        for row in reversed(self.made):
            await type(row).filter(id=row.id).delete()


@pytest.fixture
async def rows() -> AsyncIterator[Rows]:
    made = Rows()
    yield made
    await made.cleanup()


@pytest.fixture
def retention(make_services: Callable[..., Services], clock: MovableClock) -> Retention:
    """The composition root's purge, with the default settings (7, 30 and 30 days)."""
    return make_services(clock=clock).retention


async def present(*found: Model) -> list[bool]:
    return [await type(row).filter(id=row.id).exists() for row in found]


async def test_l2_p2_ended_challenges_go_with_their_requests_and_sends(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    now = clock.now
    completed = await rows.challenge(now - 8 * DAY, ChallengeStatus.COMPLETED, sends=2)
    denied = await rows.challenge(now - 8 * DAY, ChallengeStatus.DENIED, sends=1)
    # Never moved to EXPIRED (the expiry job was down): expired all the same.
    unswept = await rows.challenge(now - 8 * DAY, ChallengeStatus.PENDING)
    recent = await rows.challenge(now - 6 * DAY, ChallengeStatus.COMPLETED, sends=2)
    pending = await rows.challenge(now + timedelta(minutes=5), ChallengeStatus.PENDING, sends=1)

    report = await retention.purge()

    assert await present(completed, denied, unswept) == [False, False, False]
    assert await LoginRequest.filter(challenge_id__in=[completed.id, denied.id]).count() == 0
    assert await present(recent, pending) == [True, True]
    kept = await LoginRequest.filter(challenge_id__in=[recent.id, pending.id])
    assert len(kept) == 2
    assert await PushSend.filter(request_id__in=[r.id for r in kept]).count() == 3
    assert report.deleted["login_challenges"] >= 3
    assert report.deleted["login_requests"] >= 2
    assert report.deleted["push_sends"] >= 3
    assert report.finished


async def test_l2_challenge_retention_follows_its_setting(
    rows: Rows, make_services: Callable[..., Services], clock: MovableClock
) -> None:
    shorter = make_services(clock=clock, retention_challenge_days=2).retention
    old = await rows.challenge(clock.now - 3 * DAY, ChallengeStatus.EXPIRED)
    young = await rows.challenge(clock.now - 1 * DAY, ChallengeStatus.EXPIRED)
    await shorter.purge()
    assert await present(old, young) == [False, True]


async def test_a2_p7_ended_sessions_go_unless_a_device_is_enrolled_from_them(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    now = clock.now
    user_id = await rows.user()
    expired = await rows.session(user_id, now - 31 * DAY)
    revoked = await rows.session(user_id, now + 5 * DAY, revoked_at=now - 31 * DAY)
    recently_expired = await rows.session(user_id, now - 29 * DAY)
    recently_revoked = await rows.session(user_id, now + 5 * DAY, revoked_at=now - 29 * DAY)
    active = await rows.session(user_id, now + 10 * DAY)
    # An app's session that expired long ago while its device stays enrolled (a method).
    device_id = uuid4()
    enrolled = await rows.session(user_id, now - 60 * DAY, device_id=device_id)
    await rows.device(user_id, enrolled.id)
    # A device that names the session even where the session row lost track of it.
    named = await rows.session(user_id, now - 60 * DAY)
    await rows.device(user_id, named.id)

    report = await retention.purge()

    assert await present(expired, revoked) == [False, False]
    assert await present(recently_expired, recently_revoked, active, enrolled, named) == [True] * 5
    assert report.deleted["sessions"] >= 2


async def test_s4_dispatched_outbox_rows_go_after_a_day_undispatched_ones_never(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    now = clock.now
    old = await rows.outbox(now - 3 * DAY, now - 2 * DAY)
    recent = await rows.outbox(now - 3 * DAY, now - timedelta(hours=20))
    undispatched = await rows.outbox(now - 40 * DAY, None)

    await retention.purge()

    assert await present(old, recent, undispatched) == [False, True, True]


async def test_s3_s4_settled_messages_go_with_their_calls_unfinished_ones_stay(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    old = clock.now - 31 * DAY
    final = (SmsStatus.DELIVERED, SmsStatus.FAILED, SmsStatus.UNDELIVERED)
    settled = [await rows.message(old, status) for status in final]
    # No receipt ever came (the console provider, a silent carrier): none is coming now.
    settled.append(await rows.message(old, SmsStatus.SENT, sent_at=old))
    unfinished = [
        await rows.message(old, status) for status in (SmsStatus.QUEUED, SmsStatus.SENDING)
    ]
    # Sent only yesterday (it waited in the queue): its receipt may still come.
    late = await rows.message(old, SmsStatus.SENT, sent_at=clock.now - DAY)
    recent = await rows.message(clock.now - 29 * DAY, SmsStatus.DELIVERED)
    expired_code = await rows.code(old)
    recent_code = await rows.code(clock.now - 29 * DAY)

    report = await retention.purge()

    for message, attempt in settled:
        assert await present(message, attempt) == [False, False]
    for message, attempt in [*unfinished, late, recent]:
        assert await present(message, attempt) == [True, True]
    assert await present(expired_code, recent_code) == [False, True]
    assert report.deleted["sms_messages"] >= 4
    assert report.deleted["sms_attempts"] >= 4
    assert report.deleted["sms_codes"] >= 1


async def test_l6_used_or_expired_temporary_passwords_go(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    now = clock.now
    soon = now + timedelta(minutes=30)
    used = await rows.add(
        TemporaryPassword, user_id=uuid4(), password_hash="x", expires_at=soon, used_at=now
    )
    expired = await rows.add(
        TemporaryPassword, user_id=uuid4(), password_hash="x", expires_at=now - timedelta(seconds=1)
    )
    live = await rows.add(TemporaryPassword, user_id=uuid4(), password_hash="x", expires_at=soon)

    await retention.purge()

    assert await present(used, expired, live) == [False, False, True]


async def test_f5_counters_go_only_at_zero_or_a_day_after_their_back_off(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    now = clock.now
    user_id = await rows.user()
    zero = await rows.throttle(user_id, "SMS", 0, None)
    forgotten = await rows.throttle(user_id, "TOTP", 9, now - DAY - timedelta(seconds=1))
    running = await rows.throttle(user_id, "BACKUP_CODE", 12, now + timedelta(minutes=15))
    lapsed_lately = await rows.throttle(user_id, "APP_CODE", 12, now - timedelta(hours=23))
    # Two free failures: no time on them, and forgetting them would give free guesses.
    counting = await rows.throttle(user_id, "PUSH", 2, None)

    await retention.purge()

    assert await present(zero, forgotten) == [False, False]
    assert await present(running, lapsed_lately, counting) == [True, True, True]
    clock.advance(DAY.total_seconds())
    await retention.purge()
    assert await present(running, lapsed_lately, counting) == [True, False, True]


async def test_f5_purge_passes_over_a_counter_while_a_code_check_holds_its_user(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    """A check reads the counter under the user's row lock and writes it later in the same
    transaction: the purge must not delete it in between (the failure would be lost)."""
    if not on_postgres():
        pytest.skip("SQLite runs one transaction at a time")
    user_id = await rows.user()
    zero = await rows.throttle(user_id, "SMS", 0, None)
    locked = asyncio.Event()

    async def purge_meanwhile() -> None:
        await locked.wait()
        await retention.purge()

    # Made outside the transaction, so its statements use their own connections.
    purging = asyncio.create_task(purge_meanwhile())
    async with in_transaction("default"):
        await lock_user(user_id)
        locked.set()
        await purging
        assert await present(zero) == [True]
    await retention.purge()
    assert await present(zero) == [False]


async def test_f3_security_events_are_kept(
    rows: Rows, retention: Retention, clock: MovableClock
) -> None:
    event = await rows.add(
        SecurityEvent, user_id=uuid4(), kind="login.succeeded", created_at=clock.now - 3000 * DAY
    )
    await retention.purge()
    assert await present(event) == [True]


async def test_o2_a_large_purge_goes_in_bounded_batches_over_several_runs(
    rows: Rows, clock: MovableClock
) -> None:
    small = RetentionPolicy(batch_size=5, max_batches=1)
    bounded = Retention(small, clock)
    unbounded = Retention(RetentionPolicy(batch_size=5), clock)
    await unbounded.purge()  # whatever an earlier test left past retention
    old = [
        await rows.challenge(clock.now - 8 * DAY, ChallengeStatus.COMPLETED, sends=2)
        for _ in range(17)
    ]

    with counted_statements() as statements:
        first = await bounded.purge()
    # Challenges come first: one batch of 5, their 5 requests, their 10 sends 5 at a time.
    deletes = [s for s in statements if s.startswith("DELETE")]
    assert [sum(f'"{t}"' in s for s in deletes) for t in TABLES[:3]] == [1, 1, 2]
    assert (first.batches, first.finished) == (1, False)
    assert first.deleted["login_challenges"] == 5
    assert first.deleted["login_requests"] == 5
    assert first.deleted["push_sends"] == 10
    assert (await present(*old)).count(True) == 12

    second = await bounded.purge()
    assert second.deleted["login_challenges"] == 5
    assert (await present(*old)).count(True) == 7

    rest = await unbounded.purge()  # two batches of challenges: 5, then 2
    assert rest.finished
    assert rest.deleted["login_challenges"] == 7
    assert rest.deleted["push_sends"] == 14
    assert (await present(*old)).count(True) == 0


def test_o2_purge_is_a_maintenance_cron_job_every_ten_minutes(settings: Settings) -> None:
    crons = {c.name: c for c in worker_options(settings, QUEUE_MAINTENANCE)["cron_jobs"]}
    purge = crons[JOB_HOUSEKEEPING_PURGE]
    assert purge.coroutine is jobs.maintenance.housekeeping_purge
    assert purge.minute == set(range(0, 60, 10))
    for queue in set(QUEUES) - {QUEUE_MAINTENANCE}:
        names = {c.name for c in worker_options(settings, queue)["cron_jobs"]}
        assert JOB_HOUSEKEEPING_PURGE not in names


async def test_o2_a_maintenance_worker_runs_the_purge_and_logs_counts_per_table(
    rows: Rows, settings: Settings, redis: ArqRedis
) -> None:
    """The worker's own services (real clock, settings' retention) run the job."""
    now = datetime.now(UTC)
    user_id = await rows.user()
    session = await rows.session(user_id, now - 40 * DAY)
    dispatched = await rows.outbox(now - 3 * DAY, now - 2 * DAY)
    kept = await rows.outbox(now - 3 * DAY, None)
    logged = len(CAPTURED_LOGS.lines)

    job = await redis.enqueue_job(JOB_HOUSEKEEPING_PURGE, _queue_name=queue_key(QUEUE_MAINTENANCE))
    assert job is not None
    assert await run_worker(settings, QUEUE_MAINTENANCE) >= 1

    assert await present(session, dispatched, kept) == [False, False, True]
    lines = [json.loads(line) for line in CAPTURED_LOGS.lines[logged:]]
    purges = [line for line in lines if line["message"] == "retention purge"]
    assert len(purges) == 1
    line = purges[0]
    assert line["deleted_sessions"] >= 1
    assert line["deleted_outbox_messages"] >= 1
    counts = {key for key in line if key.startswith("deleted_")}
    assert {
        "deleted_login_challenges",
        "deleted_sms_messages",
        "deleted_factor_throttles",
    } <= counts
    assert all(isinstance(line[key], int) for key in counts)
    assert str(user_id) not in json.dumps(line)
