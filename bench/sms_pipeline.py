"""SMS pipeline benchmark: login -> outbox -> relay -> Redis -> `sms` worker -> provider.

It starts only the provider: a minimal Twilio-compatible server (the Messages endpoint, basic
auth) on the host and port of KANMON_TWILIO_BASE_URL, recording when each message arrives. The
rest runs already, started by the operator with the same environment (PostgreSQL + Redis):

    export KANMON_DATABASE_URL=postgres://... KANMON_REDIS_URL=redis://... KANMON_SECRET_KEY=...
    export KANMON_SMS_PROVIDER=twilio KANMON_TWILIO_BASE_URL=http://127.0.0.1:8099
    export KANMON_TWILIO_ACCOUNT_SID=AC... KANMON_TWILIO_AUTH_TOKEN=... KANMON_TWILIO_FROM=+1500...
    # S7 limits high enough for the run (every login here sends a code from 127.0.0.1):
    export KANMON_SMS_PER_IP_PER_HOUR=1000000 KANMON_SMS_GLOBAL_PER_MINUTE=1000000 ...
    kanmon migrate; kanmon serve --workers 2 --port 8001 &; kanmon worker --queue sms &
    .venv/bin/python bench/sms_pipeline.py --url http://127.0.0.1:8001

Users (verified phone, 2FA on) are prepared through the domain layer on the same database with
the same key, the first one through the whole flow (its verification SMS also proves the
pipeline reaches this provider), the rest in bulk with the first one's password hash.

  (a) latency: `login` over HTTP (closed loop, --concurrency in flight, one fresh user per
      login) until that user's code reaches the provider: p50/p99, split into the login response
      and what follows it (commit -> relay -> worker -> provider);
  (b) throughput: --burst messages queued in one unit of work through the domain layer
      (SmsService.queue_text); from the end of the writes (commit and relay included) to the
      last arrival at the provider.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import math
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

import httpx
import uvicorn

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import User
from gateway.accounts.service import Client, username_key
from gateway.container import Services, build_services, redis_client
from gateway.core.db import close_database, open_database
from gateway.core.passwords import Passwords
from gateway.factors.sms import phones
from gateway.factors.sms.models import Phone, SmsCode, SmsCodePurpose
from gateway.settings import Settings, SmsProviderName

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PASSWORD = "bench horse battery staple"
ALLOWED_HOST = "127.0.0.1"
ARRIVAL_TIMEOUT_SECONDS = 15.0
BULK_BATCH = 1000

LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!) {
  login(username: $u, password: $p, client: {kind: $k}) {
    __typename
    ... on LoginChallenge { id methods }
  }
}"""


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank on sorted samples; 0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --- the provider ------------------------------------------------------------------------------


