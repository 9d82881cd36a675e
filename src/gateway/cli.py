"""The `kanmon` command: dev, serve, worker, migrate, export-schema."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from gateway.arguments import whole_number
from gateway.settings import ConfigurationError, Settings

MAX_PORT = 65535


def _export_schema(_: argparse.Namespace) -> int:
    from gateway.graphql.schema import build_schema

    sys.stdout.write(str(build_schema(development=True)).rstrip() + "\n")
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from gateway.core.db import apply_migrations

    settings = Settings()
    asyncio.run(apply_migrations(settings.resolved_database_url()))
    print("migrations applied")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    settings = Settings()
    settings.secret_keys()  # fail fast on a missing or malformed key
    if not settings.redis_url:
        raise ConfigurationError("KANMON_REDIS_URL is required (kanmon dev starts one for you)")
    return serve(args.host or settings.host, args.port or settings.port, args.workers)


def _worker(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from workers.runner import KanmonWorker
    from workers.settings import worker_options

    configure_logging()
    settings = Settings()
    options = worker_options(settings, args.queue)
    if args.check:
        from gateway.admin.commands import check_worker

        return check_worker(options)
    if args.concurrency:
        options["max_jobs"] = args.concurrency
    if args.burst:
        # A burst drains the queue and exits; the maintenance crons (every second) would
        # keep it busy for good.
        options["cron_jobs"] = []
    if settings.worker_metrics_port:
        # O3: the SMS and push counters live in the worker processes; expose them here.
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    _use_uvloop()
    worker = KanmonWorker(**options, burst=args.burst)
    worker.run()
    return 0


def _use_uvloop() -> None:
    """uvicorn already runs the gateway on uvloop; the workers' loop gains as much from it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _dev(_: argparse.Namespace) -> int:
    from gateway.dev import run_dev

    os.environ.setdefault("KANMON_ENV", "development")
    try:
        return asyncio.run(run_dev(Settings()))
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after its orderly shutdown; everything is stopped by now.
        return 0


def _admin(args: argparse.Namespace) -> int:
    from gateway.admin.commands import run

    return run(args)


def _settings_problem(error: ValidationError) -> str:
    """pydantic's report, one line per setting, named as the environment names it."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        lines.append(f"KANMON_{field.upper()}: {problem['msg'].removeprefix('Value error, ')}")
    return "invalid setting: " + "; ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kanmon", description="Kanmon login verification")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="gateway, workers and (if needed) an embedded Redis, on SQLite")
    serve = sub.add_parser("serve", help="the GraphQL gateway only")
    serve.add_argument(
        "--workers", type=whole_number("processes", 1), default=1, help="uvicorn worker processes"
    )
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=whole_number("port", 1, MAX_PORT), default=None)
    worker = sub.add_parser("worker", help="an arq worker for one queue")
    worker.add_argument("--queue", required=True, choices=["sms", "push", "maintenance"])
    worker.add_argument("--concurrency", type=whole_number("jobs", 1), default=None)
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--check",
        action="store_true",
        help="probe: exit 0 if a worker of the queue reported health recently, else 1",
    )
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("export-schema", help="print the GraphQL SDL")
    from gateway.admin.commands import register as register_admin

    register_admin(sub)
    return parser


COMMANDS = {
    "dev": _dev,
    "serve": _serve,
    "worker": _worker,
    "migrate": _migrate,
    "export-schema": _export_schema,
    "admin": _admin,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigurationError as exc:
        print(f"kanmon: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"kanmon: {_settings_problem(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        _log_failure(args.command)
        return 1


def _log_failure(command: str) -> None:
    """An unexpected error ends the command as one JSON log line, its traceback inside, like
    every other line a worker or gateway writes: a raw multi-line traceback broke the log
    pipeline's parsing exactly when something had gone wrong. Commands that configure no logging
    (migrate, export-schema) get the JSON logger here."""
    import logging

    from gateway.logs import configure_logging

    if not logging.getLogger().handlers:
        configure_logging()
    logging.getLogger("kanmon").exception(
        "kanmon %s stopped on an unexpected error", command, extra={"command": command}
    )


if __name__ == "__main__":
    raise SystemExit(main())
