"""Where the tests' database and Redis come from.

With KANMON_TEST_DATABASE_URL / KANMON_TEST_REDIS_URL set (CI: the machine's PostgreSQL and
Redis) the tests use them, each run in a fresh PostgreSQL database; unset, they use a SQLite file
and an embedded valkey-server, as a fresh machine would.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass
class Backends:
    database_url: str
    redis_url: str
    postgres: bool
    cleanup: list[Any]


async def _create_pg_database(admin_url: str) -> tuple[str, str]:
    import asyncpg

    name = f"kanmon_test_{secrets.token_hex(4)}"
    parts = urlsplit(admin_url)
    conn = await asyncpg.connect(urlunsplit(parts._replace(scheme="postgresql")))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(parts._replace(path=f"/{name}")), name


async def _drop_pg_database(admin_url: str, name: str) -> None:
    import asyncpg

    parts = urlsplit(admin_url)
    conn = await asyncpg.connect(urlunsplit(parts._replace(scheme="postgresql")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def open_backends() -> Backends:
    cleanup: list[Any] = []
    admin_url = os.environ.get("KANMON_TEST_DATABASE_URL")
    if admin_url:
        database_url, name = await _create_pg_database(admin_url)
        cleanup.append(lambda: _drop_pg_database(admin_url, name))
        postgres = True
    else:
        folder = Path(tempfile.mkdtemp(prefix="kanmon-test-db-"))
        database_url = f"sqlite://{folder / 'test.sqlite3'}"
        postgres = False
    redis_url = os.environ.get("KANMON_TEST_REDIS_URL")
    if not redis_url:
        from gateway.dev import start_embedded_redis

        server, redis_url = start_embedded_redis()
        cleanup.append(server.stop)
    return Backends(database_url, redis_url, postgres, cleanup)
