"""G2: text with a NUL character is refused before anything runs.

PostgreSQL's text types cannot hold U+0000, so such an argument would fail deep in a resolver,
as the database error that means "unavailable", after earlier steps (a send counted in S7, a
throttle window) had already happened. No username, password, code, number or name contains
one, so the request is bad input, whether the NUL came in a variable or as a `\\u0000` escape
in a literal."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, StringValueNode, ValidationRule

NUL = "\x00"

MESSAGE = "Text arguments may not contain NUL characters."
NUL_IN_TEXT = GraphQLError(MESSAGE, extensions={"code": "BAD_USER_INPUT"})


class NoNulInLiteralsRule(ValidationRule):
    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        if NUL in node.value:
            self.report_error(GraphQLError(MESSAGE, node, extensions={"code": "BAD_USER_INPUT"}))


def has_nul(value: object) -> bool:
    """Whether a variables value holds a NUL anywhere (strings, list items, object keys)."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False
