"""F4, T3, A2, B3: after a full flow, no secret the API handed out is anywhere in the database,
in any form a user could type it."""

from __future__ import annotations

import base64
import importlib
import inspect
from datetime import datetime, timedelta
from typing import Any

import httpx
import pyotp
from tortoise import connections
from tortoise.models import Model

from gateway.core.db import MODEL_MODULES
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    NEW_BACKUP_CODE,
    PASSWORD,
    VERIFY,
    data,
    sign_up,
)

TEMPORARY_PASSWORD = "mutation { createTemporaryPassword { password expiresAt } }"


def model_tables() -> set[str]:
    tables: set[str] = set()
    for module_name in MODEL_MODULES:
        module = importlib.import_module(module_name)
        for _, member in inspect.getmembers(module, inspect.isclass):
            if issubclass(member, Model) and member is not Model and not member._meta.abstract:
                tables.add(member._meta.db_table)
    return tables


async def catalogue_tables() -> set[str]:
    connection = connections.get("default")
    if connection.capabilities.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()"
    return {str(row["name"]) for row in await connection.execute_query_dict(sql)}


def as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return raw.hex() + " " + raw.decode("latin-1")
    return str(value)


async def dump_database() -> tuple[set[str], str]:
    connection = connections.get("default")
    tables = await catalogue_tables()
    parts: list[str] = []
    for table in sorted(tables):
        for row in await connection.execute_query_dict(f'SELECT * FROM "{table}"'):  # noqa: S608
            parts.extend(f"{column}={as_text(value)}" for column, value in row.items())
    return tables, "\n".join(parts)


def forms_of_totp_secret(secret: str) -> list[str]:
    raw = base64.b32decode(secret)
    return [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    ]


def next_code(totp: pyotp.TOTP) -> str:
    """The next step's code: within the accepted drift and later than any step used so far."""
    return totp.at(datetime.now().astimezone() + timedelta(seconds=30))


async def test_f4_no_secret_returned_by_the_api_is_stored_in_the_database(
    client: httpx.AsyncClient, username: str
) -> None:
    secrets: dict[str, str] = {"password": PASSWORD}

    first_session = await sign_up(client, username)
    secrets["sign-up session"] = first_session

    enrollment = (await data(client, BEGIN_TOTP, token=first_session))["beginTotpEnrollment"]
    totp = pyotp.TOTP(enrollment["secret"])
    for i, form in enumerate(forms_of_totp_secret(enrollment["secret"])):
        secrets[f"totp secret form {i}"] = form
    await data(client, CONFIRM_TOTP, {"c": totp.now()}, token=first_session)

    backup_codes = [
        (await data(client, ENABLE_2FA, token=first_session))["enableTwoFactor"]["backupCode"]
    ]
    for _ in range(2):
        backup_codes.append(
            (await data(client, NEW_BACKUP_CODE, token=first_session))["newBackupCode"]
        )
    assert [code["sequence"] for code in backup_codes] == [1, 2, 3]
    for code in backup_codes:
        shown = code["code"]
        secrets[f"backup code {code['sequence']}"] = shown
        secrets[f"backup code {code['sequence']} compact"] = shown.replace("-", "")

    temporary = (await data(client, TEMPORARY_PASSWORD, token=first_session))[
        "createTemporaryPassword"
    ]["password"]
    secrets["temporary password"] = temporary
    secrets["temporary password compact"] = temporary.replace(" ", "")
    by_temporary = (await data(client, LOGIN, {"u": username, "p": temporary, "k": "THIRD_PARTY"}))[
        "login"
    ]
    assert by_temporary["__typename"] == "Session"
    secrets["temporary password session"] = by_temporary["token"]

    challenge = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    assert challenge["__typename"] == "LoginChallenge"
    secrets["challenge token"] = challenge["token"]
    by_backup = (
        await data(
            client,
            VERIFY,
            {
                "id": challenge["id"],
                "t": challenge["token"],
                "m": "BACKUP_CODE",
                "c": backup_codes[0]["code"],
            },
        )
    )["verifyLoginChallenge"]
    secrets["backup code session"] = by_backup["token"]

    second = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "IOS"}))["login"]
    secrets["second challenge token"] = second["token"]
    by_totp = (
        await data(
            client,
            VERIFY,
            {"id": second["id"], "t": second["token"], "m": "TOTP", "c": next_code(totp)},
        )
    )["verifyLoginChallenge"]
    secrets["totp session"] = by_totp["token"]

    tables, dumped = await dump_database()
    assert model_tables() <= tables
    assert username in dumped  # the dump does reach this user's rows
    folded = dumped.casefold()
    leaked = sorted(name for name, value in secrets.items() if value.casefold() in folded)
    assert leaked == []
