"""O1 (with H1 "contact support", F3): the operator console, through its domain functions and
through the real `kanmon admin ...` / `kanmon worker --check` binary in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pyotp
import pytest
from arq.connections import ArqRedis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from redis.asyncio.connection import ConnectionPool

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session
from gateway.accounts.models import User as UserRow
from gateway.accounts.service import Client
from gateway.admin import reports
from gateway.admin.support import ResetRequest, UnknownUser, reset_two_factor
from gateway.container import Services
from gateway.core import outbox
from gateway.core.audit import SecurityEvent
from gateway.core.clock import utc_now
from gateway.core.errors import BadUserInput
from gateway.core.jobs import (
    JOB_BACKUP_CODES_INVALIDATE,
    JOB_NOTICE_SEND,
    QUEUE_MAINTENANCE,
    QUEUE_PUSH,
    QUEUE_SMS,
    QUEUES,
    JobRequest,
)
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.factors.backup_codes.models import BackupCode, BackupCodeStatus
from gateway.factors.push.models import Device, Platform
from gateway.factors.sms.models import Phone, SmsMessage, SmsStatus
from gateway.factors.sms.phones import mask
from gateway.factors.temporary_passwords.models import TemporaryPassword
from gateway.factors.totp.models import TotpCredential
from gateway.settings import Settings
from tests.conftest import run_worker
from tests.graphql_client import data
from tests.sms_helpers import User, domain_user, fresh_number, verified_phone
from workers.runner import KanmonWorker
from workers.settings import worker_options

KANMON = Path(sys.executable).parent / "kanmon"
VIEWER = "query { viewer { id } }"


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


async def kanmon(settings: Settings, *args: str) -> Ran:
    """The installed `kanmon` binary, configured only through KANMON_* variables."""
    assert settings.redis_url
    assert settings.secret_key
    env = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    env.update(
        {
            "KANMON_DATABASE_URL": settings.resolved_database_url(),
            "KANMON_REDIS_URL": settings.redis_url,
            "KANMON_SECRET_KEY": settings.secret_key.get_secret_value(),
            "USER": "test-operator",
        }
    )
    process = await asyncio.create_subprocess_exec(
        str(KANMON),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class Secured:
    user: User
    number: str
    app_token: str


async def secured_user(services: Services) -> Secured:
    """Every method at once: a verified phone, TOTP, an app device, 2FA on with a backup code,
    a temporary password, and a second (app) session."""
    user = await domain_user(services)
    number = fresh_number()
    await verified_phone(services, user, number)
    enrollment = await services.security.begin_totp(user.session)
    await services.security.confirm_totp(user.session, pyotp.TOTP(enrollment.secret).now())
    async with services.uow() as work:
        await services.security.enable(user.session, work)
    await services.security.create_temporary_password(user.session)
    issued = await services.accounts.issue_session(
        user.id, Client(ClientKind.IOS, None, None), password_proved=True
    )
    app_session = await services.accounts.session_for_token(issued.token)
    assert app_session is not None
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    async with services.uow():
        await services.security.enroll_device(
            app_session,
            "test phone",
            Platform.IOS,
            f"fcm-{secrets.token_hex(8)}",
            base64.b64encode(key).decode(),
        )
    return Secured(user, number, issued.token)


async def assert_reset(user_id: UUID) -> None:
    """What H1's reset leaves: no method, no valid code or password, no live session."""
    assert not (await UserRow.get(id=user_id)).two_factor_enabled
    assert not await TotpCredential.exists(user_id=user_id)
    assert not await Phone.exists(user_id=user_id)
    assert not await Device.exists(user_id=user_id)
    assert not await TemporaryPassword.exists(user_id=user_id)
    assert not await BackupCode.exists(user_id=user_id, status=BackupCodeStatus.ACTIVE)
    assert not await Session.exists(user_id=user_id, revoked_at__isnull=True)


