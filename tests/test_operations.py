"""Operations (O2, O3, W2): what SIGTERM and SIGKILL do to real `kanmon worker` and `kanmon serve`
processes, and what /metrics and the logs show.

The worker and gateway processes are started as `python -m gateway.cli ...` (see
tests/gateway_processes.py) and are only ever signalled by the PIDs this module started. They
share the suite's database and Redis and talk HTTP to fakes running in this process.

Where no event crosses a process boundary (a signal's delivery, a process's children and listening
sockets in /proc), the tests poll that state with a bound; nothing here sleeps in place of
synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio.connection import ConnectionPool
from websockets.asyncio.client import connect

from gateway.app import create_app
from gateway.container import Services, build_services
from gateway.core import metrics
from gateway.core.jobs import queue_key
from gateway.core.metrics import watch_gc_pauses
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.core.uow import UnitOfWorkFactory
from gateway.factors.sms.models import SmsAttempt, SmsMessage, SmsStatus
from gateway.factors.sms.service import PhoneView
from gateway.logs import JsonFormatter
from gateway.settings import Settings, SmsProviderName
from tests.conftest import FAST_PASSWORDS, MovableClock, run_worker
from tests.fakes.fcm import FakeFcm
from tests.fakes.twilio import OK, FakeTwilio
from tests.gateway_processes import (
    KANMON,
    STOP_SECONDS,
    free_port,
    process_environment,
    start_gateway,
)
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    data,
    gql,
    sign_up,
)
from tests.push_helpers import fcm_overrides, push_account
from tests.push_helpers import login as push_login
from tests.sms_helpers import domain_user, fresh_number, random_ip
from tests.ws_client import graphql_socket
from workers.settings import SMS_JOB_TIMEOUT

SENDER = "+15005550006"
# Generous bounds: a failing test ends, it never hangs.
START_SECONDS = 30.0
STEP_SECONDS = 15.0
# arq runs a SIGKILLed worker's job again once its in-progress key expires: the longest job
# timeout of the queue + 10 s (20 s for `sms.send`), plus room for a slow host.
RERUN_SECONDS = 45.0
POLL_SECONDS = 0.02
# Operation names this module sends, to find them in kanmon_graphql_operation_seconds.
VERIFY_OP = "OpsVerifyLoginCode"
VERIFY = f"""
mutation {VERIFY_OP}($id: ID!, $t: String!, $m: TwoFactorMethod!, $c: String!) {{
  verifyLoginChallenge(id: $id, token: $t, method: $m, code: $c) {{ token clientKind }}
}}"""
LOGIN_CHALLENGE = """
subscription OpsWatchChallenge($id: ID!, $t: String!) {
  loginChallenge(id: $id, token: $t) { id status methods }
}"""


# Fakes and settings --------------------------------------------------------------------------


class WatchedTwilio(FakeTwilio):
    """FakeTwilio with an unbounded-by-itself wait on its requests (the caller bounds it: a
    worker process may take longer than the fake's own cap to start)."""

    async def wait_until(self, ready: Callable[[], bool], seconds: float = START_SECONDS) -> None:
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(ready)


@pytest.fixture
async def twilio() -> AsyncIterator[WatchedTwilio]:
    sid = "AC" + secrets.token_hex(16)
    async with WatchedTwilio(account_sid=sid, auth_token=secrets.token_hex(16)) as fake:
        yield fake


def twilio_settings(settings: Settings, twilio: FakeTwilio) -> Settings:
    return settings.model_copy(
        update={
            "sms_provider": SmsProviderName.TWILIO,
            "twilio_base_url": twilio.base_url,
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": SecretStr(twilio.auth_token),
            "twilio_from": SENDER,
            "sms_retry_base_seconds": 0.01,
            "sms_send_timeout_seconds": 8.0,
        }
    )


def worker_environment(settings: Settings, twilio: FakeTwilio) -> dict[str, str]:
    """A `kanmon worker --queue sms` on the suite's backends, sending through the fake."""
    return process_environment(
        settings,
        {
            "KANMON_SMS_PROVIDER": "twilio",
            "KANMON_TWILIO_BASE_URL": twilio.base_url,
            "KANMON_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "KANMON_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "KANMON_TWILIO_FROM": SENDER,
            "KANMON_SMS_RETRY_BASE_SECONDS": "0.01",
            "KANMON_SMS_SEND_TIMEOUT_SECONDS": "8",
        },
    )


# Processes -----------------------------------------------------------------------------------


async def spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *KANMON,
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def kill(process: asyncio.subprocess.Process) -> None:
    """Cleanup only: the process this test started, if it is still running."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def exit_code(process: asyncio.subprocess.Process, seconds: float, log: Path) -> int:
    try:
        async with asyncio.timeout(seconds):
            return await process.wait()
    except TimeoutError:
        raise AssertionError(
            f"process {process.pid} still running after {seconds:.0f} s\n{tail(log)}"
        ) from None


def tail(log: Path, characters: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-characters:]
    except OSError:
        return "<no log>"


async def until(
    ready: Callable[[], Awaitable[bool] | bool], what: str, seconds: float = STEP_SECONDS
) -> None:
    """Polls state another process changes, where no event crosses the process boundary."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                answer = ready()
                if not isinstance(answer, bool):
                    answer = await answer
                if answer:
                    return
                await asyncio.sleep(POLL_SECONDS)  # pacing of the poll, not a synchronisation
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}") from None


