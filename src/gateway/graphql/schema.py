"""The schema: one merged Query and Mutation, the limits, the caches and the error mapping."""

from __future__ import annotations

import strawberry
from graphql import ASTValidationRule, GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from gateway.graphql.accounts import AccountMutation, AccountQuery
from gateway.graphql.execution import KanmonExecutionContext
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
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Expected errors are not log noise; `errors.map_error` logs the unexpected ones."""


def build_schema(*, development: bool) -> strawberry.Schema:
    # Introspection is refused by a validation rule, so the validation cache covers it too.
    rules: list[type[ASTValidationRule]] = [DocumentLimitsRule]
    if not development:
        rules.append(NoSchemaIntrospectionCustomRule)
    return KanmonSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[lambda: DocumentPipeline(tuple(rules), MAX_TOKENS)],
        config=StrawberryConfig(disable_field_suggestions=not development),
        execution_context_class=KanmonExecutionContext,
    )
