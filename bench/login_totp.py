"""Load benchmark: TOTP checks, password + TOTP logins and the settings query, over HTTP.

It starts nothing. It runs against an already running `kanmon serve` (PostgreSQL + Redis) at
--url (127.0.0.1 only) and prepares its data through the domain layer, on the same database and
with the same KANMON_SECRET_KEY (both read through gateway.settings.Settings):

    .venv/bin/python bench/login_totp.py [--url http://127.0.0.1:8000] [--accounts 200]
        [--seconds 10] [--concurrency 32] [--client raw|httpx]

Phases, each run for --seconds after --warmup seconds that are not counted:
  (a) `verifyLoginChallenge` with TOTP on challenges made beforehand by LoginService;
  (b) full logins: `login` (argon2 verify on the server), then `verifyLoginChallenge` with TOTP,
      against the argon2 bound cores / CPU seconds of one verify with the server's parameters
      (the mean of probes just before and just after the phase: the machine's speed drifts);
      bench/argon2_ceiling.py measures the ratio a bare server doing only verifies reaches here;
  (c) `viewer { securitySettings { ... } }` with bearer sessions.

T2: a TOTP time step is accepted once per secret, and codes are good for the current step +-1.
Every account here therefore verifies at most once per 30 s step: phase (a) spends one
pre-made challenge per account (never reused), phase (b) takes accounts from a queue ordered by
the last step they used and only when that step is over. --accounts is a floor: the pool grows to
what the phases can consume at the rate caps below; if a pool still runs dry, the phase stops
early and says so (`pool_exhausted`) instead of sending codes the server must refuse.

Prints ONE JSON line with every figure and the parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pyotp
from argon2 import extract_parameters

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import User
from gateway.accounts.service import Client, IssuedSession, username_key
from gateway.container import Services, build_services, redis_client
from gateway.core import otp
from gateway.core.db import close_database, open_database
from gateway.core.passwords import Passwords
from gateway.core.uow import UnitOfWork
from gateway.factors.base import TwoFactorMethod
from gateway.factors.summary import method_summary
from gateway.factors.totp.models import TotpCredential
from gateway.factors.totp.service import _context as totp_context
from gateway.login.service import ChallengeView
from gateway.settings import Settings
from keepalive import Http, HttpError, KeepAliveConnection, RequestFailed, graphql

T = TypeVar("T")

PASSWORD = "bench horse battery staple"
ALLOWED_HOST = "127.0.0.1"
MAX_OPS_PER_WORKER = 1_000_000
ARGON2_ROUNDS = 10
SETUP_PARALLELISM = 16
BULK_BATCH = 1000
CONNECT_GAP_SECONDS = 0.01
PHASES = ("checks", "logins", "viewer")
SKIPPED: dict[str, Any] = {"skipped": True}

VERIFY = """
mutation($id: ID!, $t: String!, $m: TwoFactorMethod!, $c: String!) {
  verifyLoginChallenge(id: $id, token: $t, method: $m, code: $c) { token clientKind }
}"""

LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!) {
  login(username: $u, password: $p, client: {kind: $k}) {
    __typename
    ... on Session { token }
    ... on LoginChallenge { id token methods }
  }
}"""

VIEWER = """
query { viewer { securitySettings { twoFactorEnabled methods totpEnabled backupCodesActive } } }"""


@dataclass
class Account:
    user_id: UUID
    username: str
    totp: pyotp.TOTP
    last_step: int
    challenge: ChallengeView | None = None


@dataclass
class Prepared:
    check_pool: deque[Account]
    login_pool: deque[Account]
    tokens: list[str]
    accounts: int
    setup_seconds: float


