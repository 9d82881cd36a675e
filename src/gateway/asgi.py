"""`uvicorn --factory gateway.asgi:app_from_environment`: what `kanmon serve` runs."""

from __future__ import annotations

import gc

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.core.metrics import watch_gc_pauses
from gateway.logs import configure_logging
from gateway.settings import Settings


def app_from_environment() -> Starlette:
    settings = Settings()
    configure_logging()
    app = create_app(settings)
    # Long-lived objects (modules, the schema) leave the collector's sight. Young collections
    # run every 10,000 allocations instead of 700 (fewer of them), but not every 50,000: on
    # the 2-core machine of bench/push_approval.py those took 60 to 90 ms each and set the
    # approvals' p99; at 10,000 none took over 20 ms.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    watch_gc_pauses()
    return app
