"""The schema: one merged Query and Mutation, the limits, the caches and the error mapping."""

from __future__ import annotations

import strawberry
from graphql import ASTValidationRule, GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from gateway.graphql.accounts import AccountMutation, AccountQuery
from gateway.graphql.context import GraphQLContext
from gateway.graphql.errors import map_error
from gateway.graphql.execution import KanmonExecutionContext, release_tracebacks
from gateway.graphql.factors.backup_codes import BackupCodeMutation
from gateway.graphql.factors.push import PushMutation
from gateway.graphql.factors.sms import SmsMutation
from gateway.graphql.factors.temporary_passwords import TemporaryPasswordMutation
from gateway.graphql.factors.totp import TotpMutation
from gateway.graphql.limits import MAX_TOKENS, DocumentLimitsRule
from gateway.graphql.login import LoginMutation, LoginQuery
from gateway.graphql.observability import DocumentPipeline
from gateway.graphql.security import SecurityMutation
from gateway.graphql.subscriptions import Subscription
from gateway.graphql.text_inputs import NoNulInLiteralsRule

Query = merge_types("Query", (AccountQuery, LoginQuery))
Mutation = merge_types(
    "Mutation",
    (
        AccountMutation,
        LoginMutation,
        TotpMutation,
        SecurityMutation,
        BackupCodeMutation,
        SmsMutation,
        PushMutation,
        TemporaryPasswordMutation,
    ),
)


class KanmonSchema(strawberry.Schema):
    development = False

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """G2 on websockets. Over HTTP the view maps every answer's errors (`process_result`),
        and `errors.map_error` logs the unexpected ones there; a websocket's answers never
        pass that way, so their errors are mapped here, in place: strawberry formats these
        very objects next. (Mapping is idempotent: the validation cache's shared errors come
        out the same for every later reader.)"""
        context = execution_context.context if execution_context else None
        if not isinstance(context, GraphQLContext) or not context.over_websocket:
            return
        for error in errors:
            mapped = map_error(error, development=self.development)
            error.message = mapped.message
            error.extensions = mapped.extensions
        release_tracebacks(errors)


def build_schema(*, development: bool) -> strawberry.Schema:
    # Introspection is refused by a validation rule, so the validation cache covers it too.
    rules: list[type[ASTValidationRule]] = [DocumentLimitsRule, NoNulInLiteralsRule]
    if not development:
        rules.append(NoSchemaIntrospectionCustomRule)
    schema = KanmonSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[lambda: DocumentPipeline(tuple(rules), MAX_TOKENS)],
        config=StrawberryConfig(disable_field_suggestions=not development),
        execution_context_class=KanmonExecutionContext,
    )
    schema.development = development
    return schema
