"""The queries of a code check (L2, L5), folded into as few round trips as the rules allow."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from functools import cache
from uuid import UUID

from gateway.accounts.models import Session, User
from gateway.core import audit, sql
from gateway.factors.summary import MethodSummary, summary_columns, summary_from_row
from gateway.login.models import ChallengeStatus, LoginChallenge

# Users before challenges, as `lock_user` and then a challenge lock elsewhere: PostgreSQL
# locks the rows of a joined FOR UPDATE in the order of the FROM list.
_LOCKED_CHALLENGE = sql.select_model(
    LoginChallenge,
    "c",
    'FROM "users" u JOIN "login_challenges" c ON c."user_id" = u."id" WHERE c."id" = {0}',
)

_CHALLENGE = sql.select_model(LoginChallenge, "c", 'FROM "login_challenges" c WHERE c."id" = {0}')

_COMPLETE = sql.statement(
    lambda: (
        "WITH done AS ("  # noqa: S608
        ' UPDATE "login_challenges" SET "status" = $2, "completed_at" = $3 WHERE "id" = $1'
        "), events AS ("
        ' INSERT INTO "security_events" ("user_id", "kind", "detail", "ip_address", "created_at")'
        " SELECT $4::uuid, e.kind, e.detail, $5::text, $3::timestamptz"
        " FROM unnest($6::text[], $7::text[]) WITH ORDINALITY AS e(kind, detail, n) ORDER BY e.n"
        ') INSERT INTO "sessions" ('
        + ", ".join(f'"{c}"' for c in sql.columns(Session))
        + ") VALUES ("
        + ", ".join(f"${n}" for n in range(8, 8 + len(sql.columns(Session))))
        + ")"
    )
)


@cache
def _session_fields() -> list[str]:
    """The Session fields behind `_COMPLETE`'s columns, in its order."""
    reverse = Session._meta.fields_db_projection_reverse
    return [reverse[column] for column in sql.columns(Session)]


_CANDIDATE = sql.statement(
    lambda: (
        "SELECT "  # noqa: S608
        + sql.select_list(User, "u", "u_")
        + ", "
        + summary_columns('u."id"')
        + ' FROM "users" u WHERE u."username_key" = {0}'
    )
)


async def login_candidate(username_key: str) -> tuple[User, MethodSummary] | None:
    """The user a login names and what it has enrolled (L2's methods), in one round trip."""
    found = await sql.fetch_rows(_CANDIDATE(), [username_key])
    if not found:
        return None
    user = sql.to_model(User, found[0], "u_")
    return user, summary_from_row(user.two_factor_enabled, found[0])


async def find_challenge(challenge_id: UUID) -> LoginChallenge | None:
    """The challenge, read without locks: every subscriber reads it again at each event."""
    return await sql.fetch_model(LoginChallenge, _CHALLENGE(), [challenge_id])


async def lock_challenge(challenge_id: UUID) -> LoginChallenge | None:
    """The challenge as it is now, with its user's row and its own row locked for the rest of
    the transaction, in one round trip (SQLite serialises writers instead)."""
    connection = sql.default_connection()
    statement = _LOCKED_CHALLENGE() + (" FOR UPDATE" if sql.is_postgres(connection) else "")
    return await sql.fetch_model(LoginChallenge, statement, [challenge_id])


async def complete(
    challenge: LoginChallenge,
    now: datetime,
    events: Sequence[tuple[str, str | None]],
    ip_address: str | None,
    session: Session,
) -> None:
    """L5: the challenge is spent, the security events are recorded and the one session is
    written, in one statement on PostgreSQL. The caller holds the challenge's row lock."""
    connection = sql.default_connection()
    if not sql.is_postgres(connection):
        await LoginChallenge.filter(id=challenge.id).update(
            status=ChallengeStatus.COMPLETED, completed_at=now
        )
        for kind, detail in events:
            await audit.SecurityEvent.create(
                user_id=challenge.user_id,
                kind=kind,
                detail=detail,
                ip_address=ip_address,
                created_at=now,
            )
        await session.save()
        return
    session_values = [getattr(session, field) for field in _session_fields()]
    await connection.execute_query(
        _COMPLETE(),
        [
            challenge.id,
            ChallengeStatus.COMPLETED.value,
            now,
            challenge.user_id,
            ip_address,
            [kind for kind, _ in events],
            [detail for _, detail in events],
            *session_values,
        ],
    )


async def narrow_pending(
    user_id: UUID, usable: Collection[str], now: datetime
) -> dict[UUID, set[str]]:
    """The user's open challenges stop offering what the account no longer has; returns what
    each changed one dropped. A challenge lists its methods when it opens, and a method removed
    meanwhile (a lost phone, a removed device) must not complete it. The caller holds the
    user's row lock, which every code check takes first."""
    dropped: dict[UUID, set[str]] = {}
    pending = LoginChallenge.filter(
        user_id=user_id, status=ChallengeStatus.PENDING, expires_at__gt=now
    )
    for challenge in await pending:
        kept = [method for method in challenge.methods if method in usable]
        if kept != challenge.methods:
            if kept:
                await LoginChallenge.filter(id=challenge.id).update(methods=kept)
            else:
                # Nothing can complete it now (2FA went off with the last method): it ends at
                # once, and the waiting page hears EXPIRED instead of waiting out its life.
                await LoginChallenge.filter(id=challenge.id).update(
                    methods=kept, status=ChallengeStatus.EXPIRED
                )
            dropped[challenge.id] = set(challenge.methods) - set(kept)
    return dropped