@dataclass
class PhaseResult:
    count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    pool_exhausted: bool = False
    client_cpu_cores: float = 0.0
    machine_cpu_busy: float | None = None

    def summary(self, rate_name: str) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            rate_name: round(self.count / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "completed": self.count,
            "errors": sum(self.errors.values()),
            "error_codes": dict(self.errors),
            "elapsed_s": round(self.elapsed, 2),
            "pool_exhausted": self.pool_exhausted,
            "client_cpu_cores": round(self.client_cpu_cores, 2),
            "machine_cpu_busy": self.machine_cpu_busy,
        }


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank on sorted samples; 0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def current_step() -> int:
    return int(time.time()) // otp.STEP_SECONDS


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class HttpxConnection:
    """The same requests through a shared httpx.AsyncClient."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def post_json(self, path: str, payload: dict[str, Any], token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            response = await self._client.post(path, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise HttpError(type(exc).__name__) from exc
        if response.status_code != 200:
            raise RequestFailed(f"HTTP_{response.status_code}")
        return response.json()


class ConnectionPool:
    """`connections` keep-alive HTTP/1.1 connections, one closed-loop worker on each.

    With `--client httpx` they are held by `shards` httpx.AsyncClients (connections / shards
    each): with one shared pool of 32 connections, httpcore's request-to-connection assignment
    (it scans every connection for every waiting request) costs the client about 3 ms of CPU
    per request on this machine, one small pool per worker about 0.8 ms."""

    def __init__(self, url: str, connections: int, shards: int, client: str) -> None:
        parts = urlsplit(url)
        self._raw = [
            KeepAliveConnection(parts.hostname or ALLOWED_HOST, parts.port or 80)
            for _ in range(connections if client == "raw" else 0)
        ]
        per_shard = math.ceil(connections / shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._clients = [
            httpx.AsyncClient(base_url=url, http1=True, http2=False, limits=limits, timeout=30.0)
            for _ in range(shards if client == "httpx" else 0)
        ]
        self._connections = connections
        self._per_shard = per_shard

    def workers(self) -> list[Http]:
        """The connection each worker uses: httpx workers are spread evenly over the shards."""
        if self._raw:
            return list(self._raw)
        return [
            HttpxConnection(self._clients[i % len(self._clients)]) for i in range(self._connections)
        ]

    async def __aenter__(self) -> ConnectionPool:
        """Opens the connections one at a time. `uvicorn --workers` shares one listening socket
        (no SO_REUSEPORT): a burst of connects is accepted by whichever worker wakes first, and
        32 connections opened at once all landed on one worker here. One by one, both workers
        get a share."""
        for connection in self._raw:
            await connection.connect()
            await asyncio.sleep(CONNECT_GAP_SECONDS)
        for client in self._clients:
            await asyncio.gather(*(client.get("/healthz") for _ in range(self._per_shard)))
            await asyncio.sleep(CONNECT_GAP_SECONDS)
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in self._raw:
            await connection.close()
        for client in self._clients:
            await client.aclose()


# --- HTTP ----------------------------------------------------------------------------------


async def verify_totp(http: Http, account: Account, challenge_id: str, token: str) -> None:
    """The code an authenticator shows now; the account may not verify again this step (T2)."""
    step = current_step()
    code = account.totp.generate_otp(step)
    account.last_step = step
    data = await graphql(
        http,
        VERIFY,
        {"id": challenge_id, "t": token, "m": TwoFactorMethod.TOTP.value, "c": code},
    )
    if not data["verifyLoginChallenge"]["token"]:
        raise RequestFailed("NO_SESSION")


Operation = Callable[[Http], Awaitable[bool]]


async def run_phase(
    seconds: float, warmup: float, pool: ConnectionPool, operation: Operation
) -> PhaseResult:
    """One closed-loop worker per connection for `seconds`; an operation returning False means
    its account pool is dry and stops that worker. Warm-up operations run but are not recorded."""
    result = PhaseResult()
    if warmup > 0:
        warm_until = time.perf_counter() + warmup

        async def warm(http: Http) -> None:
            for _ in range(MAX_OPS_PER_WORKER):
                if time.perf_counter() >= warm_until:
                    return
                try:
                    if not await operation(http):
                        return
                except (RequestFailed, HttpError):
                    continue

        await asyncio.gather(*(warm(http) for http in pool.workers()))

    cpu_before = time.process_time()
    ticks_before = cpu_ticks()
    started = time.perf_counter()
    deadline = started + seconds
    ended: list[float] = []

    async def worker(http: Http) -> None:
        for _ in range(MAX_OPS_PER_WORKER):
            begin = time.perf_counter()
            if begin >= deadline:
                break
            try:
                if not await operation(http):
                    result.pool_exhausted = True
                    break
            except RequestFailed as exc:
                result.errors[exc.code] += 1
            except HttpError as exc:
                result.errors[str(exc)] += 1
            else:
                result.count += 1
                result.latencies.append(time.perf_counter() - begin)
        ended.append(time.perf_counter())

    await asyncio.gather(*(worker(http) for http in pool.workers()))
    result.elapsed = max(ended) - started
    result.client_cpu_cores = (time.process_time() - cpu_before) / result.elapsed
    ticks_after = cpu_ticks()
    if ticks_before and ticks_after and ticks_after[1] > ticks_before[1]:
        busy = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])
        result.machine_cpu_busy = round(busy, 3)
    return result


# --- data, through the domain layer -----------------------------------------------------------


async def bounded_gather(coroutines: list[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def in_unit_of_work(services: Services, call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A domain call in its own transaction, as the GraphQL edge runs it; the unit of work is
    handed over when the call takes one (`work`)."""
    async with services.uow() as work:
        if "work" in inspect.signature(call).parameters:
            return await call(*args, work=work)
        return await call(*args)