async def assert_untouched(user_id: UUID) -> None:
    assert (await UserRow.get(id=user_id)).two_factor_enabled
    assert await TotpCredential.exists(user_id=user_id, secret_encrypted__isnull=False)
    assert await Phone.exists(user_id=user_id, verified_at__isnull=False)
    assert await Device.exists(user_id=user_id)
    assert await BackupCode.exists(user_id=user_id, status=BackupCodeStatus.ACTIVE)
    assert await Session.exists(user_id=user_id, revoked_at__isnull=True)
    assert not await SecurityEvent.exists(user_id=user_id, kind="support.two_factor_reset")


async def notice_rows(user_id: UUID) -> list[OutboxMessage]:
    rows = await OutboxMessage.filter(job_name=JOB_NOTICE_SEND).order_by("created_at")
    return [r for r in rows if r.payload.get("user_id") == str(user_id)]


def _stuck_job() -> JobRequest:
    return JobRequest(
        name=JOB_BACKUP_CODES_INVALIDATE,
        queue=QUEUE_MAINTENANCE,
        payload={"user_id": str(uuid4()), "reason": "test", "count": 1},
    )


async def _stuck_outbox_row() -> OutboxMessage:
    """A row whose hand-off to arq was lost an hour ago (written outside any unit of work)."""
    row = await outbox.add(_stuck_job())
    await OutboxMessage.filter(id=row.id).update(created_at=utc_now() - timedelta(hours=1))
    return row


# Domain ---------------------------------------------------------------------------------------


async def test_o1_reset_removes_every_method_in_one_go(services: Services) -> None:
    secured = await secured_user(services)
    user_id = secured.user.id

    report = await reset_two_factor(
        services,
        ResetRequest(secured.user.username, "SUP-1234", "alice", "called in, ID checked"),
    )

    await assert_reset(user_id)
    assert report.two_factor_was_enabled
    assert report.totp_removed
    assert report.phone_removed
    assert report.masked_phone == mask(secured.number)
    assert report.devices_removed == 1
    assert report.backup_codes_invalidated == 1
    assert report.temporary_password_revoked
    assert report.sessions_revoked == 2
    event = await SecurityEvent.get(user_id=user_id, kind="support.two_factor_reset")
    assert event.detail == "ticket=SUP-1234 operator=alice reason=called in, ID checked"
    kinds = set(await SecurityEvent.filter(user_id=user_id).values_list("kind", flat=True))
    assert {"two_factor.disabled", "totp.removed", "phone.removed", "device.removed"} <= kinds
    # The notice goes to the number that was on the account, after commit.
    (notice,) = await notice_rows(user_id)
    assert notice.payload == {
        "user_id": str(user_id),
        "notice": "two_factor_disabled",
        "number": secured.number,
    }
    assert notice.dispatched_at is not None


async def test_o1_reset_of_a_user_without_2fa_still_records_the_ticket(
    services: Services,
) -> None:
    user = await domain_user(services)
    report = await reset_two_factor(services, ResetRequest(user.username.upper(), "T-1", "bob"))
    assert not report.two_factor_was_enabled
    assert not report.phone_removed
    assert report.masked_phone is None
    assert report.sessions_revoked == 1
    assert await SecurityEvent.exists(
        user_id=user.id, kind="support.two_factor_reset", detail="ticket=T-1 operator=bob"
    )
    assert not await SecurityEvent.exists(user_id=user.id, kind="two_factor.disabled")


@pytest.mark.parametrize("ticket", ["", "   ", "x" * 65, "SUP\n1"])
async def test_o1_reset_requires_a_ticket_reference(services: Services, ticket: str) -> None:
    secured = await secured_user(services)
    with pytest.raises(BadUserInput):
        await reset_two_factor(services, ResetRequest(secured.user.username, ticket, "alice"))
    await assert_untouched(secured.user.id)


async def test_o1_reset_of_an_unknown_user_changes_nothing(services: Services) -> None:
    before = await SecurityEvent.filter(kind="support.two_factor_reset").count()
    with pytest.raises(UnknownUser):
        await reset_two_factor(services, ResetRequest(f"ghost_{secrets.token_hex(4)}", "T", "a"))
    assert await SecurityEvent.filter(kind="support.two_factor_reset").count() == before


