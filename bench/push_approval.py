"""Push approval benchmark: web subscriptions on one gateway, approvals from apps on another,
login -> FCM dispatch, fan-out throughput and gateway memory per open subscription.

It starts no Kanmon process. It starts only a fake FCM (tests.fakes.fcm.FakeFcm: FCM HTTP v1 and
the OAuth token endpoint, on 127.0.0.1) on the port of KANMON_FCM_ENDPOINT (or --fcm-port) and
writes that fake's service-account file to KANMON_FCM_CREDENTIALS (or --fcm-credentials). The
fake's key is made when the bench starts, so the push worker must be started AFTER the bench
has written the file; the bench waits for it (--worker-wait) by sending a probe login and
waiting for its push. Everything shares one environment (PostgreSQL + Redis):

    export KANMON_DATABASE_URL=postgres://postgres@127.0.0.1:5432/kanmon_bench_push
    export KANMON_REDIS_URL=redis://127.0.0.1:6379/12 KANMON_SECRET_KEY=...
    export KANMON_FCM_CREDENTIALS=/tmp/pushbench/fcm-sa.json
    export KANMON_FCM_ENDPOINT=http://127.0.0.1:8097 KANMON_FCM_PROJECT_ID=kanmon-bench
    kanmon migrate
    kanmon serve --port 8001 &          # gateway A: web logins and subscriptions (1 process)
    kanmon serve --port 8002 &          # gateway B: the apps' queries and approvals
    rm -f "$KANMON_FCM_CREDENTIALS"
    .venv/bin/python bench/push_approval.py --a http://127.0.0.1:8001 \
        --b http://127.0.0.1:8002 > result.json &
    until [ -s "$KANMON_FCM_CREDENTIALS" ]; do sleep 0.1; done   # written atomically
    kanmon worker --queue push &        # reads the file at startup
    wait %3                             # the bench; then stop the three processes by PID

Start gateway A afresh for the memory figure: a process's RSS does not shrink when sockets
close, so on a gateway that has already held many sockets the freed memory is reused and the
rise per subscription reads near zero. `--worker-pidfile` (a file with the push worker's pid,
read at phase 5) adds the worker's CPU per fan-out job.

The gateways need no FCM variables (only the push worker sends); giving them the same
environment does no harm. Gateway A must be one process (`--workers 1`, the default): its RSS
is read from /proc/<pid>/status, the pid found with `ss -ltnp` on A's port or --gateway-pid.

Data, through the domain layer on the same database with the same key: the first user the whole
way (sign up, an IOS session, `PushService.enroll` with an Ed25519 key the bench holds, 2FA on),
the rest in bulk with the same rows (user with 2FA on and the first one's argon2 hash, an IOS
session with its device, the device with its sealed login-code secret).

Phases:
  1. logins: every user logs in as WEB over HTTP on A (--login-rate per second in an open loop,
     20 by default: latency at a stated load, as the approvals' is; or, with --login-rate 0, a
     closed loop of --login-concurrency in flight, which saturates the cores with argon2
     verifies, so its latency is that queue: in flight / rate) and gets
     a challenge (id, token, matchNumber). Login -> FCM dispatch: from sending `login` to the
     fake receiving the message whose data.request_id is that login's request (split into the
     login response and what follows: commit -> outbox relay -> arq -> worker -> FCM).
     Each app then reads its request id and nonce on B
     (`viewer { loginRequests { edges { node { id nonce } } } }`, bearer = the device session).
  2. subscriptions: one websocket per challenge on A (graphql-transport-ws, compression=None),
     `loginChallenge(id, token)`, each waiting for its first message (PENDING). A's VmRSS before
     and after (1 s settle) / N = memory per open subscription.
  3. approvals: open loop at --rate per second on B (`approveLoginRequest` over 64 keep-alive
     connections of bench/keepalive.py, not httpx: see there; signature over
     `{id}:{nonce}:APPROVE:{matchNumber}`), approve -> event = from sending the mutation to the
     APPROVED `next` on A's websocket. The first --approve-warmup are not counted.
  4. (--memory-subscriptions K > N) K - N more sockets on A, spread over --memory-challenges
     extra pending challenges (many sockets per challenge: each still its own subscription,
     generator and hub waiter; they share the hub's channel entries), RSS again: per
     subscription from the baseline of phase 2 over all K, and over the extra ones alone.
  5. fan-out burst: --burst challenges opened through the domain layer in one unit of work
     (LoginService._open_challenge, what `login` runs after the password check: no argon2, so
     the worker and not the gateway sets the pace); from the end of the writes (commit and the
     outbox relay included) to the last message at the fake, divided by --push-workers.

Every wait is bounded; only 127.0.0.1 is contacted. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import ipaddress
import itertools
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # tests.fakes.fcm, tests.ws_client

from tests.fakes.fcm import FakeFcm, Receive, Scope, Send  # noqa: E402
from tests.ws_client import PROTOCOL  # noqa: E402

import keepalive  # noqa: E402
from gateway.accounts.clients import ClientKind  # noqa: E402
from gateway.accounts.models import Session, User  # noqa: E402
from gateway.accounts.service import Client, username_key  # noqa: E402
from gateway.container import Services, build_services, redis_client  # noqa: E402
from gateway.core import otp  # noqa: E402
from gateway.core.crypto import new_token, token_digest  # noqa: E402
from gateway.core.db import close_database, open_database  # noqa: E402
from gateway.core.passwords import Passwords  # noqa: E402
from gateway.factors.push.models import Device, LoginRequest, Platform  # noqa: E402
from gateway.factors.summary import method_summary  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from keepalive import HttpError, KeepAliveConnection, RequestFailed  # noqa: E402

PASSWORD = "bench horse battery staple"
ALLOWED_HOST = "127.0.0.1"
BULK_BATCH = 1000
SETUP_PARALLELISM = 16
STEP_SECONDS = 20.0  # bound on any single network step
SETTLE_SECONDS = 1.0  # before reading RSS
MAX_IN_FLIGHT_APPROVALS = 512
# Approvals go out over this many keep-alive connections (bench/keepalive.py), one approval on
# each at a time; more wait for a free one. httpx, which this bench used before, spent about
# 1 ms of the bench's CPU per approval (on the cores the gateways use) before the request left.
APPROVAL_CONNECTIONS = 64

LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!, $n: String) {
  login(username: $u, password: $p, client: {kind: $k, name: $n}) {
    __typename
    ... on LoginChallenge { id token status methods matchNumber }
  }
}"""
REQUESTS = "query { viewer { loginRequests { edges { node { id nonce } } } } }"
APPROVE = """
mutation($id: ID!, $s: String!, $m: Int) {
  approveLoginRequest(id: $id, signature: $s, matchNumber: $m) { id status }
}"""
WATCH = """
subscription($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { id status } }"""


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank on sorted samples; 0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def spread(samples: Iterable[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1]) if ordered else 0.0,
    }


