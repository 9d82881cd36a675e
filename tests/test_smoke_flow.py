"""The whole first-half flow through the GraphQL API: sign up, TOTP, 2FA on, login with a
challenge, complete it with TOTP and with a backup code."""

from __future__ import annotations

import httpx
import pyotp

from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    SETTINGS,
    VERIFY,
    data,
    sign_up,
)


async def test_l2_l5_login_with_totp_after_enabling_two_factor(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    assert enrollment["qrSvg"].lstrip().startswith("<svg")
    totp = pyotp.TOTP(enrollment["secret"])
    await data(client, CONFIRM_TOTP, {"c": totp.now()}, token=token)
    enabled = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]
    assert enabled["settings"]["twoFactorEnabled"] is True
    assert enabled["backupCode"]["sequence"] == 1

    login = (await data(client, LOGIN, {"u": username.upper(), "p": PASSWORD, "k": "WEB"}))["login"]
    assert login["__typename"] == "LoginChallenge"
    assert login["methods"] == ["TOTP", "BACKUP_CODE"]
    backup = enabled["backupCode"]["code"]
    session = (
        await data(
            client,
            VERIFY,
            {"id": login["id"], "t": login["token"], "m": "BACKUP_CODE", "c": backup},
        )
    )["verifyLoginChallenge"]
    viewer = (await data(client, SETTINGS, token=session["token"]))["viewer"]
    assert viewer["username"] == username
    assert viewer["securitySettings"]["backupCodesActive"] == 0
