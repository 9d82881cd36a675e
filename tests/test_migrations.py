"""The database schema evolves through migration files: the models and the files must agree."""

from __future__ import annotations

import subprocess
import sys

DETECT = """
import asyncio
from tortoise.cli.cli import tortoise_cli_context
from tortoise.migrations.autodetector import MigrationAutodetector
from gateway.core.db import MIGRATION_CONFIG

async def main() -> None:
    apps = MIGRATION_CONFIG["apps"]
    async with tortoise_cli_context(MIGRATION_CONFIG) as ctx:
        writers = await MigrationAutodetector(ctx.apps, apps).changes()
    print("CHANGES:" + ",".join(w.name for w in writers))

asyncio.run(main())
"""


def test_migrations_match_the_models() -> None:
    """Fails when a model changed without `make migrations` (a new migration file)."""
    result = subprocess.run(
        [sys.executable, "-c", DETECT], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().endswith("CHANGES:"), result.stdout
