"""The one place that maps failures to GraphQL errors with a stable `extensions.code` (G2).

Domain errors pass through with their code; malformed documents and variables become
BAD_USER_INPUT (or QUERY_REJECTED for the limits); an unreachable database or Redis becomes
SERVICE_UNAVAILABLE; anything else is logged here and masked as INTERNAL.
"""

from __future__ import annotations

import logging

from asyncpg.exceptions import OperatorInterventionError, PostgresConnectionError
from graphql import GraphQLError
from graphql.validation.validate import ValidationAbortedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tortoise.exceptions import DBConnectionError, OperationalError

from gateway.core.errors import DomainError, ServiceUnavailable

log = logging.getLogger("gateway.graphql")

TOO_COMPLEX = "The document is too complex to validate."

UNAVAILABLE = (
    # PostgreSQL shutting down or starting up (57P01, 57P03, ...) and lost connections: asyncpg
    # raises these itself, not through tortoise's wrappers.
    OperatorInterventionError,
    PostgresConnectionError,
    RedisConnectionError,
    RedisTimeoutError,
    DBConnectionError,
    OperationalError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def _with_code(error: GraphQLError, message: str, extensions: dict[str, object]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )


def map_error(error: GraphQLError, *, development: bool) -> GraphQLError:
    original = error.original_error
    if isinstance(original, DomainError):
        return _with_code(error, original.message, original.extensions)
    if original is None or isinstance(original, GraphQLError):
        # G3: outside development no message may hint at the schema ("Did you mean ...?").
        message = error.message if development else error.message.split(" Did you mean")[0]
        if error.extensions and "code" in error.extensions:
            return _with_code(error, message, dict(error.extensions))
        if "tokens. Parsing aborted" in message:
            return _with_code(error, message, {"code": "QUERY_REJECTED"})
        if isinstance(error, ValidationAbortedError):
            # graphql-core's budget for comparing fields (hundreds of the same field) ran out.
            return _with_code(error, TOO_COMPLEX, {"code": "QUERY_REJECTED"})
        return _with_code(error, message, {"code": "BAD_USER_INPUT"})
    if isinstance(original, UNAVAILABLE):
        log.warning("dependency unavailable: %s: %s", type(original).__name__, str(original)[:120])
        unavailable = ServiceUnavailable()
        return _with_code(error, unavailable.message, unavailable.extensions)
    log.error("unexpected error in %s", error.path, exc_info=original)
    return _with_code(error, "Internal server error.", {"code": "INTERNAL"})
