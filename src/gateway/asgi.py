"""`uvicorn --factory gateway.asgi:app_from_environment`: what `kanmon serve` runs."""

from __future__ import annotations

import gc

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.settings import Settings


def app_from_environment() -> Starlette:
    settings = Settings()
    configure_logging()
    app = create_app(settings)
    # Long-lived objects (modules, the schema) leave the collector's sight, and young
    # collections run less often: fewer pauses in the middle of a request.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app