def signal_delivered(pid: int, signum: int) -> bool:
    """Whether the kernel has delivered `signum` to `pid` (it is pending in no thread).

    Python's C-level handler runs on delivery and wakes the event loop, which then calls the
    asyncio handler (arq's "stop taking jobs") on its next iteration: before it can act on a
    provider answer that arrives after this returned True. arq logs that moment only at INFO,
    which `kanmon worker` does not show (gateway.logs.configure_logging), so this is the
    observable point."""
    bit = 1 << (signum - 1)
    masks = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("ShdPnd:"):
                masks.append(int(line.split()[1], 16))
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("SigPnd:"):
                    masks.append(int(line.split()[1], 16))
    return bool(masks) and not any(mask & bit for mask in masks)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] != "Z"


def gateway_children(parent: int) -> set[int]:
    """The live `multiprocessing` spawn children of `kanmon serve` (not its resource tracker)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _stat(int(entry.name))
        if found is None or found[1] != parent or found[0] == "Z":
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                children.add(int(entry.name))
    return children


async def stop_serve(parent: asyncio.subprocess.Process, children: set[int]) -> None:
    """Cleanup only: SIGTERM lets `kanmon serve` stop its processes; if it does not, it and the
    gateway processes this test saw it start are killed by PID, so none is left orphaned."""
    if parent.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            parent.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                await parent.wait()
    await kill(parent)
    for pid in children:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def listening_ports(pid: int) -> set[int]:
    """TCP ports `pid` has a socket in LISTEN state on (its fds matched to /proc/net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(entry)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_o3_metrics_during_a_redis_outage_show_unknown_depths_and_the_backlog(
    settings: Settings,
) -> None:
    """An outage must not look like empty queues: the depths read as NaN (unknown), and the
    outbox backlog, read from the database, is still there when it matters most."""
    broken = unreachable_redis()
    services = build_services(settings, broken, passwords=FAST_PASSWORDS)
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            samples, _ = await scrape(http)
    finally:
        await broken.aclose()
    for queue in ("sms", "push", "maintenance"):
        assert math.isnan(samples[("kanmon_queue_depth", frozenset({("queue", queue)}))])
    backlog = samples[("kanmon_outbox_backlog", frozenset())]
    assert backlog == await OutboxMessage.filter(dispatched_at__isnull=True).count()


# SMS messages --------------------------------------------------------------------------------


def unreachable_redis() -> ArqRedis:
    """A client for a port nothing listens on: the relay fails as in a Redis outage."""
    return ArqRedis(
        connection_pool=ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    )


async def new_phone_message(services: Services, number: str, *, relayed: bool = True) -> SmsMessage:
    """S1 through the domain: a verification SMS committed with its outbox row; `relayed=False`
    leaves the row undispatched (Redis was down at commit), for the sweeper."""
    user = await domain_user(services)
    broken = None if relayed else unreachable_redis()
    uow = services.uow if broken is None else UnitOfWorkFactory(OutboxRelay(broken), broken)
    try:
        async with uow() as work:
            view = await services.sms.add_phone(user.id, number, None, random_ip(), work)
    finally:
        if broken is not None:
            await broken.aclose()
    assert isinstance(view, PhoneView)
    return await SmsMessage.get(user_id=user.id, to_number=number)


async def outcomes(message_id: UUID) -> list[str | None]:
    return [a.outcome for a in await SmsAttempt.filter(message_id=message_id).order_by("id")]


# Metrics -------------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample of a Prometheus text exposition, and each family's type."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> tuple[Samples, dict[str, str]]:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


# Accounts ------------------------------------------------------------------------------------


async def totp_web_challenge(
    http: httpx.AsyncClient, now: Callable[[], Any] | None = None
) -> tuple[pyotp.TOTP, dict[str, Any]]:
    """A user with TOTP and 2FA on, logged in from the web: (their TOTP, the challenge)."""
    username = f"ops_{secrets.token_hex(6)}"
    token = await sign_up(http, username)
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    code = totp.at(now()) if now else totp.now()
    assert (await data(http, CONFIRM_TOTP, {"c": code}, token=token))["confirmTotpEnrollment"][
        "totpEnabled"
    ]
    await data(http, ENABLE_2FA, token=token)
    return totp, await web_login(http, username)


async def web_login(http: httpx.AsyncClient, username: str) -> dict[str, Any]:
    login = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    assert login["__typename"] == "LoginChallenge", login
    assert "TOTP" in login["methods"]
    challenge: dict[str, Any] = login
    return challenge


# O2: workers ---------------------------------------------------------------------------------


async def test_o2_worker_sigterm_finishes_the_job_it_holds(
    services: Services,
    settings: Settings,
    redis: ArqRedis,
    twilio: WatchedTwilio,
    tmp_path: Path,
) -> None:
    custom = twilio_settings(settings, twilio)
    await run_worker(custom, "sms")  # jobs other tests left behind are not this test's
    number = fresh_number()
    twilio.script(OK.held_until_released(), to=number)
    message = await new_phone_message(services, number)
    log = tmp_path / "worker.log"
    worker = await spawn(["worker", "--queue", "sms"], worker_environment(settings, twilio), log)
    try:
        await twilio.wait_until(lambda: bool(twilio.requests_to(number)))
        # The provider call is in flight: the worker holds the job.
        worker.send_signal(signal.SIGTERM)
        await until(lambda: signal_delivered(worker.pid, signal.SIGTERM), "SIGTERM delivered")
        assert worker.returncode is None, "the worker left before its job was done"
        assert (await SmsMessage.get(id=message.id)).status is SmsStatus.SENDING
        twilio.release()
        code = await exit_code(worker, SMS_JOB_TIMEOUT + 5, log)
    finally:
        await kill(worker)
    assert code == 0, tail(log)

    sent = await SmsMessage.get(id=message.id)
    assert sent.status is SmsStatus.SENT
    assert (sent.attempts, sent.duplicates) == (1, 0)
    assert await outcomes(message.id) == ["sent"]
    [request] = twilio.requests_to(number)
    assert sent.provider_sid == request.sid
    # Finished, not re-queued: no job is left for it, and another worker sends nothing more.
    assert await redis.zscore(queue_key("sms"), str(message.id)) is None
    await run_worker(custom, "sms")
    assert len(twilio.requests_to(number)) == 1


async def test_o2_no_job_or_outbox_row_lost_across_sigterm_and_sigkill(
    services: Services,
    settings: Settings,
    redis: ArqRedis,
    twilio: WatchedTwilio,
    tmp_path: Path,
) -> None:
    await run_worker(twilio_settings(settings, twilio), "sms")
    # Five jobs handed to Redis at commit, two outbox rows Redis never got (the sweeper's).
    queued = [await new_phone_message(services, fresh_number()) for _ in range(5)]
    stranded = [await new_phone_message(services, fresh_number(), relayed=False) for _ in range(2)]
    messages = queued + stranded
    ids = [m.id for m in messages]
    numbers = {m.to_number for m in messages}
    assert await OutboxMessage.filter(id__in=ids, dispatched_at__isnull=True).count() == 2

    def in_flight() -> int:
        return sum(1 for r in twilio.requests if r.to in numbers)

    twilio.default = OK.held_until_released()  # every send waits until released
    env = worker_environment(settings, twilio)
    log = tmp_path / "workers.log"
    one_job = ["worker", "--queue", "sms", "--concurrency", "1"]
    terminated = await spawn(one_job, env, log)
    killed: asyncio.subprocess.Process | None = None
    fresh: asyncio.subprocess.Process | None = None
    try:
        await twilio.wait_until(lambda: in_flight() == 1)
        killed = await spawn(one_job, env, log)
        await twilio.wait_until(lambda: in_flight() == 2)
        # Each worker holds one job mid-send; three more wait in the queue.
        killed.send_signal(signal.SIGKILL)
        assert await exit_code(killed, STEP_SECONDS, log) == -signal.SIGKILL
        terminated.send_signal(signal.SIGTERM)
        await until(lambda: signal_delivered(terminated.pid, signal.SIGTERM), "SIGTERM delivered")
        twilio.default = OK
        twilio.release()
        assert await exit_code(terminated, SMS_JOB_TIMEOUT + 5, log) == 0, tail(log)
        assert in_flight() == 2, "a terminating worker took a new job"

        # The sweeper hands the stranded rows to Redis; a fresh worker drains the queue, the
        # killed worker's job included once arq's in-progress key for it runs out.
        assert await services.relay.sweep(older_than=timedelta(0)) >= 2
        fresh = await spawn(["worker", "--queue", "sms", "--burst"], env, log)
        assert await exit_code(fresh, RERUN_SECONDS, log) == 0, tail(log)
    finally:
        for process in (terminated, killed, fresh):
            if process is not None:
                await kill(process)

    assert await OutboxMessage.filter(id__in=ids, dispatched_at__isnull=True).count() == 0
    resent = 0
    for message in messages:
        row = await SmsMessage.get(id=message.id)
        requests = twilio.requests_to(row.to_number)
        assert row.status is SmsStatus.SENT, (row.to_number, row.status, tail(log))
        assert 1 <= len(requests) <= 2
        assert row.duplicates == len(requests) - 1, "a second provider call is counted"
        resent += len(requests) - 1
        assert await redis.zscore(queue_key("sms"), str(row.id)) is None
        assert not await redis.exists(in_progress_key_prefix + str(row.id))
    assert resent == 1, "only the SIGKILLed worker's job was sent again"


# O2: the gateway -----------------------------------------------------------------------------


async def test_o2_gateway_sigterm_closes_websockets_with_going_away(
    settings: Settings, redis: ArqRedis
) -> None:
    gateway = await start_gateway(settings, "ops-gateway")
    try:
        async with gateway.http() as http:
            _, challenge = await totp_web_challenge(http)
            async with graphql_socket(gateway.ws_url) as socket:
                watch = await socket.subscribe(
                    LOGIN_CHALLENGE, {"id": challenge["id"], "t": challenge["token"]}
                )
                first = (await watch.next())["loginChallenge"]
                assert (first["id"], first["status"]) == (challenge["id"], "PENDING")
                # O3 from the real process: the subscription is counted while it is open.
                samples, _ = await scrape(http)
                assert sample(samples, "kanmon_open_subscriptions", kind="login_challenge") >= 1

                gateway.process.send_signal(signal.SIGTERM)
                assert await socket.wait_closed(STOP_SECONDS) == 1001, socket.close_reason
                assert (await watch.receive()).type == "closed"
                code = await exit_code(gateway.process, STOP_SECONDS, gateway.log_path)
        # uvicorn re-raises SIGTERM after its orderly shutdown: -SIGTERM is a clean exit too.
        assert code in (0, -signal.SIGTERM), gateway.log_tail()
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5.0) as late:
            with pytest.raises(httpx.ConnectError):
                await late.get("/healthz")
        with pytest.raises(ConnectionRefusedError):
            await connect(gateway.ws_url, open_timeout=5.0)
    finally:
        await gateway.stop()


