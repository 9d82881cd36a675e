"""O3: GraphQL operation latency by operation name."""

from __future__ import annotations

import time
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

from gateway.core.metrics import GRAPHQL_SECONDS, operation_label


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        label = operation_label(self.execution_context.operation_name)
        GRAPHQL_SECONDS.labels(label).observe(time.perf_counter() - started)