async def test_o1_replay_reports_rows_still_stuck_when_redis_is_down() -> None:
    row = await _stuck_outbox_row()
    broken = ArqRedis(
        connection_pool=ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    )
    try:
        replay = await reports.replay_outbox(OutboxRelay(broken), timedelta(seconds=60))
    finally:
        await broken.aclose()
    assert replay.remaining >= 1
    stored = await OutboxMessage.get(id=row.id)
    assert stored.dispatched_at is None
    assert stored.dispatch_attempts == 1
    await OutboxMessage.filter(id=row.id).update(dispatched_at=utc_now())  # leave no backlog


# The real binary ------------------------------------------------------------------------------


async def test_o1_cli_reset_without_a_ticket_is_a_usage_error(
    services: Services, settings: Settings
) -> None:
    secured = await secured_user(services)
    ran = await kanmon(settings, "admin", "reset-2fa", secured.user.username)
    assert ran.code == 2
    assert "--ticket" in ran.stderr
    too_long = await kanmon(
        settings, "admin", "reset-2fa", secured.user.username, "--ticket", "x" * 65
    )
    assert too_long.code == 2
    await assert_untouched(secured.user.id)


async def test_o1_cli_reset_of_an_unknown_user_exits_3(settings: Settings) -> None:
    name = f"ghost_{secrets.token_hex(4)}"
    ran = await kanmon(settings, "admin", "reset-2fa", name, "--ticket", "SUP-9")
    assert ran.code == 3, ran
    assert name in ran.stderr
    assert ran.stdout == ""


async def test_o1_cli_reset_turns_2fa_off_and_revokes_sessions(
    services: Services, settings: Settings, client: httpx.AsyncClient
) -> None:
    secured = await secured_user(services)
    user_id = secured.user.id
    assert (await data(client, VIEWER, token=secured.user.token))["viewer"] is not None

    ran = await kanmon(settings, "admin", "reset-2fa", secured.user.username, "--ticket", "ZD-4242")

    assert ran.code == 0, ran
    assert "ZD-4242" in ran.stdout
    assert mask(secured.number) in ran.stdout
    assert secured.number not in ran.stdout + ran.stderr
    await assert_reset(user_id)
    event = await SecurityEvent.get(user_id=user_id, kind="support.two_factor_reset")
    assert event.detail == "ticket=ZD-4242 operator=test-operator"
    for token in (secured.user.token, secured.app_token):
        assert (await data(client, VIEWER, token=token))["viewer"] is None
    (notice,) = await notice_rows(user_id)
    assert notice.payload["notice"] == "two_factor_disabled"
    assert "two_factor_disabled queued" in ran.stdout


async def test_o1_cli_reset_of_a_user_without_2fa_says_no_notice_went(
    services: Services, settings: Settings
) -> None:
    user = await domain_user(services)
    ran = await kanmon(settings, "admin", "reset-2fa", user.username, "--ticket", "T-2")
    assert ran.code == 0, ran
    assert "was already off" in ran.stdout
    assert "queued" not in ran.stdout
    assert await notice_rows(user.id) == []


async def test_o1_cli_outbox_shows_a_stuck_row_and_replay_dispatches_it(
    settings: Settings,
) -> None:
    row = await _stuck_outbox_row()

    shown = await kanmon(settings, "admin", "outbox")
    assert shown.code == 0, shown
    assert str(row.id) in shown.stdout
    assert JOB_BACKUP_CODES_INVALIDATE in shown.stdout
    assert "QUEUE" in shown.stdout.splitlines()[1]

    replayed = await kanmon(settings, "admin", "outbox", "--replay")
    assert replayed.code == 0, replayed
    assert "dispatched, 0 still stuck" in replayed.stdout
    assert (await OutboxMessage.get(id=row.id)).dispatched_at is not None

    after = await kanmon(settings, "admin", "outbox")
    assert str(row.id) not in after.stdout
    await run_worker(settings, QUEUE_MAINTENANCE)
    user_id = row.payload["user_id"]
    assert await SecurityEvent.exists(user_id=user_id, kind="backup_codes.invalidated")