def log(text: str) -> None:
    sys.stderr.write(f"[push_approval {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def count(errors: dict[str, int], code: str) -> None:
    errors[code] = errors.get(code, 0) + 1


async def graphql(
    http: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else None
    response = await http.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    if response.status_code != 200:
        raise RequestFailed(f"HTTP_{response.status_code}")
    body = response.json()
    if body.get("errors"):
        raise RequestFailed(str(body["errors"][0].get("extensions", {}).get("code", "ERROR")))
    data: dict[str, Any] = body["data"]
    return data


async def bounded_gather(coroutines: list[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


class ConnectionQueue:
    """Keep-alive connections to one gateway; each request takes an idle one."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self._connections = [
            KeepAliveConnection(parts.hostname or ALLOWED_HOST, parts.port or 80)
            for _ in range(size)
        ]
        self._idle: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()

    async def open(self) -> None:
        """Connects all, so no connect (and uvicorn's accept) lands in a measured request."""
        for connection in self._connections:
            await connection.connect()
            self._idle.put_nowait(connection)
        await asyncio.gather(*(self.graphql("{ __typename }") for _ in self._connections))

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        connection = await self._idle.get()
        try:
            async with asyncio.timeout(STEP_SECONDS):
                return await keepalive.graphql(connection, query, variables, token)
        except TimeoutError as exc:
            await connection.close()  # an answer may still come: the next request reconnects
            raise HttpError("TimeoutError") from exc
        finally:
            self._idle.put_nowait(connection)


# --- the fake FCM, on a fixed port, recording arrival times ----------------------------------


class BenchFcm(FakeFcm):
    """FakeFcm on a given port; `arrivals` maps each data.request_id to when its first send
    request reached the ASGI app (perf_counter)."""

    def __init__(self, port: int, project_id: str) -> None:
        super().__init__(project_id=project_id)
        self.port = port
        self.arrivals: dict[str, float] = {}
        self._watch: set[str] = set()
        self._all_arrived = asyncio.Event()

    async def start(self) -> None:
        try:
            self._port = await self._loopback.start(self.port)
        except OSError as exc:
            raise SystemExit(
                f"the fake FCM cannot listen on {ALLOWED_HOST}:{self.port}: {exc}"
            ) from None

    async def stop(self) -> None:
        await self.__aexit__(None, None, None)

    def write_credentials(self, path: Path) -> None:
        """Atomically, so a worker started as soon as the file exists reads all of it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.service_account(), indent=2))
        partial.chmod(0o600)
        partial.replace(path)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(":send"):
            await super()._app(scope, receive, send)
            return
        arrived = time.perf_counter()
        chunks: list[bytes] = []
        for _ in range(10_000):
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            request_id = json.loads(body)["message"]["data"]["request_id"]
            if isinstance(request_id, str) and request_id not in self.arrivals:
                self.arrivals[request_id] = arrived
                self._watch.discard(request_id)
                if not self._watch:
                    self._all_arrived.set()
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await super()._app(scope, replay, send)

    async def wait_for(self, request_ids: Iterable[str], seconds: float) -> bool:
        """Until every id has arrived, or `seconds`; True when all did."""
        self._watch = {r for r in request_ids if r not in self.arrivals}
        self._all_arrived.clear()
        if not self._watch:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_arrived.wait(), seconds)
        return not self._watch


# --- data, through the domain layer -----------------------------------------------------------


@dataclass
class AppUser:
    user_id: UUID
    username: str
    app_token: str
    key: Ed25519PrivateKey
    # Filled by the phases.
    challenge_id: str = ""
    challenge_token: str = ""
    match_number: int | None = None
    request_id: str = ""
    nonce: str = ""
    login_sent: float = 0.0
    login_answered: float = 0.0

    def approve_signature(self) -> str:
        message = f"{self.request_id}:{self.nonce}:APPROVE"
        if self.match_number is not None:
            message += f":{self.match_number}"
        return base64.b64encode(self.key.sign(message.encode())).decode()


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def app_client() -> Client:
    return Client(ClientKind.IOS, "bench-app", ALLOWED_HOST)


async def first_user(services: Services, username: str) -> AppUser:
    """The whole flow: sign up, an IOS session, enrol a device with the bench's key, 2FA on."""
    user = await services.accounts.sign_up(username, PASSWORD)
    issued = await services.accounts.issue_session(user.id, app_client(), password_proved=True)
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    key = Ed25519PrivateKey.generate()
    async with services.uow():
        push_token = f"fcm-{secrets.token_urlsafe(24)}"
        await services.push.enroll(
            session, "bench phone", Platform.IOS, push_token, public_b64(key)
        )
    async with services.uow() as work:
        await services.security.enable(session, work)
    return AppUser(user.id, user.username, issued.token, key)


async def bulk_users(
    services: Services, prefix: str, start: int, count_: int, password_hash: str
) -> list[AppUser]:
    """The rows the flow above leaves (minus the audit trail and the backup code), in bulk."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=services.settings.session_ttl_seconds)
    users: list[User] = []
    sessions: list[Session] = []
    devices: list[Device] = []
    found: list[AppUser] = []
    for index in range(start, start + count_):
        username = f"{prefix}{index}"
        user = User(
            username=username,
            username_key=username_key(username),
            password_hash=password_hash,
            two_factor_enabled=True,
        )
        token = new_token()
        key = Ed25519PrivateKey.generate()
        device_id = uuid4()
        session = Session(
            user_id=user.id,
            token_hash=token_digest(token),
            client_kind=ClientKind.IOS,
            client_name="bench-app",
            device_id=device_id,
            password_verified_at=now,
            expires_at=expires,
        )
        devices.append(
            Device(
                id=device_id,
                user_id=user.id,
                session_id=session.id,
                name="bench phone",
                platform=Platform.IOS,
                push_token=f"fcm-{secrets.token_urlsafe(24)}",
                public_key=public_b64(key),
                login_code_secret_sealed=services.box.encrypt(
                    otp.new_secret(), context=f"device:{device_id}"
                ),
                last_seen_at=now,
            )
        )
        users.append(user)
        sessions.append(session)
        found.append(AppUser(user.id, username, token, key))
    await User.bulk_create(users, batch_size=BULK_BATCH)
    await Session.bulk_create(sessions, batch_size=BULK_BATCH)
    await Device.bulk_create(devices, batch_size=BULK_BATCH)
    return found


# --- phase 1: logins and login -> FCM ---------------------------------------------------------


async def login_one(http: httpx.AsyncClient, user: AppUser) -> None:
    user.login_sent = time.perf_counter()
    data = await graphql(
        http,
        LOGIN,
        {"u": user.username, "p": PASSWORD, "k": ClientKind.WEB.value, "n": "bench-browser"},
    )
    user.login_answered = time.perf_counter()
    challenge = data["login"]
    if challenge.get("__typename") != "LoginChallenge" or "PUSH" not in challenge["methods"]:
        raise RequestFailed("NO_PUSH_CHALLENGE")
    user.challenge_id = challenge["id"]
    user.challenge_token = challenge["token"]
    user.match_number = challenge["matchNumber"]


async def fetch_request(http: httpx.AsyncClient, user: AppUser) -> None:
    """The app's view: its one pending request's id and nonce (bearer = device session)."""
    data = await graphql(http, REQUESTS, token=user.app_token)
    edges = data["viewer"]["loginRequests"]["edges"]
    if len(edges) != 1:
        raise RequestFailed(f"PENDING_REQUESTS_{len(edges)}")
    user.request_id = edges[0]["node"]["id"]
    user.nonce = edges[0]["node"]["nonce"]


async def login_phase(
    a: httpx.AsyncClient,
    users: list[AppUser],
    concurrency: int,
    rate: float,
    errors: dict[str, int],
) -> tuple[list[AppUser], float, int]:
    """Closed loop with `concurrency` logins in flight, or, with a `rate`, an open loop: login
    i leaves at start + i / rate whatever the earlier ones are doing (latency at a stated
    load, not the queue a saturated closed loop builds). Returns the users that got a push
    challenge, the elapsed time and the logins sent more than 5 ms late."""
    good: list[AppUser] = []

    async def one(user: AppUser) -> None:
        try:
            await login_one(a, user)
        except RequestFailed as exc:
            count(errors, exc.code)
        except httpx.HTTPError as exc:
            count(errors, type(exc).__name__)
        else:
            good.append(user)

    started = time.perf_counter()
    late = 0
    if rate > 0:
        tasks: list[asyncio.Task[None]] = []
        for index, user in enumerate(users):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1
            tasks.append(asyncio.create_task(one(user)))
        await asyncio.gather(*tasks)
        return good, time.perf_counter() - started, late

    queue = list(reversed(users))

    async def loop() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return good, time.perf_counter() - started, late


async def fetch_requests(
    b: httpx.AsyncClient, users: list[AppUser], errors: dict[str, int]
) -> list[AppUser]:
    async def one(user: AppUser) -> AppUser | None:
        try:
            await fetch_request(b, user)
        except RequestFailed as exc:
            count(errors, exc.code)
            return None
        except httpx.HTTPError as exc:
            count(errors, type(exc).__name__)
            return None
        return user

    found = await bounded_gather([one(u) for u in users], SETUP_PARALLELISM)
    return [u for u in found if u is not None]


# --- phase 2: subscriptions -------------------------------------------------------------------


@dataclass
class Watch:
    """One web client's socket and subscription to one challenge, from its own address: the
    gateway holds each client address to KANMON_WEBSOCKETS_PER_IP sockets, and these stand for
    thousands of browsers. It trusts X-Forwarded-For from 127.0.0.1 (uvicorn's default)."""

    user: AppUser
    address: str = field(default_factory=lambda: client_address(next(_watch_numbers)))
    connection: ClientConnection | None = None
    first_status: str | None = None
    approved_at: float | None = None
    approved: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    other: list[str] = field(default_factory=list)


_watch_numbers = itertools.count(1)


def client_address(number: int) -> str:
    """The `number`th address of 10.0.0.0/8."""
    return str(ipaddress.IPv4Address(0x0A000000 + number % 0xFFFFFF))


async def _recv_json(connection: ClientConnection) -> dict[str, Any]:
    for _ in range(100):  # skip protocol pings, answered
        raw = await asyncio.wait_for(connection.recv(), STEP_SECONDS)
        message: dict[str, Any] = json.loads(raw)
        if message.get("type") == "ping":
            await connection.send(json.dumps({"type": "pong"}))
            continue
        return message
    raise RequestFailed("ONLY_PINGS")


async def _read(watch: Watch, connection: ClientConnection) -> None:
    """Records when APPROVED arrives; answers pings; ends with the socket."""
    try:
        async for raw in connection:
            now = time.perf_counter()
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "ping":
                await connection.send(json.dumps({"type": "pong"}))
            elif kind == "next":
                node = ((message.get("payload") or {}).get("data") or {}).get("loginChallenge")
                status = (node or {}).get("status")
                if status == "APPROVED" and watch.approved_at is None:
                    watch.approved_at = now
                    watch.approved.set()
                elif status != "PENDING":
                    watch.other.append(str(status))
            else:
                watch.other.append(str(kind))
    except (ConnectionClosed, ValueError):
        pass


async def open_watch(url: str, watch: Watch, errors: dict[str, int]) -> bool:
    """Socket, connection_init (no session: the challenge token is the credential), subscribe,
    first `next` (PENDING); then a reader task."""
    try:
        connection = await connect(
            url,
            subprotocols=[PROTOCOL],
            additional_headers={"X-Forwarded-For": watch.address},
            compression=None,
            ping_interval=None,
            open_timeout=STEP_SECONDS,
            close_timeout=2,
        )
    except (OSError, WebSocketException, TimeoutError) as exc:
        count(errors, f"connect:{type(exc).__name__}")
        return False
    watch.connection = connection
    try:
        await connection.send(json.dumps({"type": "connection_init", "payload": {}}))
        ack = await _recv_json(connection)
        if ack.get("type") != "connection_ack":
            raise RequestFailed(f"init:{ack.get('type')}")
        variables = {"id": watch.user.challenge_id, "t": watch.user.challenge_token}
        payload = {"query": WATCH, "variables": variables}
        await connection.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        first = await _recv_json(connection)
        if first.get("type") != "next":
            raise RequestFailed(f"first:{first.get('type')}")
        watch.first_status = first["payload"]["data"]["loginChallenge"]["status"]
        if watch.first_status != "PENDING":
            raise RequestFailed(f"first:{watch.first_status}")
    except (RequestFailed, ConnectionClosed, TimeoutError, ValueError, KeyError, TypeError) as exc:
        code = exc.code if isinstance(exc, RequestFailed) else type(exc).__name__
        count(errors, f"subscribe:{code}")
        return False
    watch.reader = asyncio.create_task(_read(watch, connection))
    return True


async def open_watches(
    url: str, watches: list[Watch], concurrency: int, errors: dict[str, int]
) -> tuple[int, float]:
    started = time.perf_counter()
    opened = await bounded_gather([open_watch(url, w, errors) for w in watches], concurrency)
    return sum(1 for ok in opened if ok), time.perf_counter() - started


async def close_watches(watches: list[Watch]) -> None:
    async def close(watch: Watch) -> None:
        if watch.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.connection.close(), 5)
        if watch.reader is not None:
            watch.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch.reader

    await bounded_gather([close(w) for w in watches], 256)


# --- gateway memory ----------------------------------------------------------------------------


def pid_on_port(port: int, required: bool = True) -> int | None:
    """The one process listening on 127.0.0.1:port (ss -ltnp); refuses several."""
    ss = shutil.which("ss")
    if ss is None:
        raise SystemExit("`ss` not found: pass --gateway-pid")
    listing = subprocess.run(
        [ss, "-H", "-ltnp", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    ).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", listing)}
    if len(pids) != 1 and not required:
        return None
    if len(pids) != 1:
        raise SystemExit(
            f"expected one process listening on port {port}, found {sorted(pids)}: run gateway A "
            "as a single process or pass --gateway-pid"
        )
    return pids.pop()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat); 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class Load:
    """CPU used by gateways A and B, by this bench and how busy the whole machine was, over
    one phase (the bench is one Python process: near 1.0 core, it is what limits)."""

    pids: tuple[int | None, int | None]
    started: float = field(default_factory=time.perf_counter)
    own_cpu: float = field(default_factory=time.process_time)
    cpu: tuple[float, float] = (0.0, 0.0)
    ticks: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.cpu = (cpu_seconds(self.pids[0]), cpu_seconds(self.pids[1]))
        self.ticks = machine_ticks()

    def report(self, operations: int) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        a = cpu_seconds(self.pids[0]) - self.cpu[0]
        b = cpu_seconds(self.pids[1]) - self.cpu[1]
        busy, total = machine_ticks()
        share = (busy - self.ticks[0]) / max(1, total - self.ticks[1])
        per = max(1, operations)
        return {
            "a_cpu_cores": round(a / elapsed, 2) if elapsed else 0.0,
            "b_cpu_cores": round(b / elapsed, 2) if elapsed else 0.0,
            "a_cpu_ms_per_op": round(a * 1000 / per, 2),
            "b_cpu_ms_per_op": round(b * 1000 / per, 2),
            "bench_cpu_cores": round((time.process_time() - self.own_cpu) / elapsed, 2)
            if elapsed
            else 0.0,
            "machine_cpu_busy": round(share, 3),
        }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


# --- phase 3: approvals ------------------------------------------------------------------------


@dataclass
class ApprovalResult:
    to_event: list[float] = field(default_factory=list)
    http: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    answered_ok: int = 0
    events: int = 0
    send_span: float = 0.0
    span: float = 0.0
    late_sends: int = 0
    # (seconds into the phase it was sent, approve -> event): where the tail sits in time.
    slowest: list[tuple[float, float]] = field(default_factory=list)


async def approval_phase(
    b: ConnectionQueue,
    watches: list[Watch],
    rate: float,
    warmup: int,
    event_wait: float,
) -> ApprovalResult:
    """Open loop: approval i leaves at start + i / rate, whatever the earlier ones are doing."""
    result = ApprovalResult()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT_APPROVALS)
    finished: list[float] = []

    async def approve(index: int, watch: Watch) -> None:
        user = watch.user
        variables = {"id": user.request_id, "s": user.approve_signature(), "m": user.match_number}
        async with gate:
            sent = time.perf_counter()
            try:
                data = await b.graphql(APPROVE, variables, token=user.app_token)
            except RequestFailed as exc:
                count(result.errors, exc.code)
                return
            except HttpError as exc:
                count(result.errors, type(exc).__name__)
                return
            answered = time.perf_counter()
        if data["approveLoginRequest"]["status"] != "APPROVED":
            count(result.errors, "NOT_APPROVED")
            return
        result.answered_ok += 1
        try:
            await asyncio.wait_for(watch.approved.wait(), event_wait)
        except TimeoutError:
            count(result.errors, "EVENT_MISSING")
            return
        assert watch.approved_at is not None
        result.events += 1
        finished.append(watch.approved_at)
        if index >= warmup:
            result.to_event.append(watch.approved_at - sent)
            result.http.append(answered - sent)
            result.slowest.append((sent - started, watch.approved_at - sent))

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for index, watch in enumerate(watches):
        due = started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            result.late_sends += 1
        tasks.append(asyncio.create_task(approve(index, watch)))
    result.sent = len(tasks)
    result.send_span = time.perf_counter() - started
    await asyncio.gather(*tasks)
    result.span = (max(finished) if finished else time.perf_counter()) - started
    return result


# --- phase 5: fan-out burst --------------------------------------------------------------------


async def burst_phase(
    services: Services,
    fcm: BenchFcm,
    users: list[AppUser],
    wait_seconds: float,
    worker_pid: int | None,
) -> dict[str, Any]:
    """Challenges (and their requests and fan-out jobs) for `users`, in one unit of work."""
    client = Client(ClientKind.WEB, "bench-burst", ALLOWED_HOST)
    began = time.perf_counter()
    challenge_ids: list[UUID] = []
    async with services.uow() as work:
        for user in users:
            summary = await method_summary(user.user_id)
            view = await services.login._open_challenge(user.user_id, summary, client, work)
            challenge_ids.append(view.id)
        written = time.perf_counter()  # then commit, then the relay to arq
        worker_cpu = cpu_seconds(worker_pid)
        ticks = machine_ticks()
    relayed = time.perf_counter()
    rows = await LoginRequest.filter(challenge_id__in=challenge_ids).values_list("id", flat=True)
    request_ids = [str(r) for r in rows]
    all_arrived = await fcm.wait_for(request_ids, wait_seconds)
    times = sorted(fcm.arrivals[r] for r in request_ids if r in fcm.arrivals)
    arrived = len(times)
    worker_cpu = cpu_seconds(worker_pid) - worker_cpu
    busy, total = machine_ticks()
    window = time.perf_counter() - written
    elapsed = (times[-1] - written) if times else 0.0
    first_to_last = (times[-1] - times[0]) if arrived > 1 else 0.0
    return {
        "jobs": len(users),
        "requests_opened": len(request_ids),
        "arrived": arrived,
        "all_arrived": all_arrived,
        "jobs_per_s": round(arrived / elapsed, 1) if elapsed > 0 else 0.0,
        "first_to_last_per_s": round((arrived - 1) / first_to_last, 1) if first_to_last else 0.0,
        "commit_to_first_ms": ms(times[0] - written) if times else None,
        "commit_to_last_s": round(elapsed, 3),
        "commit_and_relay_s": round(relayed - written, 3),
        "write_s": round(written - began, 3),
        "worker_pid": worker_pid,
        "worker_cpu_cores": round(worker_cpu / window, 2) if worker_pid and window else None,
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / arrived, 2)
        if worker_pid and arrived
        else None,
        "machine_cpu_busy": round((busy - ticks[0]) / max(1, total - ticks[1]), 3),
    }


# --- entry point -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--a", default="http://127.0.0.1:8001", help="gateway A (web side)")
    parser.add_argument("--b", default="http://127.0.0.1:8002", help="gateway B (app side)")
    parser.add_argument("--users", type=int, default=1000, help="N: logins, subscriptions")
    parser.add_argument("--rate", type=float, default=100.0, help="approvals per second")
    parser.add_argument("--approve-warmup", type=int, default=20, help="approvals not counted")
    parser.add_argument("--login-warmup", type=int, default=20, help="logins not counted")
    parser.add_argument("--login-concurrency", type=int, default=4)
    parser.add_argument(
        "--login-rate",
        type=float,
        default=20.0,
        help="logins per second in an open loop (0: a closed loop of --login-concurrency)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=64, help="sockets opening")
    parser.add_argument("--burst", type=int, default=1000, help="M: fan-out jobs in the burst")
    parser.add_argument("--push-workers", type=int, default=1, help="push workers running")
    parser.add_argument(
        "--memory-subscriptions",
        type=int,
        default=0,
        help="K > N: open K subscriptions in all for the memory figure (e.g. 10000)",
    )
    parser.add_argument("--memory-challenges", type=int, default=10)
    parser.add_argument("--gateway-pid", type=int, default=None, help="gateway A's pid")
    parser.add_argument(
        "--worker-pidfile",
        type=Path,
        default=None,
        help="file holding the push worker's pid, read at phase 5 (its CPU per job)",
    )
    parser.add_argument("--fcm-port", type=int, default=None, help="default: KANMON_FCM_ENDPOINT")
    parser.add_argument(
        "--fcm-credentials", type=Path, default=None, help="default: KANMON_FCM_CREDENTIALS"
    )
    parser.add_argument("--fcm-project", default=None, help="default: KANMON_FCM_PROJECT_ID")
    parser.add_argument("--worker-wait", type=float, default=120.0, help="s for the probe push")
    parser.add_argument("--arrival-wait", type=float, default=60.0, help="s for pushes")
    parser.add_argument("--event-wait", type=float, default=10.0, help="s for each APPROVED")
    args = parser.parse_args(argv)
    for url in (args.a, args.b):
        if urlsplit(url).hostname != ALLOWED_HOST:
            parser.error(f"--a and --b must target {ALLOWED_HOST}")
    if not (1 <= args.users <= 20_000 and 0 < args.rate <= 10_000 and 0 <= args.burst <= 20_000):
        parser.error("--users 1..20000, --rate 0..10000, --burst 0..20000")
    if not (0 <= args.memory_subscriptions <= 20_000 and 1 <= args.memory_challenges <= 100):
        parser.error("--memory-subscriptions 0..20000, --memory-challenges 1..100")
    if not (1 <= args.login_concurrency <= 64 and 1 <= args.connect_concurrency <= 512):
        parser.error("--login-concurrency 1..64, --connect-concurrency 1..512")
    if not 0 <= args.login_rate <= 1000:
        parser.error("--login-rate 0..1000")
    if args.push_workers < 1:
        parser.error("--push-workers >= 1")
    for name in ("worker_wait", "arrival_wait", "event_wait"):
        if not 0 < getattr(args, name) <= 900:
            parser.error(f"--{name.replace('_', '-')} 0..900")
    return args


def fcm_target(args: argparse.Namespace, settings: Settings) -> tuple[int, Path, str]:
    endpoint = urlsplit(settings.fcm_endpoint or "")
    if settings.fcm_endpoint and endpoint.hostname != ALLOWED_HOST:
        raise SystemExit(f"KANMON_FCM_ENDPOINT must be http://{ALLOWED_HOST}:<port>")
    port = args.fcm_port or endpoint.port
    path = args.fcm_credentials or settings.fcm_credentials
    project = args.fcm_project or settings.fcm_project_id or "kanmon-bench"
    if port is None or path is None:
        raise SystemExit("set KANMON_FCM_ENDPOINT and KANMON_FCM_CREDENTIALS (or --fcm-*)")
    if endpoint.port is not None and endpoint.port != port:
        raise SystemExit("--fcm-port differs from KANMON_FCM_ENDPOINT's: the worker uses the env")
    return port, Path(path), project


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    if not settings.redis_url:
        raise SystemExit("KANMON_REDIS_URL is required")
    port, credentials, project = fcm_target(args, settings)
    gateway_pid = args.gateway_pid or pid_on_port(urlsplit(args.a).port or 80)
    assert gateway_pid is not None
    pids = (gateway_pid, pid_on_port(urlsplit(args.b).port or 80, required=False))
    ws_url = args.a.replace("http://", "ws://", 1).rstrip("/") + "/graphql"

    fcm = BenchFcm(port, project)
    await fcm.start()
    fcm.write_credentials(credentials)
    log(f"fake FCM on {fcm.endpoint}; credentials at {credentials}: start the push worker now")

    await open_database(settings.resolved_database_url())
    redis = redis_client(settings.redis_url)
    services = build_services(settings, redis, passwords=Passwords())
    watches: list[Watch] = []
    extra: list[Watch] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    a = httpx.AsyncClient(base_url=args.a, limits=limits, timeout=STEP_SECONDS)
    b = httpx.AsyncClient(base_url=args.b, limits=limits, timeout=STEP_SECONDS)
    try:
        # --- data
        setup_started = time.perf_counter()
        prefix = f"p{secrets.token_hex(4)}_"
        probe = await first_user(services, f"{prefix}probe")
        password_hash = (await User.get(id=probe.user_id)).password_hash
        total = args.users + args.memory_challenges + args.burst
        everyone = await bulk_users(services, prefix, 0, total, password_hash)
        measured_users = everyone[: args.users]
        memory_users = everyone[args.users : args.users + args.memory_challenges]
        burst_users = everyone[args.users + args.memory_challenges :]
        setup_s = time.perf_counter() - setup_started
        log(f"{total + 1} users ready in {setup_s:.1f} s; probe login, waiting for the worker")

        # --- the probe: gateways up, worker up, FCM reachable
        await login_one(a, probe)
        await fetch_request(b, probe)
        if not await fcm.wait_for([probe.request_id], args.worker_wait):
            raise SystemExit(
                f"the probe's push never reached the fake FCM within {args.worker_wait:.0f} s: "
                "is `kanmon worker --queue push` running with KANMON_FCM_* as documented, "
                "started after the credentials file was written?"
            )

        # --- phase 1: logins on A, pushes at the fake, the apps' request lists on B
        login_errors: dict[str, int] = {}
        log(f"phase 1: {len(measured_users) + len(memory_users)} logins on {args.a}")
        login_load = Load(pids)
        logged_in, login_elapsed, late_logins = await login_phase(
            a, measured_users + memory_users, args.login_concurrency, args.login_rate, login_errors
        )
        login_cpu = login_load.report(len(logged_in))
        ready = await fetch_requests(b, logged_in, login_errors)
        all_pushed = await fcm.wait_for([u.request_id for u in ready], args.arrival_wait)
        ready_ids = {id(u) for u in ready}
        order = {id(u): i for i, u in enumerate(measured_users)}
        total_lat: list[float] = []
        response_lat: list[float] = []
        after_lat: list[float] = []
        for user in measured_users:
            if id(user) not in ready_ids:
                continue
            arrival = fcm.arrivals.get(user.request_id)
            if arrival is None:
                count(login_errors, "PUSH_NOT_ARRIVED")
                continue
            if order[id(user)] < args.login_warmup:
                continue
            total_lat.append(arrival - user.login_sent)
            response_lat.append(user.login_answered - user.login_sent)
            after_lat.append(arrival - user.login_answered)
        login_to_fcm: dict[str, Any] = {
            **spread(total_lat),
            "login_response": spread(response_lat),
            "response_to_fcm": spread(after_lat),
            "measured": len(total_lat),
            "all_arrived": all_pushed,
            "errors": login_errors,
            "logins_per_s": round(len(logged_in) / login_elapsed, 1) if login_elapsed else 0.0,
            "late_sends": late_logins,
            "load": login_cpu,
        }

        # --- phase 2: N subscriptions on A, A's RSS around them
        watches = [Watch(u) for u in measured_users if id(u) in ready_ids]
        sub_errors: dict[str, int] = {}
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = rss_kib(gateway_pid)
        log(f"phase 2: {len(watches)} subscriptions on {ws_url} (A pid {gateway_pid})")
        opened, open_s = await open_watches(ws_url, watches, args.connect_concurrency, sub_errors)
        await asyncio.sleep(SETTLE_SECONDS)
        rss_after = rss_kib(gateway_pid)
        memory: dict[str, Any] = {
            "gateway_pid": gateway_pid,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "subscriptions": opened,
            "per_subscription_kib": round((rss_after - rss_before) / opened, 1) if opened else 0,
            "open_s": round(open_s, 2),
            "errors": sub_errors,
        }

        # --- phase 3: approvals on B, events on A
        live = [w for w in watches if w.reader is not None]
        log(f"phase 3: {len(live)} approvals on {args.b} at {args.rate:g}/s")
        approval_load = Load(pids)
        approvers = ConnectionQueue(args.b, APPROVAL_CONNECTIONS)
        await approvers.open()
        # The bench holds 1,000 websockets and their readers: one of its own full collections
        # stalled its loop for 0.3 to 0.7 s mid-phase, and every approval in flight then read
        # as that much slower. Nothing is collected while it measures.
        gc.collect()
        gc.disable()
        try:
            approvals = await approval_phase(
                approvers, live, args.rate, args.approve_warmup, args.event_wait
            )
        finally:
            gc.enable()
            await approvers.close()
        approval_cpu = approval_load.report(approvals.events)
        unexpected: dict[str, int] = {}
        for watch in live:
            for status in watch.other:
                count(unexpected, status)
        approve_to_event: dict[str, Any] = {
            **spread(approvals.to_event),
            "http_answer": spread(approvals.http),
            "slowest_at_s": [
                [round(at, 2), round(latency * 1000, 1)]
                for at, latency in sorted(approvals.slowest, key=lambda x: -x[1])[:12]
            ],
            "measured": len(approvals.to_event),
            "sent": approvals.sent,
            "approved": approvals.answered_ok,
            "events": approvals.events,
            "target_per_s": args.rate,
            "sent_per_s": round(approvals.sent / approvals.send_span, 1)
            if approvals.send_span
            else 0.0,
            "approvals_per_s": round(approvals.events / approvals.span, 1)
            if approvals.span
            else 0.0,
            "late_sends": approvals.late_sends,
            "errors": approvals.errors,
            "unexpected_messages": unexpected,
            "load": approval_cpu,
        }

        # --- phase 4: K subscriptions in all, for memory only
        if args.memory_subscriptions > opened:
            pending = [u for u in memory_users if id(u) in ready_ids]
            if not pending:
                raise SystemExit("no pending challenge left for the memory phase")
            wanted = args.memory_subscriptions - opened
            extra = [Watch(pending[i % len(pending)]) for i in range(wanted)]
            extra_errors: dict[str, int] = {}
            rss_mid = rss_kib(gateway_pid)
            log(f"phase 4: {wanted} more subscriptions over {len(pending)} challenges")
            more, extra_s = await open_watches(
                ws_url, extra, args.connect_concurrency, extra_errors
            )
            await asyncio.sleep(SETTLE_SECONDS)
            rss_k = rss_kib(gateway_pid)
            memory["k"] = {
                "subscriptions": opened + more,
                "challenges_shared": len(pending),
                "rss_before_extra_kib": rss_mid,
                "rss_after_kib": rss_k,
                "per_subscription_kib": round((rss_k - rss_before) / (opened + more), 1),
                "per_extra_subscription_kib": round((rss_k - rss_mid) / more, 1) if more else 0,
                "open_s": round(extra_s, 2),
                "errors": extra_errors,
            }
        log("closing sockets")
        await close_watches(watches + extra)

        # --- phase 5: fan-out burst
        fan_out: dict[str, Any] = {"jobs": 0}
        if burst_users:
            log(f"phase 5: fan-out burst of {len(burst_users)}")
            worker_pid = None
            if args.worker_pidfile is not None:
                with contextlib.suppress(OSError, ValueError):
                    worker_pid = int(args.worker_pidfile.read_text().strip())
            fan_out = await burst_phase(
                services, fcm, burst_users, args.arrival_wait + len(burst_users) / 50, worker_pid
            )
            fan_out["push_workers"] = args.push_workers
            fan_out["jobs_per_s_per_worker"] = round(fan_out["jobs_per_s"] / args.push_workers, 1)
    finally:
        await close_watches(watches + extra)
        await a.aclose()
        await b.aclose()
        await services.close()
        await close_database()
        await fcm.stop()

    shown: dict[str, Any] = memory.get("k", memory)
    per_sub = float(shown["per_subscription_kib"])
    return {
        "bench": "push_approval",
        "gateways": {"a": args.a, "b": args.b},
        "params": {
            "users": args.users,
            "rate_per_s": args.rate,
            "approve_warmup": args.approve_warmup,
            "login_warmup": args.login_warmup,
            "login_concurrency": args.login_concurrency,
            "login_rate": args.login_rate,
            "connect_concurrency": args.connect_concurrency,
            "burst": args.burst,
            "push_workers": args.push_workers,
            "memory_subscriptions": args.memory_subscriptions,
            "memory_challenges": args.memory_challenges,
            "setup_s": round(setup_s, 1),
            "fcm": f"http://{ALLOWED_HOST}:{port}",
            "fcm_project": project,
            "worker_poll_delay_s": settings.fast_poll_delay_seconds,
            "ws_compression": None,
            "cpus": os.cpu_count(),
        },
        "approve_to_event": approve_to_event,
        "login_to_fcm": login_to_fcm,
        "fan_out": fan_out,
        "memory": memory,
        "fcm_unauthorized": sum(1 for r in fcm.requests if not r.authorized),
        "targets": {
            "approve_to_event_p99_ms": 20,
            "login_to_fcm_p99_ms": 75,
            "fan_out_jobs_per_s_per_worker": 250,
            "per_subscription_kib": 64,
        },
        "meets": {
            "approve_to_event": approve_to_event["p99_ms"] < 20,
            "login_to_fcm": login_to_fcm["p99_ms"] < 75,
            "fan_out": fan_out.get("jobs_per_s_per_worker", 0) >= 250,
            "memory": 0 < per_sub <= 64,
        },
    }


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
