"""`kanmon admin ...`: argparse wiring and plain-text tables for the operator console (O1).

Exit codes, the same for every subcommand, so scripts can branch on them:
  0  done; nothing needs attention
  1  something needs attention (stuck SMS; outbox rows still stuck after --replay; a queue
     without a live worker)
  2  usage or configuration error (argparse, a missing KANMON_* setting or key)
  3  reset-2fa: no account has that username
  4  the database or Redis could not be used (the message says why)

Heavy imports (tortoise, arq, the services) happen when a command runs, so `kanmon --help` and the
other commands stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gateway.arguments import whole_number
from gateway.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from arq.connections import ArqRedis, RedisSettings

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_USAGE = 2
EXIT_UNKNOWN_USER = 3
EXIT_UNAVAILABLE = 4

DEFAULT_OUTBOX_AGE = 60
DEFAULT_SMS_AGE = 300
DEFAULT_REKEY_BATCH = 500

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

EXIT_CODES_HELP = """exit codes:
  0  done, nothing needs attention
  1  something needs attention (see the command)
  2  usage or configuration error
  3  reset-2fa: unknown username
  4  the database or Redis could not be used"""


# Output -----------------------------------------------------------------------------------------


def format_age(age: timedelta | None) -> str:
    if age is None:
        return "-"
    seconds = int(age.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned plain text with a header row; numbers right-aligned, `None` shown as `-`."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(render_table(headers, rows))


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def _exit_codes(*lines: str) -> str:
    return "exit codes:\n" + "\n".join(f"  {line}" for line in lines)


def _error(message: str) -> None:
    print(f"kanmon admin: {message}", file=sys.stderr)


# Argument types ---------------------------------------------------------------------------------


def _ticket(text: str) -> str:
    from gateway.admin.support import clean_ticket
    from gateway.core.errors import BadUserInput

    try:
        return clean_ticket(text)
    except BadUserInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _operator(text: str) -> str:
    from gateway.admin.support import clean_operator
    from gateway.core.errors import BadUserInput

    try:
        return clean_operator(text)
    except BadUserInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def default_operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


# Backends ---------------------------------------------------------------------------------------


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[None]:
    from gateway.core.db import close_database, open_database

    await open_database(settings.resolved_database_url())
    try:
        yield
    finally:
        await close_database()


@asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    from gateway.container import redis_client

    if not settings.redis_url:
        raise ConfigurationError("KANMON_REDIS_URL is required")
    redis = redis_client(settings.redis_url)
    try:
        # Before any change: a command that cannot reach Redis stops here, having done nothing.
        await redis.ping()
        yield redis
    finally:
        await redis.aclose()


# Commands ---------------------------------------------------------------------------------------


async def _reset_2fa(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.support import ResetRequest, UnknownUser, reset_two_factor
    from gateway.container import build_services

    settings.secret_keys()  # fail fast (exit 2) on a missing key, before touching anything
    request = ResetRequest(args.username, args.ticket, args.operator, args.reason)
    async with _database(settings), _redis(settings) as redis:
        services = build_services(settings, redis)
        try:
            report = await reset_two_factor(services, request)
        except UnknownUser:
            _error(f"no account has the username {args.username!r}; nothing was changed")
            return EXIT_UNKNOWN_USER
    print(f"Two-factor authentication reset for {report.username} (user {report.user_id})")
    print(f"ticket {request.ticket}, operator {request.operator}")
    print()
    phone = "none"
    if report.phone_removed:
        phone = f"removed ({report.masked_phone})" if report.masked_phone else "removed"
    print_table(
        ["CHANGE", "RESULT"],
        [
            ["two-factor", "turned off" if report.two_factor_was_enabled else "was already off"],
            ["authenticator", "removed" if report.totp_removed else "none"],
            ["phone", phone],
            ["devices", f"{report.devices_removed} removed"],
            ["backup codes", f"{report.backup_codes_invalidated} invalidated"],
            ["temporary password", "revoked" if report.temporary_password_revoked else "none"],
            ["sessions", f"{report.sessions_revoked} revoked"],
            [
                "notice",
                "two_factor_disabled queued" if report.two_factor_was_enabled else "none",
            ],
            ["security event", "support.two_factor_reset recorded"],
        ],
    )
    return EXIT_OK


async def _outbox(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin import reports
    from gateway.core.outbox import OutboxRelay

    older_than = timedelta(seconds=args.older_than)
    async with _database(settings):
        backlog = await reports.outbox_backlog()
        stuck, total = await reports.stuck_outbox(older_than)
        print("Outbox backlog (rows not yet handed to arq)")
        print_table(
            ["QUEUE", "UNDISPATCHED", "OLDEST"],
            [[b.queue, b.undispatched, format_age(b.oldest_age)] for b in backlog],
        )
        print()
        print(f"Stuck rows (undispatched for more than {args.older_than}s): {total}")
        if stuck:
            print_table(
                ["ID", "QUEUE", "JOB", "AGE", "ATTEMPTS"],
                [[r.id, r.queue, r.job_name, format_age(r.age), r.attempts] for r in stuck],
            )
            if total > len(stuck):
                print(f"(the oldest {len(stuck)} of {total})")
        if not args.replay:
            return EXIT_OK
        async with _redis(settings) as redis:
            replay = await reports.replay_outbox(OutboxRelay(redis), older_than)
    print()
    print(f"Replayed: {replay.dispatched} dispatched, {replay.remaining} still stuck")
    return EXIT_ATTENTION if replay.remaining else EXIT_OK


async def _sms_stuck(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin import reports

    async with _database(settings):
        stuck, total = await reports.stuck_sms(timedelta(seconds=args.older_than))
    if not stuck:
        print(f"No SMS has been QUEUED or SENDING for more than {args.older_than}s.")
        return EXIT_OK
    print(f"SMS QUEUED or SENDING for more than {args.older_than}s: {total}")
    print_table(
        ["ID", "STATUS", "ATTEMPTS", "PROVIDER", "ERROR", "TO", "AGE"],
        [
            [
                m.id,
                m.status.value,
                m.attempts,
                m.provider,
                m.error_code,
                m.masked_number,
                format_age(m.age),
            ]
            for m in stuck
        ],
    )
    if total > len(stuck):
        print(f"(the oldest {len(stuck)} of {total})")
    return EXIT_ATTENTION


async def _queues(settings: Settings, _: argparse.Namespace) -> int:
    from gateway.admin import reports

    async with _redis(settings) as redis:
        depths = await reports.queue_depths(redis)
    print_table(
        ["QUEUE", "DEPTH", "OLDEST DUE", "WORKER"],
        [
            [d.queue, d.depth, format_age(d.oldest_due_age), "alive" if d.worker_alive else "none"]
            for d in depths
        ],
    )
    # A queue nobody consumes grows silently (logins wait on sms and push): scripts and probes
    # branch on the exit code, not on the table.
    return EXIT_OK if all(d.worker_alive for d in depths) else EXIT_ATTENTION


async def _rekey(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.admin.rekey import rekey
    from gateway.core.crypto import SecretBox

    # A missing or malformed key is a ConfigurationError (exit 2) before anything is read.
    box = SecretBox(settings.secret_keys())
    async with _database(settings):
        report = await rekey(box, batch=args.batch_size)
    print(json.dumps(report.as_json(), indent=2))
    return EXIT_OK


# Wiring -----------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `kanmon admin` and its subcommands to the `kanmon` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    admin = sub.add_parser(
        "admin",
        help="operator console: reset 2FA, outbox, stuck SMS, queues, rekey",
        description=_wrap(
            "Support and operator commands (O1). Settings come from KANMON_* variables."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    reset = commands.add_parser(
        "reset-2fa",
        help="turn a user's 2FA off and remove every method (H1 'contact support')",
        description=_wrap(
            "After an identity check: turns 2FA off, removes the authenticator, phone "
            "and devices, invalidates backup codes and the temporary password, revokes every "
            "session, records `support.two_factor_reset` (ticket, operator and reason are shown to "
            "the user in their security events) and notifies the user, in one transaction."
        ),
        epilog=_exit_codes(
            "0  reset done",
            "2  usage error (--ticket is required), nothing changed",
            "3  no account has that username, nothing changed",
            "4  the database or Redis could not be used, nothing changed",
        ),
        formatter_class=formatter,
    )
    reset.add_argument("username")
    reset.add_argument(
        "--ticket", required=True, type=_ticket, help="support ticket reference (1-64 characters)"
    )
    reset.add_argument(
        "--operator",
        type=_operator,
        default=None,
        help="who performs the reset (default: the login name, $USER)",
    )
    reset.add_argument("--reason", default=None, help="short note, kept in the security event")
    reset.set_defaults(admin_handler=_reset_2fa)

    outbox = commands.add_parser(
        "outbox",
        help="outbox backlog and stuck rows; --replay hands them to arq now",
        description=_wrap(
            "Rows written with a change but not handed to arq yet (S4), per queue, and "
            "the rows stuck for longer than --older-than seconds."
        ),
        epilog=_exit_codes(
            "0  shown (with --replay: every stuck row was dispatched)",
            "1  with --replay: rows are still stuck afterwards",
            "2  usage error",
            "4  the database or Redis could not be used",
        ),
        formatter_class=formatter,
    )
    outbox.add_argument("--replay", action="store_true", help="dispatch the stuck rows now")
    outbox.add_argument(
        "--older-than",
        type=whole_number("seconds", 0),
        default=DEFAULT_OUTBOX_AGE,
        metavar="SECONDS",
        help=f"a row is stuck after this long undispatched (default {DEFAULT_OUTBOX_AGE})",
    )
    outbox.set_defaults(admin_handler=_outbox)

    sms = commands.add_parser(
        "sms-stuck",
        help="SMS still QUEUED or SENDING after --older-than seconds",
        description=_wrap(
            "Stuck SMS with status, attempts, provider, error code and masked number; "
            "never the full number or the text."
        ),
        epilog=_exit_codes(
            "0  no SMS is stuck",
            "1  some SMS are stuck (listed)",
            "2  usage error",
            "4  the database could not be used",
        ),
        formatter_class=formatter,
    )
    sms.add_argument(
        "--older-than",
        type=whole_number("seconds", 0),
        default=DEFAULT_SMS_AGE,
        metavar="SECONDS",
        help=f"a message is stuck after this long (default {DEFAULT_SMS_AGE})",
    )
    sms.set_defaults(admin_handler=_sms_stuck)

    queues = commands.add_parser(
        "queues",
        help="arq queue depth, oldest due job and worker health per queue",
        description=_wrap(
            "Per queue (sms, push, maintenance): jobs waiting, how long the oldest due "
            "job has waited, and whether a worker's health-check key is present."
        ),
        epilog=_exit_codes(
            "0  shown; every queue has a live worker",
            "1  shown; some queue has no live worker (WORKER none)",
            "2  usage error",
            "4  Redis could not be used",
        ),
        formatter_class=formatter,
    )
    queues.set_defaults(admin_handler=_queues)

    rekey = commands.add_parser(
        "rekey",
        help="re-seal every stored secret under KANMON_SECRET_KEY after a rotation (T3)",
        description=_wrap(
            "Opens every sealed secret (authenticator secrets, pending ones too, device "
            "login-code secrets, SMS codes) still under a key from KANMON_OLD_SECRET_KEYS and "
            "seals it under KANMON_SECRET_KEY, in batches, each row only if it is unchanged "
            "meanwhile: safe to run twice and beside live traffic. Prints a JSON report: counts "
            "per kind, secrets no accepted key opens, and the backup codes, temporary passwords "
            "and SMS codes whose hashes still need an old key (they cannot be re-hashed)."
        ),
        epilog=_exit_codes(
            "0  done (the report says whether the old keys are still needed)",
            "2  usage or configuration error (KANMON_SECRET_KEY missing or malformed)",
            "4  the database could not be used",
        ),
        formatter_class=formatter,
    )
    rekey.add_argument(
        "--batch-size",
        type=whole_number("rows", 1),
        default=DEFAULT_REKEY_BATCH,
        metavar="ROWS",
        help=f"rows read per query (default {DEFAULT_REKEY_BATCH})",
    )
    rekey.set_defaults(admin_handler=_rekey)


def run(args: argparse.Namespace) -> int:
    """Runs the chosen `kanmon admin` subcommand; ConfigurationError is left to the caller."""
    handler: Handler = args.admin_handler
    if getattr(args, "operator", "") is None:
        args.operator = default_operator()
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        _error(f"invalid KANMON_* settings: {exc}")
        return EXIT_USAGE
    try:
        return asyncio.run(handler(settings, args))
    except ConfigurationError:
        raise
    except Exception as exc:
        # Anything unexpected still exits 4, never 1: 1 means "needs attention" to scripts.
        if not _backend_error(exc):
            traceback.print_exc()
        _error(f"the database or Redis could not be used: {type(exc).__name__}: {exc}")
        return EXIT_UNAVAILABLE


def _backend_error(exc: Exception) -> bool:
    from redis.exceptions import RedisError
    from tortoise.exceptions import BaseORMException

    return isinstance(exc, OSError | RedisError | BaseORMException)


def check_worker(options: Mapping[str, Any]) -> int:
    """`kanmon worker --queue Q --check`, for probes: 0 when the queue's arq health-check key
    exists (a worker refreshes it every health_check_interval and it expires soon after), else
    1, also when Redis cannot be reached. Read with the command bound (arq's `check_health`
    pings with none): against a frozen Redis the probe fails in seconds instead of hanging
    until the orchestrator kills it."""
    from redis.exceptions import RedisError

    key = options["health_check_key"]
    try:
        healthy = asyncio.run(_health_key_exists(options["redis_settings"], key))
    except (RedisError, OSError) as exc:
        print(f"kanmon worker: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    print(f"{key}: {'healthy' if healthy else 'no recent health check'}")
    return 0 if healthy else 1


async def _health_key_exists(settings: RedisSettings, key: str) -> bool:
    from gateway.container import bounded_pool

    redis = bounded_pool(settings)
    try:
        return bool(await redis.exists(key))
    finally:
        await redis.aclose()
