"""Soak benchmark: the whole system under a mixed login load, with a worker and a gateway killed.

It starts everything itself and stops what it started (by PID, never by name):

  - a fake Twilio and a fake FCM (tests/fakes, in this process, on 127.0.0.1);
  - two gateway processes (`python -m gateway.cli serve`) on two ports;
  - one worker per queue (`python -m gateway.cli worker --queue sms|push|maintenance`),

all with the same KANMON_DATABASE_URL, KANMON_REDIS_URL and KANMON_SECRET_KEY (this process's
KANMON_SECRET_KEY if set, else a fresh one), KANMON_SMS_PROVIDER=twilio pointing at the fake,
KANMON_FCM_* pointing at the fake, and S7 limits raised so the load is never refused for volume.
The caller's other KANMON_* variables are dropped, for this process and its children alike.

    .venv/bin/python bench/soak.py [--seconds 60] [--concurrency 12]
        [--database-url postgres://postgres@127.0.0.1:5432/kanmon_soak]
        [--redis-url redis://127.0.0.1:6379/11]
    .venv/bin/python bench/soak.py --embedded   # SQLite in a temp dir, an embedded valkey

The PostgreSQL database is created if missing and migrated. The arq queues live in the Redis
database given: a second soak (or anything else running kanmon workers) on the same Redis
database would take this run's jobs, so give each concurrent run its own.

Users are prepared through the domain layer (the first of each kind through the whole flow, the
rest in bulk with its password hash): TOTP users, SMS users (a verified phone), push users (an
app session with an enrolled Ed25519 device key). Then --concurrency closed-loop clients, a third
each of:

  - TOTP: `login`, then `verifyLoginChallenge` with the authenticator's code (T2: an account is
    used at most once per 30 s step);
  - SMS: `login` (the first code goes at once), the code arrives at the fake Twilio,
    `verifyLoginChallenge` with it;
  - push: `login` on the client's gateway, which waits for approval over the `loginChallenge`
    subscription (half the push clients) or by polling the `loginChallenge` query (the other
    half); the app gets the FCM message at the fake FCM, reads the request's nonce from
    `viewer.loginRequests` on the *other* gateway and approves it with its Ed25519 signature;
    the web client then calls `completeLoginChallenge`.

Each client has a home gateway (half on each). A transport error marks a gateway down for
everyone and the request is retried on the other one; a monitor marks it up again when /readyz
answers. Every error a client sees (GraphQL codes, HTTP statuses, transport errors, codes or
pushes that do not arrive in time, websockets that drop) is counted, also when a retry then
succeeds.

Faults: at 1/3 of --seconds the sms worker is SIGKILLed and restarted --restart-after seconds
later; at 1/2 the second gateway process is SIGKILLed and restarted on its port as soon as that
delay is over. "before" is the flows that ended before the first kill; "during" those that
overlap the window from the first kill until the restarted gateway is ready again; "after"
those that started later.

At the end the load stops, flows in flight finish (bounded), and the bench waits (at most
--drain-seconds) until this run's SMS messages have left QUEUED/SENDING and every login request
of its push users has reached the fake FCM. Lost messages: SmsMessage rows of this run's users
not SENT or DELIVERED, SMS codes (decrypted from their sealed copy) the fake Twilio never
received, login requests whose FCM message never arrived. All must be 0.

Prints ONE JSON line. Process logs stay in the temp directory named in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import httpx
import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import User
from gateway.accounts.service import Client, username_key
from gateway.container import Services, build_services, redis_client
from gateway.core import otp
from gateway.core.db import apply_migrations, close_database, open_database
from gateway.core.passwords import Passwords
from gateway.factors.push.models import LoginRequest, Platform
from gateway.factors.sms import phones
from gateway.factors.sms.models import Phone, SmsCode, SmsCodePurpose, SmsMessage, SmsStatus
from gateway.factors.totp.models import TotpCredential
from gateway.factors.totp.service import _context as totp_context
from gateway.settings import Settings, new_key_text

if TYPE_CHECKING:
    from tests.fakes.fcm import FakeFcm
    from tests.fakes.twilio import FakeTwilio

REPO = Path(__file__).resolve().parents[1]
KANMON = [sys.executable, "-m", "gateway.cli"]
PASSWORD = "bench horse battery staple"
ALLOWED_HOST = "127.0.0.1"
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/kanmon_soak"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
HIGH_LIMIT = "1000000"
BULK_BATCH = 1000
GATEWAYS = 2
KINDS = ("totp", "sms", "push")
PHASES = ("before", "during", "after")

REQUEST_TIMEOUT = 15.0
START_SECONDS = 30.0
STOP_SECONDS = 20.0
MONITOR_INTERVAL = 0.1
INBOX_INTERVAL = 0.002
REQUEST_ATTEMPTS = 3
# A killed sms worker's job comes back after its timeout + 10 s (workers/settings.py).
SMS_WAIT_SECONDS = 35.0
PUSH_WAIT_SECONDS = 15.0
APPROVAL_WAIT_SECONDS = 25.0
POLL_INTERVAL = 0.1
FLOW_CAP_SECONDS = 60.0
SETUP_WAIT_SECONDS = 30.0
DRAIN_POLL_SECONDS = 0.5
MAX_FLOWS_PER_CLIENT = 1_000_000
WS_PROTOCOL = Subprotocol("graphql-transport-ws")
CODE = re.compile(r"\b(\d{6})\b")

LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!, $n: String) {
  login(username: $u, password: $p, client: {kind: $k, name: $n}) {
    __typename
    ... on Session { token }
    ... on LoginChallenge { id token methods matchNumber }
  }
}"""
VERIFY = """
mutation($id: ID!, $t: String!, $m: TwoFactorMethod!, $c: String!) {
  verifyLoginChallenge(id: $id, token: $t, method: $m, code: $c) { token }
}"""
COMPLETE = """
mutation($id: ID!, $t: String!) { completeLoginChallenge(id: $id, token: $t) { token } }"""
CHALLENGE_QUERY = """
query($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { status } }"""
CHALLENGE_SUBSCRIPTION = """
subscription($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { status } }"""
REQUESTS = """
query { viewer { loginRequests(status: PENDING, first: 20) {
  edges { node { id nonce matchNumberRequired } } } } }"""
