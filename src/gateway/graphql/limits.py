"""G3: document limits checked during validation, before anything executes.

Depth, aliases and credential checks are counted with fragments expanded, so neither aliases
nor fragments nor repeated spreads can smuggle a second code verification into one request.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
)
from graphql.language.visitor import SKIP

MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2000
MAX_BODY_BYTES = 64 * 1024

# Fields that check a password or a code, or send one: at most one of them per request.
VERIFYING_FIELDS = frozenset(
    {
        "addPhone",
        "requestSmsCode",
        "signUp",
        "login",
        "reauthenticate",
        "verifyLoginChallenge",
        "completeLoginChallenge",
        "confirmTotpEnrollment",
        "verifyPhone",
        "approveLoginRequest",
        "denyLoginRequest",
    }
)

REJECTED = {"code": "QUERY_REJECTED"}


class _Walk:
    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.max_depth = 0
        self.aliases = 0
        self.verifying = 0

    def selection_set(
        self, node: SelectionSetNode | None, depth: int, seen: frozenset[str]
    ) -> None:
        if node is None:
            return
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                self.max_depth = max(self.max_depth, depth + 1)
                if selection.alias is not None:
                    self.aliases += 1
                if selection.name.value in VERIFYING_FIELDS:
                    self.verifying += 1
                if self.max_depth <= MAX_DEPTH:
                    self.selection_set(selection.selection_set, depth + 1, seen)
            elif isinstance(selection, InlineFragmentNode):
                self.selection_set(selection.selection_set, depth, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in seen:
                    self.selection_set(fragment.selection_set, depth, seen | {name})


class DocumentLimitsRule(ValidationRule):
    def enter_document(self, node: DocumentNode, *_: Any) -> Any:
        fragments = {
            d.name.value: d for d in node.definitions if isinstance(d, FragmentDefinitionNode)
        }
        for definition in node.definitions:
            if not isinstance(definition, OperationDefinitionNode):
                continue
            walk = _Walk(fragments)
            walk.selection_set(definition.selection_set, 0, frozenset())
            if walk.max_depth > MAX_DEPTH:
                self._reject(f"The query is deeper than {MAX_DEPTH} levels.")
            if walk.aliases > MAX_ALIASES:
                self._reject(f"The query uses more than {MAX_ALIASES} aliases.")
            if walk.verifying > 1:
                self._reject("A request may check at most one password or code.")
        return SKIP

    def _reject(self, message: str) -> None:
        self.report_error(GraphQLError(message, extensions=dict(REJECTED)))
