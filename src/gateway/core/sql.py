"""Hand-written SQL for the paths every login takes.

The query builder costs more CPU than the database spends answering these queries, and on
PostgreSQL every round trip is a write, a wake-up of the server and a read. The statements here
are written once, with the models' own column names, and their rows become models the ORM's
own way, so the rest of the code cannot tell them apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

M = TypeVar("M", bound=Model)


def statement(build: Callable[[], str]) -> Callable[[], str]:
    """Builds the SQL on first use: a model's foreign-key columns exist only once
    Tortoise.init has resolved the relations, after the modules are imported."""
    return cache(build)


def columns(model: type[Model]) -> list[str]:
    return list(model._meta.fields_db_projection.values())


def select_list(model: type[Model], alias: str, prefix: str = "") -> str:
    """`alias."col" AS "prefixcol", ...` for every column of the model."""
    return ", ".join(f'{alias}."{c}" AS "{prefix}{c}"' for c in columns(model))


def select_model(model: type[Model], alias: str, rest: str) -> Callable[[], str]:
    """`SELECT <every column of model as alias> <rest>`, built on first use (`statement`)."""
    return statement(lambda: "SELECT " + select_list(model, alias) + " " + rest)


def default_connection() -> BaseDBAsyncClient:
    connection: BaseDBAsyncClient = connections.get("default")
    return connection


def is_postgres(connection: BaseDBAsyncClient) -> bool:
    return connection.capabilities.dialect == "postgres"


def placeholders(connection: BaseDBAsyncClient, count: int) -> list[str]:
    """`$1..$n` on PostgreSQL, `?` on SQLite, for `str.format`-ed statements."""
    if is_postgres(connection):
        return [f"${n}" for n in range(1, count + 1)]
    return ["?"] * count


def bind(connection: BaseDBAsyncClient, params: Sequence[Any]) -> list[Any]:
    """SQLite keeps UUIDs as text; asyncpg takes them as they are."""
    if is_postgres(connection):
        return list(params)
    return [str(p) if isinstance(p, UUID) else p for p in params]


def to_model(model: type[M], row: Mapping[str, Any], prefix: str = "") -> M:
    return model._init_from_db(**{c: row[f"{prefix}{c}"] for c in columns(model)})


def _prepared(statement: str, params: Sequence[Any]) -> tuple[BaseDBAsyncClient, str, list[Any]]:
    connection = default_connection()
    sql = statement.format(*placeholders(connection, len(params)))
    return connection, sql, bind(connection, params)


async def fetch_rows(statement: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of `statement`, with `{0}`, `{1}`... for the placeholders (each used once)."""
    connection, sql, values = _prepared(statement, params)
    return await connection.execute_query_dict(sql, values)


async def fetch_models(
    model: type[M], statement: str, params: Sequence[Any], prefix: str = ""
) -> list[M]:
    """Rows of `statement` (placeholders as in `fetch_rows`) as models."""
    return [to_model(model, row, prefix) for row in await fetch_rows(statement, params)]


async def fetch_model(model: type[M], statement: str, params: Sequence[Any]) -> M | None:
    """The first row of `statement` as a model, or None."""
    found = await fetch_models(model, statement, params)
    return found[0] if found else None


async def execute(statement: str, params: Sequence[Any]) -> int:
    """Rows changed by `statement` (placeholders as in `fetch_rows`)."""
    connection, sql, values = _prepared(statement, params)
    changed, _ = await connection.execute_query(sql, values)
    return changed