APPROVE = """
mutation($id: ID!, $s: String!, $m: Int) {
  approveLoginRequest(id: $id, signature: $s, matchNumber: $m) { status }
}"""
CLOSED_STATUSES = {"COMPLETED", "DENIED", "EXPIRED", "LOCKED"}


class RequestFailed(Exception):
    """A step of a flow that did not succeed; `code` is what the client saw."""

    def __init__(self, code: str, *, clean: bool = False) -> None:
        super().__init__(code)
        self.code = code
        # The server answered with an error, and no attempt of the call failed in transit: the
        # call's transaction rolled back, nothing of it was committed.
        self.clean = clean


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank on sorted samples; 0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ALLOWED_HOST, 0))
        port: int = probe.getsockname()[1]
    return port


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """One `kanmon` process this bench started; only this PID is ever signalled."""

    name: str
    args: list[str]
    log_dir: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.starts += 1
        log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        with log_path.open("wb") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *KANMON,
                *self.args,
                env=dict(os.environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C to the bench reaches it through stop() only
            )

    async def kill(self) -> None:
        """SIGKILL: the fault."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
            self.exits.append(self.process.returncode or 0)

    async def stop(self) -> None:
        """SIGTERM and wait; SIGKILL (this PID) after STOP_SECONDS."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()
        self.exits.append(process.returncode if process.returncode is not None else -1)

    def log_tail(self, characters: int = 2000) -> str:
        try:
            path = self.log_dir / f"{self.name}.{self.starts}.log"
            return path.read_text(errors="replace")[-characters:]
        except OSError:
            return "<no log>"