async def test_o2_serve_restarts_a_gateway_process_that_dies(
    settings: Settings, redis: ArqRedis, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    parent = await spawn(
        ["serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
        process_environment(settings),
        log,
    )
    seen: set[int] = set()

    def serving() -> bool:
        children = gateway_children(parent.pid)
        seen.update(children)
        assert parent.returncode is None, tail(log)
        return len(children) == 2 and all(port in listening_ports(c) for c in children)

    async def answers_repeatedly(http: httpx.AsyncClient) -> None:
        for _ in range(20):  # SO_REUSEPORT spreads these over both processes
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text

    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=5.0,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as http:
            await until(serving, "two gateway processes listening", START_SECONDS)
            await answers_repeatedly(http)
            # One scrape reports the processes' shared metrics (multiprocess mode).
            samples, types = await scrape(http)
            assert types.get("kanmon_queue_depth") == "gauge"
            assert ("kanmon_queue_depth", frozenset({("queue", "sms")})) in samples

            before = gateway_children(parent.pid)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            await until(lambda: not alive(victim), "the killed process to be gone")

            def replaced() -> bool:
                children = gateway_children(parent.pid)
                return (
                    len(children) == 2
                    and victim not in children
                    and (children - before) != set()
                    and serving()
                )

            await until(replaced, "a new gateway process listening", START_SECONDS)
            await answers_repeatedly(http)

        children = gateway_children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        code = await exit_code(parent, STOP_SECONDS, log)
    finally:
        await stop_serve(parent, seen)
    assert code == 0, tail(log)
    assert not [pid for pid in children | seen if alive(pid)], "a gateway process outlived serve"
    async with httpx.AsyncClient(timeout=5.0) as late:
        with pytest.raises(httpx.ConnectError):
            await late.get(f"http://127.0.0.1:{port}/healthz")


# O3: metrics and logs ------------------------------------------------------------------------


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(project_id="kanmon-test") as fake:
        yield fake


async def test_o3_metrics_exposes_the_named_series(
    settings: Settings,
    make_services: Callable[..., Services],
    client: httpx.AsyncClient,
    redis: ArqRedis,
    twilio: WatchedTwilio,
    fcm: FakeFcm,
    tmp_path: Path,
) -> None:
    clock = MovableClock()
    services = make_services(clock=clock)
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        before, _ = await scrape(http)

        # A TOTP login from the web: one wrong code, then the right one.
        totp, challenge = await totp_web_challenge(http, clock)
        clock.advance(90)  # past the enrollment's code, which may not be spent twice
        ids = {"id": challenge["id"], "t": challenge["token"], "m": "TOTP"}
        near = {totp.at(clock.now + timedelta(seconds=30 * k)) for k in range(-2, 3)}
        wrong = next(c for c in (f"{d}" * 6 for d in range(10)) if c not in near)
        refused = await gql(http, VERIFY, {**ids, "c": wrong})
        assert refused.get("errors"), refused
        accepted = await data(http, VERIFY, {**ids, "c": totp.at(clock.now)})
        assert accepted["verifyLoginChallenge"]["token"]

        # An SMS whose outbox row Redis did not get at commit: the backlog shows it.
        message = await new_phone_message(services, fresh_number(), relayed=False)
        backlog = await OutboxMessage.filter(dispatched_at__isnull=True).count()
        after, types = await scrape(http)

        assert after_minus(before, after, "kanmon_graphql_operation_seconds_count", VERIFY_OP) == 2
        assert types["kanmon_graphql_operation_seconds"] == "histogram"
        assert (
            sample(after, "kanmon_graphql_operation_seconds_bucket", operation=VERIFY_OP, le="+Inf")
            >= 2
        )
        outcome = "kanmon_login_challenge_outcomes_total"
        for result in ("wrong_code", "success"):
            labels = {"method": "TOTP", "outcome": result}
            assert sample(after, outcome, **labels) - sample(before, outcome, **labels) == 1
        assert types["kanmon_queue_depth"] == "gauge"
        for queue in ("sms", "push", "maintenance"):
            assert ("kanmon_queue_depth", frozenset({("queue", queue)})) in after
        assert types["kanmon_outbox_backlog"] == "gauge"
        assert sample(after, "kanmon_outbox_backlog") == backlog >= 1
        assert types["kanmon_open_subscriptions"] == "gauge"

        # Handed to Redis: the queue depth is what Redis holds, read at scrape time.
        custom = twilio_settings(settings, twilio)
        await run_worker(custom, "sms")
        row = await OutboxMessage.get(id=message.id)
        assert await services.relay.dispatch([row]) == 1
        depth = await redis.zcard(queue_key("sms"))
        queued, _ = await scrape(http)
        assert sample(queued, "kanmon_queue_depth", queue="sms") == depth >= 1
        assert sample(queued, "kanmon_outbox_backlog") == backlog - 1

        # A real SMS worker (in this process, so its counters are this registry's).
        await run_worker(custom, "sms")
        assert (await SmsMessage.get(id=message.id)).status is SmsStatus.SENT
        sent, _ = await scrape(http)
        sms = "kanmon_sms_messages_total"
        labels = {"status": "SENT", "provider": "twilio"}
        assert sample(sent, sms, **labels) - sample(queued, sms, **labels) == 1
        assert sample(sent, "kanmon_queue_depth", queue="sms") == 0

    # A push fan-out to one device through FakeFcm.
    await run_worker(settings, "push")  # jobs other tests left, without FCM
    fcm_settings = settings.model_copy(update=fcm_overrides(fcm, tmp_path))
    account = await push_account(client)
    await push_login(client, account.username)
    pushes_before, _ = await scrape(client)
    assert await run_worker(fcm_settings, "push") >= 1
    assert len(fcm.sent_to(account.app.push_token)) == 1
    pushes_after, types = await scrape(client)
    assert types["kanmon_push_sends"] == "counter"
    push = "kanmon_push_sends_total"
    assert (
        sample(pushes_after, push, result="sent") - sample(pushes_before, push, result="sent") == 1
    )


def after_minus(before: Samples, after: Samples, name: str, operation: str) -> float:
    return sample(after, name, operation=operation) - sample(before, name, operation=operation)


class _JsonLines(logging.Handler):
    """Formats each record as it is emitted (inside the request, as production's handler does)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def entries(self, message: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.lines]
        return [entry for entry in found if entry["message"] == message]


@contextlib.contextmanager
def json_logs() -> Iterator[_JsonLines]:
    handler = _JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_o3_logs_are_json_with_a_request_id(client: httpx.AsyncClient) -> None:
    forged = {"X-Twilio-Signature": "Zm9yZ2Vk", "Content-Type": "application/x-www-form-urlencoded"}
    form = "MessageSid=SM0&MessageStatus=delivered"
    with json_logs() as logs:
        answer = await client.post(
            "/webhooks/sms/status", content=form, headers={**forged, "X-Request-ID": "abc123"}
        )
        unnamed = await client.post("/webhooks/sms/status", content=form, headers=forged)
        logging.getLogger("tests.operations").warning("outside any request")

    assert answer.status_code == 403
    assert answer.headers["x-request-id"] == "abc123"
    generated = unnamed.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated), generated

    refusals = logs.entries("webhook signature refused")
    assert [entry.get("request_id") for entry in refusals] == ["abc123", generated]
    entry = refusals[0]
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "gateway.webhooks.sms"
    assert entry["path"] == "/webhooks/sms/status"
    assert entry["time"]
    [outside] = logs.entries("outside any request")
    assert "request_id" not in outside


async def test_o3_garbage_collector_pauses_are_timed(client: httpx.AsyncClient) -> None:
    """Each collection's pause lands in kanmon_gc_pause_seconds, by generation; installing the
    watch twice (a process that builds two apps) times each collection once."""
    was_installed = metrics._time_collection in gc.callbacks
    watch_gc_pauses()
    watch_gc_pauses()
    try:
        assert gc.callbacks.count(metrics._time_collection) == 1
        before, _ = await scrape(client)
        gc.collect(2)
        gc.collect(0)
        after, types = await scrape(client)
    finally:
        if not was_installed:
            gc.callbacks.remove(metrics._time_collection)
    assert types["kanmon_gc_pause_seconds"] == "histogram"
    for generation in ("0", "2"):
        count = "kanmon_gc_pause_seconds_count"
        grew = sample(after, count, generation=generation) - sample(
            before, count, generation=generation
        )
        assert grew >= 1, generation
