"""`uvicorn --factory gateway.asgi:app_from_environment`: what `kanmon serve` runs."""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.settings import Settings


def app_from_environment() -> Starlette:
    settings = Settings()
    configure_logging()
    return create_app(settings)