@dataclass
class GatewayProc(Proc):
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{ALLOWED_HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{ALLOWED_HOST}:{self.port}/graphql"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as http:
            deadline = time.monotonic() + START_SECONDS
            while time.monotonic() < deadline:
                if self.process is None or self.process.returncode is not None:
                    raise SystemExit(f"{self.name} exited before it was ready\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise SystemExit(f"{self.name} not ready after {START_SECONDS:.0f} s\n{self.log_tail()}")


# --- the client side: gateways, failover, errors -------------------------------------------------


@dataclass
class Timeline:
    started: float = 0.0
    fault_start: float | None = None
    fault_end: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, what: str, **extra: Any) -> None:
        self.events.append({"at_s": round(time.perf_counter() - self.started, 2), "what": what})
        self.events[-1].update(extra)

    def phase_at(self, moment: float) -> str:
        if self.fault_start is None or moment < self.fault_start:
            return "before"
        if self.fault_end is None or moment <= self.fault_end:
            return "during"
        return "after"


class Errors:
    """Every error a client saw, by code and by the phase it was seen in."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.by_code: Counter[str] = Counter()
        self.by_phase: dict[str, Counter[str]] = {phase: Counter() for phase in PHASES}
        self.recording = False

    def seen(self, code: str) -> None:
        if not self.recording:
            return
        self.by_code[code] += 1
        self.by_phase[self.timeline.phase_at(time.perf_counter())][code] += 1


class Router:
    """One HTTP client per gateway; a gateway that fails a request is avoided until /readyz
    answers again."""

    def __init__(self, gateways: list[GatewayProc], errors: Errors) -> None:
        self.gateways = gateways
        self.errors = errors
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self.clients = [
            httpx.AsyncClient(base_url=g.base_url, timeout=REQUEST_TIMEOUT, limits=limits)
            for g in gateways
        ]
        self.up = [True] * len(gateways)
        self.requests: Counter[int] = Counter()
        self.failovers = 0

    def pick(self, home: int) -> int:
        if self.up[home]:
            return home
        other = (home + 1) % len(self.gateways)
        return other if self.up[other] else home

    def mark_down(self, index: int) -> None:
        self.up[index] = False

    async def monitor(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=1.0) as probe:
            while not stop.is_set():
                for index, gateway in enumerate(self.gateways):
                    if self.up[index]:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        ready = await probe.get(f"{gateway.base_url}/readyz")
                        if ready.status_code == 200:
                            self.up[index] = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MONITOR_INTERVAL):
                        await stop.wait()

    async def graphql(
        self,
        home: int,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The data of one operation; a transport error is counted, the gateway marked down
        and the request sent again to the other one (REQUEST_ATTEMPTS in all)."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        payload = {"query": query, "variables": variables or {}}
        in_transit = False
        for attempt in range(REQUEST_ATTEMPTS):
            index = self.pick(home)
            if attempt:
                self.failovers += 1
            self.requests[index] += 1
            try:
                response = await self.clients[index].post("/graphql", json=payload, headers=headers)
            except httpx.TransportError as exc:
                self.errors.seen(type(exc).__name__)
                self.mark_down(index)
                in_transit = True
                await asyncio.sleep(0.05 * attempt)
                continue
            if response.status_code != 200:
                self.errors.seen(f"HTTP_{response.status_code}")
                raise RequestFailed(f"HTTP_{response.status_code}")
            body: dict[str, Any] = response.json()
            if body.get("errors"):
                code = str(body["errors"][0].get("extensions", {}).get("code", "UNKNOWN"))
                self.errors.seen(code)
                raise RequestFailed(code, clean=not in_transit)
            data: dict[str, Any] = body["data"]
            return data
        raise RequestFailed("NO_GATEWAY_ANSWERED")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


# --- what arrives at the fakes ----------------------------------------------------------------


@dataclass
class Arrival:
    at: float
    value: str


class Inbox:
    """Sorts what the fakes received (SMS bodies by number, FCM request ids by push token) and
    wakes the clients waiting for them."""

    def __init__(self, twilio: FakeTwilio, fcm: FakeFcm) -> None:
        self.twilio = twilio
        self.fcm = fcm
        self.sms: dict[str, list[Arrival]] = {}
        self.push: dict[str, list[Arrival]] = {}
        self.push_ids: Counter[str] = Counter()
        self._sms_seen = 0
        self._push_seen = 0
        self._waiters: dict[str, asyncio.Event] = {}

    def scan(self) -> None:
        now = time.perf_counter()
        requests = self.twilio.requests
        for request in requests[self._sms_seen :]:
            if request.sid is not None and request.to is not None:
                body = request.form.get("Body", "")
                self.sms.setdefault(request.to, []).append(Arrival(now, body))
                self._wake(f"sms:{request.to}")
        self._sms_seen = len(requests)
        messages = self.fcm.messages
        for message in messages[self._push_seen :]:
            request_id = message.data.get("request_id", "")
            self.push_ids[request_id] += 1
            if message.token is not None:
                self.push.setdefault(message.token, []).append(Arrival(now, request_id))
                self._wake(f"push:{message.token}")
        self._push_seen = len(messages)

    def _wake(self, key: str) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.scan()
            await asyncio.sleep(INBOX_INTERVAL)

    async def wait(
        self, box: dict[str, list[Arrival]], key: str, index: int, seconds: float
    ) -> Arrival | None:
        """The `index`-th arrival under `key` (a number or a push token), within `seconds`."""
        deadline = time.perf_counter() + seconds
        prefix = "sms" if box is self.sms else "push"
        for _ in range(10_000):
            found = box.get(key, [])
            if len(found) > index:
                return found[index]
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            waiter = self._waiters.setdefault(f"{prefix}:{key}", asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await waiter.wait()
        return None


# --- users, through the domain layer ---------------------------------------------------------


@dataclass
class TotpUser:
    username: str
    totp: pyotp.TOTP
    last_step: int


@dataclass
class SmsUser:
    user_id: UUID
    username: str
    number: str


@dataclass
class PushUser:
    user_id: UUID
    username: str
    app_token: str
    push_token: str
    key: Ed25519PrivateKey


def current_step() -> int:
    return int(time.time()) // otp.STEP_SECONDS


def number_for(index: int, salt: int) -> str:
    """A valid Japanese mobile number; each index its own block (S7 per-block limit)."""
    block = (salt + index * 7919) % 90_000 + 10_000
    return phones.parse(f"+8190{block:05d}{secrets.randbelow(1000):03d}").e164


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def enable_two_factor(services: Services, user_id: UUID, kind: ClientKind) -> str:
    """A session of `kind` (password proved), 2FA turned on from it; returns its token."""
    issued = await services.accounts.issue_session(
        user_id, Client(kind, "soak-setup", ALLOWED_HOST), password_proved=True
    )
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    async with services.uow() as work:
        await services.security.enable(session, work)
    return issued.token


def plain_users(prefix: str, start: int, count: int, password_hash: str, on: bool) -> list[User]:
    return [
        User(
            username=f"{prefix}{index}",
            username_key=username_key(f"{prefix}{index}"),
            password_hash=password_hash,
            two_factor_enabled=on,
        )
        for index in range(start, start + count)
    ]


async def totp_users(services: Services, prefix: str, count: int) -> list[TotpUser]:
    """The first signs up, enrolls and confirms TOTP and turns 2FA on; the rest are the same
    rows written in bulk with its password hash."""
    user = await services.accounts.sign_up(f"{prefix}0", PASSWORD)
    enrollment = await services.totp.begin(user.id, user.username)
    totp = pyotp.TOTP(enrollment.secret, digits=otp.DIGITS, interval=otp.STEP_SECONDS)
    step = current_step()
    await services.totp.confirm(user.id, totp.generate_otp(step))
    await enable_two_factor(services, user.id, ClientKind.WEB)
    found = [TotpUser(user.username, totp, step)]
    rows = plain_users(prefix, 1, count - 1, user.password_hash, on=True)
    confirmed = current_step() - 1
    credentials: list[TotpCredential] = []
    for row in rows:
        secret = otp.new_secret()
        credentials.append(
            TotpCredential(
                user_id=row.id,
                secret_encrypted=services.box.encrypt(secret, context=totp_context(row.id)),
                last_step=confirmed,
                confirmed_at=datetime.now(UTC),
            )
        )
        totp = pyotp.TOTP(secret, digits=otp.DIGITS, interval=otp.STEP_SECONDS)
        found.append(TotpUser(row.username, totp, confirmed))
    await User.bulk_create(rows, batch_size=BULK_BATCH)
    await TotpCredential.bulk_create(credentials, batch_size=BULK_BATCH)
    return sorted(found, key=lambda u: u.last_step)


async def sms_users(services: Services, inbox: Inbox, prefix: str, count: int) -> list[SmsUser]:
    """The first adds a phone (its code travels outbox -> Redis -> sms worker -> fake Twilio),
    verifies it and turns 2FA on; the rest are bulk rows with a verified phone."""
    salt = secrets.randbelow(90_000)
    number = number_for(0, salt)
    user = await services.accounts.sign_up(f"{prefix}0", PASSWORD)
    async with services.uow() as work:
        await services.sms.add_phone(user.id, number, None, ALLOWED_HOST, work)
    arrived = await inbox.wait(inbox.sms, number, 0, SETUP_WAIT_SECONDS)
    match = CODE.search(arrived.value) if arrived else None
    if match is None:
        raise SystemExit("setup: the phone's verification SMS never reached the fake Twilio")
    await services.sms.verify_phone(user.id, match.group(1))
    await enable_two_factor(services, user.id, ClientKind.WEB)
    found = [SmsUser(user.id, user.username, number)]
    rows = plain_users(prefix, 1, count - 1, user.password_hash, on=True)
    now = datetime.now(UTC)
    phone_rows: list[Phone] = []
    for index, row in enumerate(rows, start=1):
        number = number_for(index, salt)
        phone_rows.append(Phone(user_id=row.id, number=number, verified_at=now))
        found.append(SmsUser(row.id, row.username, number))
    await User.bulk_create(rows, batch_size=BULK_BATCH)
    await Phone.bulk_create(phone_rows, batch_size=BULK_BATCH)
    return found


async def push_users(services: Services, prefix: str, count: int) -> list[PushUser]:
    """Each: an IOS session enrolls a device (its own Ed25519 key and push token) and turns
    2FA on. The first signs up; the rest are bulk user rows with its password hash."""
    first = await services.accounts.sign_up(f"{prefix}0", PASSWORD)
    rows = plain_users(prefix, 1, count - 1, first.password_hash, on=False)
    await User.bulk_create(rows, batch_size=BULK_BATCH)
    found: list[PushUser] = []
    for user_id, username in [(first.id, first.username)] + [(r.id, r.username) for r in rows]:
        issued = await services.accounts.issue_session(
            user_id, Client(ClientKind.IOS, "soak-app", ALLOWED_HOST), password_proved=True
        )
        session = await services.accounts.session_for_token(issued.token)
        assert session is not None
        key = Ed25519PrivateKey.generate()
        push_token = f"soak-{secrets.token_urlsafe(24)}"
        async with services.uow():
            await services.push.enroll(
                session, "soak phone", Platform.IOS, push_token, public_key_b64(key)
            )
        async with services.uow() as work:
            await services.security.enable(session, work)
        found.append(PushUser(user_id, username, issued.token, push_token, key))
    return found


# --- the flows ---------------------------------------------------------------------------------


@dataclass
class FlowRecord:
    kind: str
    home: int
    started: float
    ended: float
    ok: bool
    failure: str | None = None


@dataclass
class Load:
    router: Router
    inbox: Inbox
    errors: Errors
    totp_pool: deque[TotpUser]
    sms_pool: deque[SmsUser]
    push_pool: deque[PushUser]
    records: list[FlowRecord] = field(default_factory=list)
    quarantined: Counter[str] = field(default_factory=Counter)
    pool_waits: Counter[str] = field(default_factory=Counter)


async def login(load: Load, home: int, username: str) -> dict[str, Any]:
    data = await load.router.graphql(
        home, LOGIN, {"u": username, "p": PASSWORD, "k": ClientKind.WEB.value, "n": "soak"}
    )
    result: dict[str, Any] = data["login"]
    if result["__typename"] != "LoginChallenge":
        load.errors.seen("NO_CHALLENGE")
        raise RequestFailed("NO_CHALLENGE")
    return result


async def verify(load: Load, home: int, challenge: dict[str, Any], method: str, code: str) -> None:
    variables = {"id": challenge["id"], "t": challenge["token"], "m": method, "c": code}
    data = await load.router.graphql(home, VERIFY, variables)
    if not data["verifyLoginChallenge"]["token"]:
        raise RequestFailed("NO_SESSION")


async def totp_flow(load: Load, home: int) -> bool:
    """False when no account is free this step (the client waits for the next one)."""
    pool = load.totp_pool
    if not pool or pool[0].last_step >= current_step():
        return False
    user = pool.popleft()
    try:
        challenge = await login(load, home, user.username)
        if "TOTP" not in challenge["methods"]:
            load.errors.seen("NO_TOTP")
            raise RequestFailed("NO_TOTP")
        step = current_step()
        user.last_step = step
        await verify(load, home, challenge, "TOTP", user.totp.generate_otp(step))
    finally:
        user.last_step = max(user.last_step, current_step())
        pool.append(user)
    return True


async def sms_flow(load: Load, home: int) -> bool:
    if not load.sms_pool:
        return False
    user = load.sms_pool.popleft()
    healthy = False
    try:
        before = len(load.inbox.sms.get(user.number, []))
        try:
            challenge = await login(load, home, user.username)
        except RequestFailed as exc:
            healthy = exc.clean  # no challenge, no code on its way
            raise
        if "SMS" not in challenge["methods"]:
            load.errors.seen("NO_SMS")
            raise RequestFailed("NO_SMS")
        arrived = await load.inbox.wait(load.inbox.sms, user.number, before, SMS_WAIT_SECONDS)
        if arrived is None:
            load.errors.seen("SMS_NOT_ARRIVED")
            raise RequestFailed("SMS_NOT_ARRIVED")
        match = CODE.search(arrived.value)
        if match is None:
            load.errors.seen("SMS_WITHOUT_CODE")
            raise RequestFailed("SMS_WITHOUT_CODE")
        await verify(load, home, challenge, "SMS", match.group(1))
        healthy = True
    finally:
        # A user whose flow failed may still get a late code: it would be taken for the next
        # login's, so the user leaves the pool.
        if healthy:
            load.sms_pool.append(user)
        else:
            load.quarantined["sms"] += 1
    return True


async def approve_from_app(
    load: Load, app_home: int, user: PushUser, before: int, match: int | None
) -> None:
    """The app: the FCM message names the request; the nonce comes from the API (P10)."""
    arrived = await load.inbox.wait(load.inbox.push, user.push_token, before, PUSH_WAIT_SECONDS)
    if arrived is None:
        load.errors.seen("PUSH_NOT_ARRIVED")  # the app's pull-to-refresh takes over
    data = await load.router.graphql(app_home, REQUESTS, token=user.app_token)
    nodes = [edge["node"] for edge in data["viewer"]["loginRequests"]["edges"]]
    wanted = [n for n in nodes if arrived is None or n["id"] == arrived.value]
    if not wanted:
        load.errors.seen("REQUEST_NOT_LISTED")
        raise RequestFailed("REQUEST_NOT_LISTED")
    node = wanted[0]
    number = match if node["matchNumberRequired"] else None
    message = f"{node['id']}:{node['nonce']}:APPROVE"
    if number is not None:
        message += f":{number}"
    signature = base64.b64encode(user.key.sign(message.encode())).decode()
    variables = {"id": node["id"], "s": signature, "m": number}
    data = await load.router.graphql(app_home, APPROVE, variables, token=user.app_token)
    if data["approveLoginRequest"]["status"] != "APPROVED":
        load.errors.seen("NOT_APPROVED")
        raise RequestFailed("NOT_APPROVED")


async def wait_by_polling(
    load: Load, home: int, challenge: dict[str, Any], deadline: float
) -> None:
    variables = {"id": challenge["id"], "t": challenge["token"]}
    while time.perf_counter() < deadline:
        data = await load.router.graphql(home, CHALLENGE_QUERY, variables)
        status = data["loginChallenge"]["status"]
        if status == "APPROVED":
            return
        if status in CLOSED_STATUSES:
            load.errors.seen(f"CHALLENGE_{status}")
            raise RequestFailed(f"CHALLENGE_{status}")
        await asyncio.sleep(POLL_INTERVAL)
    load.errors.seen("APPROVAL_TIMEOUT")
    raise RequestFailed("APPROVAL_TIMEOUT")


async def wait_by_subscription(
    load: Load, home: int, challenge: dict[str, Any], deadline: float
) -> None:
    """graphql-transport-ws on the client's gateway; if the socket fails (its gateway killed),
    the error is counted and the client polls (through the router, so on the other gateway)."""
    index = load.router.pick(home)
    url = load.router.gateways[index].ws_url
    subscribe = {
        "id": "1",
        "type": "subscribe",
        "payload": {
            "query": CHALLENGE_SUBSCRIPTION,
            "variables": {"id": challenge["id"], "t": challenge["token"]},
        },
    }
    try:
        async with asyncio.timeout(max(0.1, deadline - time.perf_counter())):
            async with ws_connect(url, subprotocols=[WS_PROTOCOL], open_timeout=5) as socket_:
                await socket_.send(json.dumps({"type": "connection_init", "payload": {}}))
                await socket_.send(json.dumps(subscribe))
                for _ in range(1000):
                    message = json.loads(await socket_.recv())
                    kind = message.get("type")
                    if kind == "ping":
                        await socket_.send(json.dumps({"type": "pong"}))
                    elif kind == "next":
                        payload = message.get("payload") or {}
                        if payload.get("errors"):
                            code = payload["errors"][0].get("extensions", {}).get("code", "?")
                            load.errors.seen(str(code))
                            raise RequestFailed(str(code))
                        status = payload["data"]["loginChallenge"]["status"]
                        if status == "APPROVED":
                            return
                        if status in CLOSED_STATUSES:
                            load.errors.seen(f"CHALLENGE_{status}")
                            raise RequestFailed(f"CHALLENGE_{status}")
                    elif kind == "error":
                        errors = message.get("payload") or [{}]
                        code = str(errors[0].get("extensions", {}).get("code", "WS_ERROR"))
                        load.errors.seen(code)
                        raise RequestFailed(code)
                    elif kind == "complete":
                        break
    except TimeoutError:
        load.errors.seen("APPROVAL_TIMEOUT")
        raise RequestFailed("APPROVAL_TIMEOUT") from None
    except (OSError, WebSocketException) as exc:
        load.errors.seen(f"WS_{type(exc).__name__}")
        load.router.mark_down(index)
    await wait_by_polling(load, home, challenge, deadline)


async def push_flow(load: Load, home: int, subscribe: bool) -> bool:
    if not load.push_pool:
        return False
    user = load.push_pool.popleft()
    healthy = False
    app_home = (home + 1) % GATEWAYS
    try:
        before = len(load.inbox.push.get(user.push_token, []))
        try:
            challenge = await login(load, home, user.username)
        except RequestFailed as exc:
            healthy = exc.clean  # no challenge, no login request
            raise
        if "PUSH" not in challenge["methods"]:
            load.errors.seen("NO_PUSH")
            raise RequestFailed("NO_PUSH")
        deadline = time.perf_counter() + APPROVAL_WAIT_SECONDS
        waiting = wait_by_subscription if subscribe else wait_by_polling
        web = asyncio.create_task(waiting(load, home, challenge, deadline))
        try:
            await approve_from_app(load, app_home, user, before, challenge.get("matchNumber"))
            await web
        finally:
            if not web.done():
                web.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestFailed):
                    await web
        data = await load.router.graphql(
            home, COMPLETE, {"id": challenge["id"], "t": challenge["token"]}
        )
        if not data["completeLoginChallenge"]["token"]:
            raise RequestFailed("NO_SESSION")
        healthy = True
    finally:
        # A failed flow can leave a pending request (P2 allows 3): the user leaves the pool.
        if healthy:
            load.push_pool.append(user)
        else:
            load.quarantined["push"] += 1
    return True


async def client_loop(load: Load, number: int, deadline: float, think: float) -> None:
    kind = KINDS[number % len(KINDS)]
    home = number % GATEWAYS
    subscribe = (number // (len(KINDS) * GATEWAYS)) % 2 == 0
    for _ in range(MAX_FLOWS_PER_CLIENT):
        started = time.perf_counter()
        if started >= deadline:
            return
        failure: str | None = None
        try:
            async with asyncio.timeout(FLOW_CAP_SECONDS):
                if kind == "totp":
                    ran = await totp_flow(load, home)
                elif kind == "sms":
                    ran = await sms_flow(load, home)
                else:
                    ran = await push_flow(load, home, subscribe)
        except RequestFailed as exc:
            ran, failure = True, exc.code
        except TimeoutError:
            load.errors.seen("FLOW_TIMEOUT")
            ran, failure = True, "FLOW_TIMEOUT"
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            load.errors.seen(type(exc).__name__)
            ran, failure = True, type(exc).__name__
        if not ran:
            load.pool_waits[kind] += 1
            await asyncio.sleep(0.25)
            continue
        load.records.append(
            FlowRecord(kind, home, started, time.perf_counter(), failure is None, failure)
        )
        if think:
            await asyncio.sleep(think)


# --- faults, drain, counting -------------------------------------------------------------------


async def inject_faults(
    timeline: Timeline, seconds: float, pause: float, sms_worker: Proc, gateway: GatewayProc
) -> None:
    await asyncio.sleep(max(0.0, timeline.started + seconds / 3 - time.perf_counter()))
    timeline.fault_start = time.perf_counter()
    old_pid = sms_worker.pid
    await sms_worker.kill()
    timeline.mark("sms worker SIGKILL", pid=old_pid)
    await asyncio.sleep(pause)
    await sms_worker.start()
    timeline.mark("sms worker restarted", pid=sms_worker.pid)
    await asyncio.sleep(max(0.0, timeline.started + seconds / 2 - time.perf_counter()))
    old_pid = gateway.pid
    await gateway.kill()
    timeline.mark(f"{gateway.name} SIGKILL", pid=old_pid)
    await asyncio.sleep(pause)
    await gateway.start()
    await gateway.wait_ready()
    timeline.fault_end = time.perf_counter()
    timeline.mark(f"{gateway.name} restarted and ready", pid=gateway.pid)


async def outstanding(sms_ids: list[UUID], push_ids: list[UUID], inbox: Inbox) -> tuple[int, int]:
    inbox.scan()
    sms = await SmsMessage.filter(
        user_id__in=sms_ids, status__in=[SmsStatus.QUEUED, SmsStatus.SENDING]
    ).count()
    requests = await LoginRequest.filter(user_id__in=push_ids).values_list("id", flat=True)
    push = sum(1 for r in requests if str(r) not in inbox.push_ids)
    return sms, push


async def drain(sms_ids: list[UUID], push_ids: list[UUID], inbox: Inbox, seconds: float) -> float:
    started = time.perf_counter()
    for _ in range(int(seconds / DRAIN_POLL_SECONDS) + 1):
        if await outstanding(sms_ids, push_ids, inbox) == (0, 0):
            break
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    return time.perf_counter() - started


async def count_sms(services: Services, user_ids: list[UUID], inbox: Inbox) -> dict[str, Any]:
    rows = await SmsMessage.filter(user_id__in=user_ids).values_list("status", flat=True)
    statuses = Counter(str(getattr(s, "value", s)) for s in rows)
    delivered = {SmsStatus.SENT.value, SmsStatus.DELIVERED.value}
    not_sent = sum(n for status, n in statuses.items() if status not in delivered)
    codes = await SmsCode.filter(user_id__in=user_ids)
    never_received = unreadable = 0
    for code in codes:
        if code.code_sealed is None:
            unreadable += 1
            continue
        plain = services.box.decrypt(code.code_sealed, context=f"sms:{code.id}")
        bodies = [a.value for a in inbox.sms.get(code.number, [])]
        if not any(plain in body for body in bodies):
            never_received += 1
    arrived = [(number, a.value) for number, found in inbox.sms.items() for a in found]
    duplicates = sum(n - 1 for n in Counter(arrived).values() if n > 1)
    return {
        "messages": len(rows),
        "by_status": dict(statuses),
        "not_sent_or_delivered": not_sent,
        "codes": len(codes),
        "codes_login": sum(1 for c in codes if c.purpose is SmsCodePurpose.LOGIN),
        "codes_never_received": never_received,
        "codes_unreadable": unreadable,
        "received_at_fake": len(arrived),
        "duplicates_at_fake": duplicates,
        "lost": not_sent + never_received,
    }


async def count_push(user_ids: list[UUID], inbox: Inbox) -> dict[str, Any]:
    requests = await LoginRequest.filter(user_id__in=user_ids).values_list("id", "status")
    lost = [str(r) for r, _ in requests if str(r) not in inbox.push_ids]
    return {
        "login_requests": len(requests),
        "by_status": dict(Counter(str(getattr(s, "value", s)) for _, s in requests)),
        "fcm_messages": sum(inbox.push_ids.values()),
        "duplicates_at_fake": sum(n - 1 for n in inbox.push_ids.values() if n > 1),
        "lost": len(lost),
        "lost_ids": lost[:10],
    }


def latency_summary(records: list[FlowRecord], timeline: Timeline) -> dict[str, Any]:
    def phase_of(record: FlowRecord) -> str:
        if timeline.fault_start is None or record.ended < timeline.fault_start:
            return "before"
        if timeline.fault_end is not None and record.started > timeline.fault_end:
            return "after"
        return "during"

    summary: dict[str, Any] = {}
    for phase in PHASES:
        done = [r for r in records if r.ok and phase_of(r) == phase]
        ordered = sorted(r.ended - r.started for r in done)
        entry: dict[str, Any] = {
            "flows": len(done),
            "failed": sum(1 for r in records if not r.ok and phase_of(r) == phase),
            "p50_ms": ms(percentile(ordered, 50)),
            "p99_ms": ms(percentile(ordered, 99)),
            "max_ms": ms(ordered[-1]) if ordered else 0.0,
        }
        for kind in KINDS:
            times = sorted(r.ended - r.started for r in done if r.kind == kind)
            entry[f"{kind}_p99_ms"] = ms(percentile(times, 99))
        summary[phase] = entry
    return summary


# --- backends and the entry point --------------------------------------------------------------


async def ensure_postgres_database(url: str) -> None:
    import asyncpg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"database name {name!r}: letters, digits and _ only")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres", query=""))
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def load_fakes() -> tuple[type[FakeTwilio], type[FakeFcm]]:
    """The fakes the tests use (tests/fakes): this script runs from bench/, not the repo root."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.fakes.fcm import FakeFcm as fcm_class
    from tests.fakes.twilio import FakeTwilio as twilio_class

    return twilio_class, fcm_class


def check_host(url: str, option: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.startswith(("postgres", "redis")) and parts.hostname != ALLOWED_HOST:
        raise SystemExit(f"{option} must point at {ALLOWED_HOST}")


def process_environment(
    database_url: str, redis_url: str, twilio: FakeTwilio, fcm: FakeFcm, folder: Path, port: int
) -> dict[str, str]:
    key = os.environ.get("KANMON_SECRET_KEY") or new_key_text()
    return {
        "KANMON_ENV": "production",
        "KANMON_DATABASE_URL": database_url,
        "KANMON_REDIS_URL": redis_url,
        "KANMON_SECRET_KEY": key,
        "KANMON_DATABASE_POOL_SIZE": "8",
        "KANMON_PUBLIC_URL": f"http://{ALLOWED_HOST}:{port}",
        "KANMON_SMS_PROVIDER": "twilio",
        "KANMON_TWILIO_BASE_URL": twilio.base_url,
        "KANMON_TWILIO_ACCOUNT_SID": twilio.account_sid,
        "KANMON_TWILIO_AUTH_TOKEN": twilio.auth_token,
        "KANMON_TWILIO_FROM": "+15005550006",
        "KANMON_FCM_CREDENTIALS": str(fcm.write_service_account(folder / "fcm.json")),
        "KANMON_FCM_ENDPOINT": fcm.endpoint,
        "KANMON_FCM_PROJECT_ID": fcm.project_id,
        "KANMON_SMS_PER_NUMBER_PER_HOUR": HIGH_LIMIT,
        "KANMON_SMS_PER_ACCOUNT_PER_HOUR": HIGH_LIMIT,
        "KANMON_SMS_PER_IP_PER_HOUR": HIGH_LIMIT,
        "KANMON_SMS_PER_BLOCK_PER_HOUR": HIGH_LIMIT,
        "KANMON_SMS_GLOBAL_PER_MINUTE": HIGH_LIMIT,
        "KANMON_LOGIN_FAILURES_PER_IP": HIGH_LIMIT,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="load time")
    parser.add_argument("--concurrency", type=int, default=12, help="clients, a third per kind")
    parser.add_argument("--think", type=float, default=0.05, help="pause between a client's flows")
    parser.add_argument("--restart-after", type=float, default=3.0, help="kill -> restart (s)")
    parser.add_argument("--drain-seconds", type=float, default=30.0)
    parser.add_argument("--totp-users", type=int, default=1500)
    parser.add_argument("--sms-users", type=int, default=80)
    parser.add_argument("--push-users", type=int, default=40)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument(
        "--embedded", action="store_true", help="SQLite in a temp dir and an embedded valkey"
    )
    args = parser.parse_args(argv)
    if not 6 <= args.seconds <= 3600:
        parser.error("--seconds 6..3600")
    if not 3 <= args.concurrency <= 96:
        parser.error("--concurrency 3..96")
    if not 0 <= args.think <= 10 or not 0 <= args.restart_after <= 60:
        parser.error("--think 0..10, --restart-after 0..60")
    if not 0 <= args.drain_seconds <= 600:
        parser.error("--drain-seconds 0..600")
    if min(args.totp_users, args.sms_users, args.push_users) < 2:
        parser.error("at least 2 users of each kind")
    if not args.embedded:
        if not args.database_url.startswith(("postgres://", "asyncpg://")):
            parser.error("--database-url: postgres:// (or --embedded for SQLite)")
        check_host(args.database_url, "--database-url")
        check_host(args.redis_url, "--redis-url")
    return args


@dataclass
class Cluster:
    gateways: list[GatewayProc]
    workers: dict[str, Proc]

    def all(self) -> list[Proc]:
        return [*self.gateways, *self.workers.values()]

    async def stop(self) -> dict[str, list[int]]:
        for proc in reversed(self.all()):
            await proc.stop()
        return {proc.name: proc.exits for proc in self.all()}


async def start_cluster(folder: Path, ports: list[int]) -> Cluster:
    gateways = [
        GatewayProc(
            f"gateway-{index}",
            ["serve", "--host", ALLOWED_HOST, "--port", str(port)],
            folder,
            port=port,
        )
        for index, port in enumerate(ports)
    ]
    workers = {
        q: Proc(f"worker-{q}", ["worker", "--queue", q], folder)
        for q in ("sms", "push", "maintenance")
    }
    cluster = Cluster(gateways, workers)
    for proc in cluster.all():
        await proc.start()
    await asyncio.gather(*(g.wait_ready() for g in gateways))
    return cluster


async def soak(
    args: argparse.Namespace, folder: Path, database_url: str, redis_url: str
) -> dict[str, Any]:
    twilio_class, fcm_class = load_fakes()
    twilio = twilio_class(
        account_sid="AC" + secrets.token_hex(16), auth_token=secrets.token_hex(16)
    )
    fcm = fcm_class(project_id="kanmon-soak")
    async with twilio, fcm:
        ports = [free_port() for _ in range(GATEWAYS)]
        env = process_environment(database_url, redis_url, twilio, fcm, folder, ports[0])
        for name in [k for k in os.environ if k.startswith("KANMON_")]:
            del os.environ[name]
        os.environ.update(env)
        settings = Settings()
        await apply_migrations(settings.resolved_database_url())
        await open_database(settings.resolved_database_url())
        redis = redis_client(redis_url)
        services = build_services(settings, redis, passwords=Passwords())
        cluster = await start_cluster(folder, ports)
        timeline = Timeline(started=time.perf_counter())
        errors = Errors(timeline)
        router = Router(cluster.gateways, errors)
        inbox = Inbox(twilio, fcm)
        stop = asyncio.Event()
        helpers = [asyncio.create_task(inbox.run(stop)), asyncio.create_task(router.monitor(stop))]
        try:
            return await run_load(args, services, cluster, router, inbox, errors, timeline, stop)
        finally:
            stop.set()
            await asyncio.gather(*helpers, return_exceptions=True)
            await router.aclose()
            await cluster.stop()
            await services.close()
            await close_database()


async def run_load(
    args: argparse.Namespace,
    services: Services,
    cluster: Cluster,
    router: Router,
    inbox: Inbox,
    errors: Errors,
    timeline: Timeline,
    stop: asyncio.Event,
) -> dict[str, Any]:
    setup_started = time.perf_counter()
    prefix = f"soak{secrets.token_hex(3)}"
    totp = await totp_users(services, f"{prefix}t_", args.totp_users)
    sms = await sms_users(services, inbox, f"{prefix}s_", args.sms_users)
    push = await push_users(services, f"{prefix}p_", args.push_users)
    load = Load(router, inbox, errors, deque(totp), deque(sms), deque(push))
    # One flow of each kind, not counted: the pipelines work (and the push worker holds its
    # OAuth token) before the clock starts.
    warm = Load(router, inbox, errors, load.totp_pool, load.sms_pool, load.push_pool)
    for number in range(len(KINDS)):
        await client_loop(warm, number, time.perf_counter() + 0.001, 0.0)
    failed = [r for r in warm.records if not r.ok]
    if failed:
        raise SystemExit(f"warm-up flows failed: {failed}")
    setup_s = time.perf_counter() - setup_started

    errors.recording = True
    timeline.started = time.perf_counter()
    deadline = timeline.started + args.seconds
    faults = asyncio.create_task(
        inject_faults(
            timeline, args.seconds, args.restart_after, cluster.workers["sms"], cluster.gateways[1]
        )
    )
    clients = [
        asyncio.create_task(client_loop(load, n, deadline, args.think))
        for n in range(args.concurrency)
    ]
    await asyncio.wait(clients, timeout=args.seconds + FLOW_CAP_SECONDS + 5)
    load_s = time.perf_counter() - timeline.started
    cancelled = 0
    for task in clients:
        if not task.done():
            task.cancel()
            cancelled += 1
    await asyncio.gather(*clients, return_exceptions=True)
    try:
        async with asyncio.timeout(START_SECONDS + args.restart_after + 5):
            await faults
    except TimeoutError:
        timeline.mark("fault task did not finish")
    errors.recording = False

    sms_ids = [u.user_id for u in sms]
    push_ids = [u.user_id for u in push]
    drain_s = await drain(sms_ids, push_ids, inbox, args.drain_seconds)
    stop.set()
    sms_count = await count_sms(services, sms_ids, inbox)
    push_count = await count_push(push_ids, inbox)
    exits = await cluster.stop()

    completed = Counter(r.kind for r in load.records if r.ok)
    failed_by_kind: dict[str, Counter[str]] = {}
    for record in load.records:
        if not record.ok:
            failed_by_kind.setdefault(record.kind, Counter())[record.failure or "?"] += 1
    return {
        "bench": "soak",
        "params": {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "think_s": args.think,
            "restart_after_s": args.restart_after,
            "users": {"totp": len(totp), "sms": len(sms), "push": len(push)},
            "database": "sqlite" if args.embedded else "postgres",
            "redis": "embedded valkey" if args.embedded else redis_url_safe(args.redis_url),
            "setup_s": round(setup_s, 1),
        },
        "flows_completed": sum(completed.values()),
        "flows_completed_by_kind": {k: completed[k] for k in KINDS},
        "flows_per_s": round(sum(completed.values()) / load_s, 1) if load_s else 0.0,
        "flows_failed": sum(1 for r in load.records if not r.ok),
        "flows_failed_by_kind": {k: dict(v) for k, v in failed_by_kind.items()},
        "flows_cancelled": cancelled,
        "client_errors": sum(errors.by_code.values()),
        "client_errors_by_code": dict(errors.by_code),
        "client_errors_by_phase": {p: dict(c) for p, c in errors.by_phase.items()},
        "messages_lost": sms_count["lost"] + push_count["lost"],
        "sms": sms_count,
        "push": push_count,
        "latency": latency_summary(load.records, timeline),
        "faults": timeline.events,
        "requests_by_gateway": {str(k): v for k, v in sorted(router.requests.items())},
        "failovers": router.failovers,
        "pool_waits": dict(load.pool_waits),
        "users_quarantined": dict(load.quarantined),
        "drain_s": round(drain_s, 1),
        "load_s": round(load_s, 1),
        "process_exits": exits,
    }


def redis_url_safe(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{host}{port}"))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="kanmon-soak-"))
    embedded: Any = None
    try:
        if args.embedded:
            from gateway.dev import start_embedded_redis

            database_url = f"sqlite://{folder / 'soak.sqlite3'}"
            embedded, redis_url = start_embedded_redis()
        else:
            database_url, redis_url = args.database_url, args.redis_url
            await ensure_postgres_database(database_url)
        report = await soak(args, folder, database_url, redis_url)
    finally:
        if embedded is not None:
            embedded.stop()
    report["logs"] = str(folder)
    return report


def run() -> None:
    args = parse_args()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(main(args))
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    run()
