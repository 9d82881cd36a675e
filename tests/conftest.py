"""Real parts only: a real database (PostgreSQL or SQLite), a real Redis-compatible server, the
real ASGI app over httpx, real arq workers in burst mode."""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from gateway.app import create_app
from gateway.container import Services, build_services, redis_client
from gateway.core.db import apply_migrations, open_database
from gateway.core.passwords import Passwords
from gateway.logs import JsonFormatter
from gateway.settings import Environment, Settings, new_key_text
from tests.backends import Backends, open_backends
from workers.runner import KanmonWorker
from workers.settings import worker_options

# Cheaper argon2 for the suite's many sign-ups; the production parameters have their own test.
FAST_PASSWORDS = Passwords(memory_kib=1024, time_cost=1, parallelism=1)


class MovableClock:
    """A clock the test moves by hand, so expiry and back-off are tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class _Captured(logging.Handler):
    """Keeps every log record of the run, formatted as production formats it (O3)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


CAPTURED_LOGS = _Captured()


@pytest.fixture(scope="session", autouse=True)
def capture_logs() -> Iterator[_Captured]:
    root = logging.getLogger()
    previous = root.level
    root.addHandler(CAPTURED_LOGS)
    # The levels production runs with (gateway.logs.configure_logging).
    root.setLevel(logging.INFO)
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    yield CAPTURED_LOGS
    root.removeHandler(CAPTURED_LOGS)
    root.setLevel(previous)


@pytest.fixture(scope="session")
async def backends() -> AsyncIterator[Backends]:
    found = await open_backends()
    await apply_migrations(found.database_url)
    await open_database(found.database_url)
    yield found
    from gateway.core.db import close_database

    await close_database()
    for step in reversed(found.cleanup):
        result = step()
        if inspect.isawaitable(result):
            await result


@pytest.fixture(scope="session")
def settings(backends: Backends) -> Settings:
    return Settings(
        env=Environment.PRODUCTION,
        database_url=backends.database_url,
        redis_url=backends.redis_url,
        secret_key=new_key_text(),
        login_failures_per_ip=1_000_000,
        # The suite signs up hundreds of accounts from the ASGI client's one address.
        signups_per_ip_per_hour=1_000_000,
    )


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    assert settings.redis_url
    client = redis_client(settings.redis_url)
    # KANMON_TEST_REDIS_URL names a database reserved for the tests: start from an empty one so
    # no job left by an earlier run reaches this run's workers.
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def services(settings: Settings, redis: ArqRedis) -> Services:
    return build_services(settings, redis, passwords=FAST_PASSWORDS)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def make_services(settings: Settings, redis: ArqRedis) -> Callable[..., Services]:
    """Services with their own clock or settings, sharing the suite's database and Redis."""

    def make(clock: Callable[[], datetime] | None = None, **overrides: Any) -> Services:
        custom = settings.model_copy(update=overrides)
        if clock is None:
            return build_services(custom, redis, passwords=FAST_PASSWORDS)
        return build_services(custom, redis, clock=clock, passwords=FAST_PASSWORDS)

    return make


@pytest.fixture
async def client(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def username() -> str:
    return f"user_{secrets.token_hex(6)}"


async def run_worker(settings: Settings, queue: str, *, max_jobs: int = -1) -> int:
    """Runs one real arq worker in burst mode until its queue is empty (or it has started
    `max_jobs`: a retry a job asks for then stays deferred); returns jobs completed."""
    worker = KanmonWorker(
        **worker_options(settings, queue),
        burst=True,
        handle_signals=False,
        max_burst_jobs=max_jobs,
    )
    worker.cron_jobs = []
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker.jobs_complete