@dataclass
class Provider:
    """Twilio's `POST /2010-04-01/Accounts/{sid}/Messages.json`, answering 201 at once."""

    account_sid: str
    auth_token: str
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    by_body: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    rejected: int = 0
    burst_prefix: str | None = None
    burst_expected: int = 0
    burst_seen: int = 0
    burst_done: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, number: str) -> asyncio.Event:
        return self.waiters.setdefault(number, asyncio.Event())

    def _auth_ok(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return hmac.compare_digest(header, f"Basic {expected}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        now = time.perf_counter()
        headers = dict(scope["headers"])
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        if scope["path"] != path or not self._auth_ok(
            headers.get(b"authorization", b"").decode("latin-1")
        ):
            self.rejected += 1
            await _json(send, 401, {"code": 20003, "message": "Authenticate", "status": 401})
            return
        form = dict(parse_qsl(b"".join(chunks).decode(), keep_blank_values=True))
        to, body = form.get("To", ""), form.get("Body", "")
        self.arrivals.setdefault(to, []).append(now)
        self.by_body.setdefault(body, now)
        waiter = self.waiters.get(to)
        if waiter is not None:
            waiter.set()
        if self.burst_prefix and body.startswith(self.burst_prefix):
            self.burst_seen += 1
            if self.burst_seen >= self.burst_expected:
                self.burst_done.set()
        sid = "SM" + secrets.token_hex(16)
        await _json(
            send,
            201,
            {"sid": sid, "account_sid": self.account_sid, "status": "queued", "to": to},
        )


async def _json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProviderServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ctrl-C stays the bench's, not the provider's."""
        yield


# --- data, through the domain layer ------------------------------------------------------------


def number_for(index: int, salt: int) -> str:
    """A valid Japanese mobile number; each index its own block (S7 per-block limit)."""
    block = (salt + index * 7919) % 90_000 + 10_000
    number = f"+8190{block:05d}{secrets.randbelow(1000):03d}"
    return phones.parse(number).e164


@dataclass
class LoginUser:
    user_id: UUID
    username: str
    number: str


async def first_user(services: Services, provider: Provider, prefix: str, salt: int) -> LoginUser:
    """The whole flow: sign up, add a phone (its code travels the pipeline to the provider),
    verify it, turn 2FA on."""
    number = number_for(0, salt)
    user = await services.accounts.sign_up(f"{prefix}first", PASSWORD)
    arrived = provider.expect(number)
    async with services.uow() as work:
        await services.sms.add_phone(user.id, number, None, ALLOWED_HOST, work)
    try:
        await asyncio.wait_for(arrived.wait(), ARRIVAL_TIMEOUT_SECONDS)
    except TimeoutError:
        raise SystemExit(
            "the verification SMS never reached the bench's provider: is `kanmon worker --queue "
            "sms` running with this KANMON_TWILIO_BASE_URL / ACCOUNT_SID / AUTH_TOKEN?"
        ) from None
    row = (
        await SmsCode.filter(user_id=user.id, purpose=SmsCodePurpose.VERIFY_PHONE)
        .order_by("-created_at")
        .first()
    )
    assert row is not None
    assert row.code_sealed is not None
    await services.sms.verify_phone(
        user.id, services.box.decrypt(row.code_sealed, context=f"sms:{row.id}")
    )
    issued = await services.accounts.issue_session(
        user.id, Client(ClientKind.WEB, "bench-setup", ALLOWED_HOST), password_proved=True
    )
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    async with services.uow() as work:
        await services.security.enable(session, work)
    return LoginUser(user.id, user.username, number)


async def bulk_users(prefix: str, count: int, password_hash: str, salt: int) -> list[LoginUser]:
    """The rows the flow above leaves (user with 2FA on, verified phone), written in bulk."""
    now = datetime.now(UTC)
    users: list[User] = []
    found: list[LoginUser] = []
    phone_rows: list[Phone] = []
    for index in range(1, count + 1):
        username = f"{prefix}{index}"
        user = User(
            username=username,
            username_key=username_key(username),
            password_hash=password_hash,
            two_factor_enabled=True,
        )
        number = number_for(index, salt)
        users.append(user)
        phone_rows.append(Phone(user_id=user.id, number=number, verified_at=now))
        found.append(LoginUser(user.id, username, number))
    await User.bulk_create(users, batch_size=BULK_BATCH)
    await Phone.bulk_create(phone_rows, batch_size=BULK_BATCH)
    return found


def check_limits(settings: Settings, logins: int, burst: int) -> None:
    """S7 would refuse codes past these: the server and the worker must share raised limits."""
    needed = {
        "KANMON_SMS_PER_IP_PER_HOUR": (settings.sms_per_ip_per_hour, logins + 1),
        "KANMON_SMS_GLOBAL_PER_MINUTE": (settings.sms_global_per_minute, logins + 1),
    }
    low = [f"{name}>={want} (is {have})" for name, (have, want) in needed.items() if have < want]
    if low:
        raise SystemExit("raise for `kanmon serve` and this bench: " + ", ".join(low))


# --- the phases --------------------------------------------------------------------------------


@dataclass
class LatencyResult:
    total: list[float] = field(default_factory=list)
    response: list[float] = field(default_factory=list)
    after_response: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        total = sorted(self.total)
        response = sorted(self.response)
        after = sorted(self.after_response)
        return {
            "p50_ms": ms(percentile(total, 50)),
            "p99_ms": ms(percentile(total, 99)),
            "max_ms": ms(total[-1]) if total else 0.0,
            "login_response_p50_ms": ms(percentile(response, 50)),
            "login_response_p99_ms": ms(percentile(response, 99)),
            "response_to_sms_p50_ms": ms(percentile(after, 50)),
            "response_to_sms_p99_ms": ms(percentile(after, 99)),
            "measured": len(total),
            "errors": self.errors,
            "logins_per_s": round(len(total) / self.elapsed, 1) if self.elapsed else 0.0,
        }


async def latency_phase(
    http: httpx.AsyncClient,
    provider: Provider,
    users: list[LoginUser],
    warmup: int,
    concurrency: int,
) -> LatencyResult:
    result = LatencyResult()
    queue = list(enumerate(users))
    queue.reverse()
    started = 0.0

    async def one(index: int, user: LoginUser) -> None:
        arrived = provider.expect(user.number)
        begin = time.perf_counter()
        response = await http.post(
            "/graphql",
            json={
                "query": LOGIN,
                "variables": {"u": user.username, "p": PASSWORD, "k": ClientKind.WEB.value},
            },
        )
        answered = time.perf_counter()
        body = response.json() if response.status_code == 200 else {}
        login = (body.get("data") or {}).get("login") or {}
        if login.get("__typename") != "LoginChallenge" or "SMS" not in login.get("methods", []):
            code = str((body.get("errors") or [{}])[0].get("extensions", {}).get("code", "NO_SMS"))
            result.errors[code] = result.errors.get(code, 0) + 1
            return
        try:
            await asyncio.wait_for(arrived.wait(), ARRIVAL_TIMEOUT_SECONDS)
        except TimeoutError:
            result.errors["SMS_NOT_ARRIVED"] = result.errors.get("SMS_NOT_ARRIVED", 0) + 1
            return
        arrival = provider.arrivals[user.number][0]
        if index >= warmup:
            result.total.append(arrival - begin)
            result.response.append(answered - begin)
            result.after_response.append(arrival - answered)

    async def loop() -> None:
        nonlocal started
        while queue:
            index, user = queue.pop()
            if index == warmup and not started:
                started = time.perf_counter()
            await one(index, user)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started if started else 0.0
    return result


async def burst_phase(
    services: Services, provider: Provider, count: int, salt: int
) -> dict[str, Any]:
    """`count` notices queued in one unit of work (the outbox rows commit with them; the relay
    hands them to Redis after commit), timed from the end of the writes to the last arrival."""
    tag = f"bench-burst-{secrets.token_hex(4)} "
    provider.burst_prefix = tag
    provider.burst_expected = count
    provider.burst_seen = 0
    provider.burst_done.clear()
    number = number_for(99_999, salt)
    prepare_started = time.perf_counter()
    async with services.uow() as work:
        for index in range(count):
            await services.sms.queue_text(None, number, f"{tag}{index}", "bench", work)
        written = time.perf_counter()  # then commit, then the relay
    relayed = time.perf_counter()
    with contextlib.suppress(TimeoutError):  # a short count is reported, not raised
        await asyncio.wait_for(provider.burst_done.wait(), ARRIVAL_TIMEOUT_SECONDS + count / 50)
    times = sorted(t for body, t in provider.by_body.items() if body.startswith(tag))
    arrived = len(times)
    last = times[-1] if times else written
    elapsed = last - written
    spread = (times[-1] - times[0]) if arrived > 1 else 0.0
    return {
        "messages": count,
        "arrived": arrived,
        "messages_per_s": round(arrived / elapsed, 1) if elapsed > 0 else 0.0,
        "first_to_last_per_s": round((arrived - 1) / spread, 1) if spread > 0 else 0.0,
        "commit_to_first_ms": ms(times[0] - written) if times else None,
        "commit_to_last_s": round(elapsed, 3),
        "commit_and_relay_s": round(relayed - written, 3),
        "write_s": round(written - prepare_started, 3),
    }


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8001")
    parser.add_argument("--logins", type=int, default=400, help="measured logins (phase a)")
    parser.add_argument("--warmup", type=int, default=30, help="logins not counted")
    parser.add_argument("--concurrency", type=int, default=4, help="logins in flight")
    parser.add_argument("--burst", type=int, default=2000, help="messages in phase (b)")
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname != ALLOWED_HOST:
        parser.error(f"--url must target {ALLOWED_HOST}")
    if not (1 <= args.concurrency <= 256 and args.logins >= 1 and args.burst >= 1):
        parser.error("--concurrency 1..256, --logins >= 1, --burst >= 1")
    return args


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    if not settings.redis_url:
        raise SystemExit("KANMON_REDIS_URL is required")
    if settings.sms_provider is not SmsProviderName.TWILIO or not (
        settings.twilio_account_sid and settings.twilio_auth_token
    ):
        raise SystemExit("KANMON_SMS_PROVIDER=twilio and KANMON_TWILIO_* are required")
    check_limits(settings, args.logins + args.warmup, args.burst)
    target = urlsplit(settings.twilio_base_url)
    if target.hostname != ALLOWED_HOST or target.port is None:
        raise SystemExit(f"KANMON_TWILIO_BASE_URL must be http://{ALLOWED_HOST}:<port>")
    provider = Provider(settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value())
    config = uvicorn.Config(
        provider,
        host=ALLOWED_HOST,
        port=target.port,
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = ProviderServer(config)
    serving = asyncio.create_task(server.serve())
    await asyncio.wait(
        {serving, asyncio.create_task(server.ready.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if not server.started:
        raise SystemExit(f"could not listen on {settings.twilio_base_url}")

    await open_database(settings.resolved_database_url())
    redis = redis_client(settings.redis_url)
    services = build_services(settings, redis, passwords=Passwords())
    try:
        setup_started = time.perf_counter()
        prefix = f"s{secrets.token_hex(4)}_"
        salt = secrets.randbelow(90_000)
        first = await first_user(services, provider, prefix, salt)
        user = await User.get(id=first.user_id)
        rest = await bulk_users(prefix, args.logins + args.warmup, user.password_hash, salt)
        setup_s = time.perf_counter() - setup_started
        users = [first, *rest][: args.logins + args.warmup]

        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=30.0) as http:
            latency = await latency_phase(http, provider, users, args.warmup, args.concurrency)
        burst = await burst_phase(services, provider, args.burst, salt)
    finally:
        await services.close()
        await close_database()
        server.should_exit = True
        await serving

    return {
        "bench": "sms_pipeline",
        "url": args.url,
        "params": {
            "logins": args.logins,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "burst": args.burst,
            "setup_s": round(setup_s, 1),
            "provider": settings.twilio_base_url,
            "worker_poll_delay_s": settings.fast_poll_delay_seconds,
        },
        "login_to_sms": latency.summary(),
        "worker_throughput": burst,
        "provider_rejected": provider.rejected,
        "targets": {"p99_ms": 75, "messages_per_s": 250},
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