async def test_o1_cli_sms_stuck_lists_a_stuck_message_masked(settings: Settings) -> None:
    number = fresh_number()
    message = await SmsMessage.create(
        to_number=number,
        body="a notice body",
        status=SmsStatus.SENDING,
        provider="twilio",
        attempts=2,
        error_code="20429",
    )
    await SmsMessage.filter(id=message.id).update(created_at=utc_now() - timedelta(days=30))
    try:
        ran = await kanmon(settings, "admin", "sms-stuck", "--older-than", str(7 * 86400))
        assert ran.code == 1, ran
        line = next(x for x in ran.stdout.splitlines() if str(message.id) in x)
        assert line.split() == [
            str(message.id),
            "SENDING",
            "2",
            "twilio",
            "20429",
            mask(number),
            "30d00h",
        ]
        assert number not in ran.stdout
        assert "notice body" not in ran.stdout

        none = await kanmon(settings, "admin", "sms-stuck", "--older-than", str(400 * 86400))
        assert none.code == 0, none
        assert str(message.id) not in none.stdout
    finally:
        await SmsMessage.filter(id=message.id).update(status=SmsStatus.FAILED)


def _queue_table(ran: Ran) -> dict[str, list[str]]:
    header, *rows = ran.stdout.splitlines()
    assert header.split() == ["QUEUE", "DEPTH", "OLDEST", "DUE", "WORKER"]
    return {row.split()[0]: row.split()[1:] for row in rows}


def _burst_worker(settings: Settings, queue: str) -> KanmonWorker:
    worker = KanmonWorker(**worker_options(settings, queue), burst=True, handle_signals=False)
    worker.cron_jobs = []
    return worker


async def test_o1_cli_queues_and_worker_check_follow_a_real_worker(
    settings: Settings, redis: ArqRedis
) -> None:
    """`admin queues` exits 1 (needs attention) while any queue has no live worker, 0 once
    every queue has one."""
    await redis.delete(*(reports.health_check_key(queue) for queue in QUEUES))
    assert (await kanmon(settings, "worker", "--queue", QUEUE_MAINTENANCE, "--check")).code == 1
    nobody = await kanmon(settings, "admin", "queues")

    workers = {queue: _burst_worker(settings, queue) for queue in QUEUES}
    try:
        # burst: each drains its queue and has written its health-check key
        await workers[QUEUE_MAINTENANCE].main()
        checked = await kanmon(settings, "worker", "--queue", QUEUE_MAINTENANCE, "--check")
        assert checked.code == 0, checked
        one_of_three = await kanmon(settings, "admin", "queues")
        await workers[QUEUE_SMS].main()
        await workers[QUEUE_PUSH].main()
        every_queue = await kanmon(settings, "admin", "queues")
    finally:
        for worker in workers.values():
            await worker.close()  # arq deletes the key on an orderly shutdown

    assert nobody.code == 1, nobody
    assert {row[-1] for row in _queue_table(nobody).values()} == {"none"}

    assert one_of_three.code == 1, one_of_three
    table = _queue_table(one_of_three)
    assert set(table) == {"sms", "push", "maintenance"}
    assert table["maintenance"] == ["0", "-", "alive"]
    assert table["sms"][-1] == table["push"][-1] == "none"

    assert every_queue.code == 0, every_queue
    assert {row[-1] for row in _queue_table(every_queue).values()} == {"alive"}

    assert (await kanmon(settings, "worker", "--queue", QUEUE_MAINTENANCE, "--check")).code == 1
    gone = await kanmon(settings, "admin", "queues")
    assert gone.code == 1, gone
    assert _queue_table(gone)["maintenance"][-1] == "none"
