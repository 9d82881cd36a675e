"""The per-request document pipeline: token limit, cached parse and validation with our rules,
and operation latency (O3), in one schema extension.

Strawberry builds a context manager per hook per extension for every request; five small
extensions (metrics, MaxTokensLimiter, AddValidationRules, ParserCache, ValidationCache) cost
a fifth of a small query's CPU in that machinery alone. One extension does the same work.
Parse and validation are cached together under the query text: a validation cache keyed by
the parsed document hashes the whole syntax tree on every request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    parse,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from gateway.core.metrics import GRAPHQL_SECONDS, operation_label
from gateway.core.text import has_nul
from gateway.graphql.text_inputs import NUL_IN_TEXT

CACHED_DOCUMENTS = 1024

Checked = tuple[DocumentNode, list[GraphQLError]]


@lru_cache(maxsize=CACHED_DOCUMENTS)
def _checked(
    schema: GraphQLSchema, query: str, max_tokens: int, rules: tuple[type[ASTValidationRule], ...]
) -> Checked:
    """Shared by every request of the process: documents and their errors are never changed
    after this. A document over the token limit raises here and is not cached."""
    document = parse(query, max_tokens=max_tokens)
    return document, validate_document(schema, document, rules)


class DocumentPipeline(SchemaExtension):
    """Strawberry refuses a request without a query before parsing, so `query` is set here."""

    def __init__(self, rules: tuple[type[ASTValidationRule], ...], max_tokens: int) -> None:
        self._rules = rules
        self._max_tokens = max_tokens
        self._errors: list[GraphQLError] = []

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        context = self.execution_context
        context.validation_rules = context.validation_rules + self._rules
        yield
        label = operation_label(self.execution_context.operation_name)
        GRAPHQL_SECONDS.labels(label).observe(time.perf_counter() - started)

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        assert context.query, "strawberry refuses an empty query first"
        try:
            context.graphql_document, self._errors = _checked(
                context.schema._schema, context.query, self._max_tokens, context.validation_rules
            )
        except GraphQLError:
            # Strawberry then parses the document itself, with the same token limit, and
            # reports the failure its own way: an error over HTTP; on a websocket, a closed
            # socket (4400) rather than an operation that ends with no word.
            context.parse_options = {**context.parse_options, "max_tokens": self._max_tokens}
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        context.pre_execution_errors = self._errors or _refusals(context)
        yield


def _refusals(context: ExecutionContext) -> list[GraphQLError]:
    """What a valid document still may not do."""
    if has_nul(context.variables):
        return [NUL_IN_TEXT]
    if _unnamed_among_many(context):
        return [OPERATION_NAME_NEEDED]
    if context.operation_type is OperationType.SUBSCRIPTION and _over_http(context.context):
        return [SUBSCRIPTION_OVER_HTTP]
    return []


# The GraphQL spec's rule; strawberry would run the document's first operation.
OPERATION_NAME_NEEDED = GraphQLError(
    "Must provide operation name if query contains multiple operations.",
    extensions={"code": "BAD_USER_INPUT"},
)


# Strawberry would run a subscription sent by POST or GET as a query and fail on its stream.
SUBSCRIPTION_OVER_HTTP = GraphQLError(
    "Subscriptions are served over the websocket on this path (graphql-transport-ws).",
    extensions={"code": "BAD_USER_INPUT"},
)


def _unnamed_among_many(context: ExecutionContext) -> bool:
    document = context.graphql_document
    if document is None or getattr(context, "_provided_operation_name", None) is not None:
        return False
    operations = (d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return next(operations, None) is not None and next(operations, None) is not None


def _over_http(context: object) -> bool:
    request = getattr(context, "request", None)
    return request is not None and request.scope.get("type") == "http"
