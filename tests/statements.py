"""Counts the SQL statements tortoise sends (BEGIN and COMMIT are not among them): the hot
paths' round trips are a budget that the README's performance figures rest on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tortoise import connections

DB_LOGGER = "tortoise.db_client"


class _Statements(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.sql: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # debug("%s: %s", query, values): the query alone, never the values (may be secret);
        # debug(query) for scripts. Pool messages are not statements.
        if record.msg == "%s: %s" and isinstance(record.args, tuple):
            self.sql.append(str(record.args[0]).strip())
        elif not record.args:
            self.sql.append(str(record.msg).strip())


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """The statements sent inside the block, in order. The records go to this handler only."""
    logger = logging.getLogger(DB_LOGGER)
    handler = _Statements()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler.sql
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def on_postgres() -> bool:
    return bool(connections.get("default").capabilities.dialect == "postgres")
