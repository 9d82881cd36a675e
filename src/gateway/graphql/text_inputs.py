"""G2: text with a NUL character (core.text) is refused before anything runs, whether it came
in a variable (`has_nul` over the variables, in the document pipeline) or as a `\\u0000`
escape in a literal (this validation rule)."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, StringValueNode, ValidationRule

from gateway.core.text import NUL

MESSAGE = "Text arguments may not contain NUL characters."
NUL_IN_TEXT = GraphQLError(MESSAGE, extensions={"code": "BAD_USER_INPUT"})


class NoNulInLiteralsRule(ValidationRule):
    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        if NUL in node.value:
            self.report_error(GraphQLError(MESSAGE, node, extensions={"code": "BAD_USER_INPUT"}))
