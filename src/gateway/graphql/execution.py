"""Operations that leave no reference cycles behind, so the cyclic collector has nothing to do.

graphql-core's executor hands its resolvers `async_helpers`, bound methods of the executor
itself: every operation's executor, and all it holds (request, context, session, rows), is
then a cycle that only the collector frees. At a few thousand operations per second that is
a young-generation collection every hundred or so requests, each stopping the process for
5 to 10 ms on the 2-core bench machine while every request in flight waits: the tail of the
approve-to-event latency. With the helpers holding the executor weakly, reference counting
frees an operation's objects as soon as its answer is sent.

Errors close cycles of their own (error -> traceback -> frame -> executor -> its error list);
`release_tracebacks` drops those tracebacks once the answer's errors are mapped.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfoHelpers
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext


class KanmonExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        executor = weakref.ref(self)

        # Resolvers run only while the executor runs them, so the reference is always live.
        def gather(*work: Any, **options: Any) -> Any:
            return _live(executor).gather_async_work(*work, **options)

        def track(*work: Any, **options: Any) -> Any:
            return _live(executor).track_async_work(*work, **options)

        self.async_helpers = GraphQLResolveInfoHelpers(gather=gather, track=track)


def _live(executor: weakref.ref[KanmonExecutionContext]) -> KanmonExecutionContext:
    found = executor()
    assert found is not None, "async helpers used after their operation ended"
    return found


def release_tracebacks(errors: Iterable[GraphQLError]) -> None:
    """Call only after the errors are mapped (and the unexpected ones logged with their
    traceback)."""
    for error in errors:
        pending: list[BaseException | None] = [error, error.original_error]
        seen: set[int] = set()
        while pending:
            exception = pending.pop()
            if exception is None or id(exception) in seen:
                continue
            seen.add(id(exception))
            exception.__traceback__ = None
            pending += [exception.__cause__, exception.__context__]