async def first_account(services: Services, username: str) -> Account:
    """One account the way a user makes it: sign up, enrol and confirm TOTP, turn 2FA on."""
    user = await services.accounts.sign_up(username, PASSWORD)
    enrollment = await services.totp.begin(user.id, user.username)
    totp = pyotp.TOTP(enrollment.secret, digits=otp.DIGITS, interval=otp.STEP_SECONDS)
    step = current_step()
    await services.totp.confirm(user.id, totp.generate_otp(step))
    issued = await services.accounts.issue_session(
        user.id, Client(ClientKind.WEB, "bench-setup", ALLOWED_HOST), password_proved=True
    )
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    async with services.uow() as work:
        await services.security.enable(session, work)
    return Account(user.id, user.username, totp, last_step=step)


async def bulk_accounts(
    services: Services, prefix: str, count: int, password_hash: str
) -> list[Account]:
    """The same rows the flow above leaves (user with 2FA on, confirmed TOTP credential), written
    in bulk. They share one argon2id hash made by AccountService.sign_up: verifying it costs the
    same as verifying a hash of its own."""
    confirmed_step = current_step() - 1  # confirmed in an earlier step: the current one is free
    now = datetime.now(UTC)
    accounts: list[Account] = []
    users: list[User] = []
    credentials: list[TotpCredential] = []
    for index in range(count):
        username = f"{prefix}{index}"
        user = User(
            username=username,
            username_key=username_key(username),
            password_hash=password_hash,
            two_factor_enabled=True,
        )
        secret = otp.new_secret()
        users.append(user)
        credentials.append(
            TotpCredential(
                user_id=user.id,
                secret_encrypted=services.box.encrypt(secret, context=totp_context(user.id)),
                last_step=confirmed_step,
                confirmed_at=now,
            )
        )
        totp = pyotp.TOTP(secret, digits=otp.DIGITS, interval=otp.STEP_SECONDS)
        accounts.append(Account(user.id, username, totp, last_step=confirmed_step))
    await User.bulk_create(users, batch_size=BULK_BATCH)
    await TotpCredential.bulk_create(credentials, batch_size=BULK_BATCH)
    return accounts


