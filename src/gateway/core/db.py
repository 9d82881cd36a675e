"""Tortoise configuration: one app, one connection, UTC everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url

MODEL_MODULES = [
    "gateway.accounts.models",
    "gateway.login.models",
    "gateway.factors.totp.models",
    "gateway.factors.backup_codes.models",
    "gateway.factors.temporary_passwords.models",
    "gateway.factors.sms.models",
    "gateway.factors.push.models",
    "gateway.core.outbox",
    "gateway.core.code_throttle",
    "gateway.core.audit",
]

APP_LABEL = "kanmon"


def with_pool_size(database_url: str, size: int) -> str:
    """asyncpg pools default to 5 connections per process; requests queue behind that long
    before the database is busy. An explicit `maxsize` in the URL wins."""
    if not database_url.startswith(("postgres://", "asyncpg://")) or "maxsize=" in database_url:
        return database_url
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}minsize=1&maxsize={size}"


class _NoResetConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg sends `RESET ALL; UNLISTEN *; CLOSE ALL; ...` each time a connection goes back
    to the pool: a round trip per query outside a transaction. Kanmon keeps no session state
    (no LISTEN, advisory locks, SET or open cursors), so nothing needs resetting; an open
    transaction is still rolled back by asyncpg itself."""

    def get_reset_query(self) -> str:
        return ""


# A PostgreSQL that stops answering (frozen, partitioned away) must not hold every request
# until TCP gives up: connecting gives up after CONNECT_TIMEOUT and each statement after
# STATEMENT_TIMEOUT, which the API then answers as SERVICE_UNAVAILABLE. The slowest statement
# of the serving, worker and admin paths takes milliseconds; migrations (an index built on a
# large table) run without the statement limit.
CONNECT_TIMEOUT_SECONDS = 5.0
STATEMENT_TIMEOUT_SECONDS = 30.0


def _connection(database_url: str, *, bounded: bool) -> str | dict[str, Any]:
    if database_url.startswith("sqlite://") and "busy_timeout" not in database_url:
        # Wait for a lock (another process's write) instead of failing at once.
        separator = "&" if "?" in database_url else "?"
        return f"{database_url}{separator}busy_timeout=5000"
    if not database_url.startswith(("postgres://", "asyncpg://")):
        return database_url
    expanded: dict[str, Any] = expand_db_url(database_url)
    credentials = expanded["credentials"]
    credentials["connection_class"] = _NoResetConnection
    credentials.setdefault("timeout", CONNECT_TIMEOUT_SECONDS)
    if bounded:
        credentials.setdefault("command_timeout", STATEMENT_TIMEOUT_SECONDS)
    return expanded


def tortoise_config(database_url: str, *, bounded: bool = True) -> dict[str, Any]:
    """`bounded`: statements time out (everything but migrations)."""
    return {
        "connections": {"default": _connection(database_url, bounded=bounded)},
        "apps": {
            APP_LABEL: {
                "models": MODEL_MODULES,
                "default_connection": "default",
                "migrations": "gateway.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# Read by `tortoise makemigrations` through [tool.tortoise]; it never connects to this database.
MIGRATION_CONFIG = tortoise_config("sqlite://:memory:")


def prepare_sqlite_directory(database_url: str) -> None:
    """SQLite makes its file but not the directories above it, and tortoise then waits
    forever for a connection that failed: the directory is made first."""
    if not database_url.startswith("sqlite://"):
        return
    path = database_url.removeprefix("sqlite://").split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


async def open_database(database_url: str) -> None:
    prepare_sqlite_directory(database_url)
    await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)


def database_is_open() -> bool:
    return Tortoise.is_inited()


async def close_database() -> None:
    await Tortoise.close_connections()


async def apply_migrations(database_url: str) -> None:
    """Brings the schema up to date through the migration files, never `generate_schemas`."""
    from tortoise.migrations.api import migrate

    prepare_sqlite_directory(database_url)
    await migrate(config=tortoise_config(database_url, bounded=False))
    await Tortoise.close_connections()