async def prepare(
    services: Services, accounts: int, check_pool: int, sessions: int
) -> tuple[Prepared, str]:
    started = time.perf_counter()
    prefix = f"b{secrets.token_hex(4)}_"
    first = await first_account(services, f"{prefix}first")
    user = await User.get(id=first.user_id)
    client = Client(ClientKind.WEB, "bench", ALLOWED_HOST)

    total = max(accounts, check_pool + 1)
    rest = await bulk_accounts(services, prefix, total - 1, user.password_hash)

    # Both kinds of account must open a challenge offering TOTP, through the real login.
    for sample in (first, rest[0]):
        outcome = await in_unit_of_work(
            services, services.login.login, sample.username, PASSWORD, client
        )
        view = outcome.unwrap()
        if not isinstance(view, ChallengeView) or TwoFactorMethod.TOTP not in view.methods:
            raise SystemExit(f"setup: {sample.username} did not get a TOTP challenge: {view}")

    checks = rest[:check_pool]

    async def open_challenge(user_id: UUID, work: UnitOfWork) -> ChallengeView:
        """What `login` runs after the password check (no argon2)."""
        summary = await method_summary(user_id)
        return await services.login._open_challenge(user_id, summary, client, work)

    views = await bounded_gather(
        [in_unit_of_work(services, open_challenge, a.user_id) for a in checks],
        SETUP_PARALLELISM,
    )
    for account, view in zip(checks, views, strict=True):
        account.challenge = view

    session_owners = [first, *rest[check_pool:]][: max(1, sessions)]
    issued: list[IssuedSession] = await bounded_gather(
        [
            services.accounts.issue_session(a.user_id, client, password_proved=True)
            for a in session_owners
        ],
        SETUP_PARALLELISM,
    )
    login_pool = sorted([first, *rest[check_pool:]], key=lambda a: a.last_step)
    prepared = Prepared(
        check_pool=deque(checks),
        login_pool=deque(login_pool),
        tokens=[s.token for s in issued],
        accounts=total,
        setup_seconds=round(time.perf_counter() - started, 1),
    )
    return prepared, user.password_hash


def argon2_verify_cpu_seconds(passwords: Passwords, password_hash: str) -> float:
    """CPU seconds of one verify with the server's hasher (process_time, a few rounds)."""
    hasher = passwords._hasher
    hasher.verify(password_hash, PASSWORD)
    before = time.process_time()
    for _ in range(ARGON2_ROUNDS):
        hasher.verify(password_hash, PASSWORD)
    return (time.process_time() - before) / ARGON2_ROUNDS


# --- the phases ------------------------------------------------------------------------------


def checks_operation(pool: deque[Account]) -> Operation:
    async def operation(http: Http) -> bool:
        if not pool:
            return False
        account = pool.popleft()
        assert account.challenge is not None
        await verify_totp(http, account, str(account.challenge.id), account.challenge.token)
        return True

    return operation


def logins_operation(pool: deque[Account]) -> Operation:
    """The pool stays ordered by last step: an account is taken only once its step is over."""

    async def operation(http: Http) -> bool:
        if not pool or pool[0].last_step >= current_step():
            return False
        account = pool.popleft()
        try:
            data = await graphql(
                http, LOGIN, {"u": account.username, "p": PASSWORD, "k": ClientKind.WEB.value}
            )
            challenge = data["login"]
            if challenge["__typename"] != "LoginChallenge" or "TOTP" not in challenge["methods"]:
                raise RequestFailed("NO_TOTP_CHALLENGE")
            await verify_totp(http, account, challenge["id"], challenge["token"])
        finally:
            pool.append(account)
        return True

    return operation


def viewer_operation(tokens: list[str]) -> Operation:
    turn = 0

    async def operation(http: Http) -> bool:
        nonlocal turn
        turn += 1
        data = await graphql(http, VIEWER, token=tokens[turn % len(tokens)])
        viewer = data["viewer"]
        if viewer is None or not viewer["securitySettings"]["twoFactorEnabled"]:
            raise RequestFailed("NO_VIEWER")
        return True

    return operation


# --- entry point ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--accounts", type=int, default=200, help="accounts to create (a floor, see T2)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--check-rate-cap",
        type=float,
        default=1200.0,
        help="checks/s phase (a) can reach before its pool of pre-made challenges runs dry",
    )
    parser.add_argument(
        "--login-headroom",
        type=float,
        default=1.5,
        help="phase (b) pool: this many times the argon2 bound, per second of the phase",
    )
    parser.add_argument(
        "--pool-shards",
        type=int,
        default=None,
        help="httpx clients sharing the --concurrency connections (default: one per connection)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: a minimal keep-alive HTTP/1.1 client (default); httpx: httpx.AsyncClient",
    )
    parser.add_argument(
        "--phases",
        default="checks,logins,viewer",
        help="comma-separated subset of checks,logins,viewer (e.g. one phase to profile it)",
    )
    args = parser.parse_args(argv)
    args.phases = set(args.phases.split(","))
    if not args.phases or not args.phases <= set(PHASES):
        parser.error(f"--phases: a subset of {','.join(PHASES)}")
    if args.pool_shards is None:
        args.pool_shards = args.concurrency
    if urlsplit(args.url).hostname != ALLOWED_HOST:
        parser.error(f"--url must target {ALLOWED_HOST}")
    if not 1 <= args.concurrency <= 1024 or not 0 < args.seconds <= 600 or args.accounts < 1:
        parser.error("--concurrency 1..1024, --seconds 0..600, --accounts >= 1")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup 0..60")
    if not 1 <= args.pool_shards <= args.concurrency:
        parser.error("--pool-shards 1..concurrency")
    return args


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    if not settings.redis_url:
        raise SystemExit("KANMON_REDIS_URL is required")
    await open_database(settings.resolved_database_url())
    redis = redis_client(settings.redis_url)
    passwords = Passwords()
    services = build_services(settings, redis, passwords=passwords)
    try:
        # The bound first, on a quiet machine, so it sizes the login pool too.
        probe = await passwords.hash(PASSWORD)
        verify_cpu = argon2_verify_cpu_seconds(passwords, probe)
        cores = os.cpu_count() or 1
        bound = cores / verify_cpu
        span = args.seconds + args.warmup
        check_pool = math.ceil(args.check_rate_cap * span)
        login_accounts = math.ceil(bound * args.login_headroom * min(span, otp.STEP_SECONDS))
        prepared, password_hash = await prepare(
            services,
            max(args.accounts, check_pool + login_accounts),
            check_pool,
            args.concurrency,
        )
    finally:
        await services.close()
        await close_database()

    async with ConnectionPool(args.url, args.concurrency, args.pool_shards, args.client) as pool:
        checks = logins = viewer = None
        if "checks" in args.phases:
            checks = await run_phase(
                args.seconds, args.warmup, pool, checks_operation(prepared.check_pool)
            )
        before_logins = argon2_verify_cpu_seconds(passwords, probe)
        if "logins" in args.phases:
            logins = await run_phase(
                args.seconds, args.warmup, pool, logins_operation(prepared.login_pool)
            )
        after_logins = argon2_verify_cpu_seconds(passwords, probe)
        if "viewer" in args.phases:
            viewer = await run_phase(
                args.seconds, args.warmup, pool, viewer_operation(prepared.tokens)
            )

    server = extract_parameters(password_hash)
    login_summary = logins.summary("logins_per_s") if logins else dict(SKIPPED)
    login_rate = float(login_summary.get("logins_per_s", 0.0))
    # The machine's speed drifts (other tenants): the bound of the phase is taken from probes
    # just before and just after it, on a quiet machine both times.
    phase_verify_cpu = (before_logins + after_logins) / 2
    phase_bound = cores / phase_verify_cpu
    login_summary.update(
        {
            "argon2_verify_cpu_ms": round(phase_verify_cpu * 1000, 2),
            "argon2_verify_cpu_ms_probes": [
                round(verify_cpu * 1000, 2),
                round(before_logins * 1000, 2),
                round(after_logins * 1000, 2),
            ],
            "cores": cores,
            "argon2_bound_per_s": round(phase_bound, 1),
            "ratio_to_bound": round(login_rate / phase_bound, 3),
        }
    )
    return {
        "bench": "login_totp",
        "url": args.url,
        "params": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "accounts_requested": args.accounts,
            "accounts_created": prepared.accounts,
            "check_challenges": check_pool,
            "viewer_sessions": len(prepared.tokens),
            "setup_s": prepared.setup_seconds,
            "argon2": {
                "memory_kib": passwords._hasher.memory_cost,
                "time_cost": passwords._hasher.time_cost,
                "parallelism": passwords._hasher.parallelism,
                "stored_hash": {
                    "memory_kib": server.memory_cost,
                    "time_cost": server.time_cost,
                    "parallelism": server.parallelism,
                },
            },
            "http": {
                "version": "HTTP/1.1",
                "client": "asyncio streams, one keep-alive connection per worker"
                if args.client == "raw"
                else f"httpx {httpx.__version__} AsyncClient",
                "connections": args.concurrency,
                "pool_shards": args.pool_shards,
            },
        },
        "checks": checks.summary("checks_per_s") if checks else SKIPPED,
        "logins": login_summary,
        "viewer": viewer.summary("queries_per_s") if viewer else SKIPPED,
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
