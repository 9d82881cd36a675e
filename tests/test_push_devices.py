"""Devices (P1, P7, P8, P9, H2, H4, H5, F2, A3): enrollment from app sessions only, the login-code
secret shown once and sealed at rest, token rotation, the end of an enrollment (logout or
removal) and the last-method rule, and APP_CODE login codes."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import pyotp
import pytest
from tortoise import connections

from gateway.container import Services
from gateway.factors.push.models import Device, LoginRequest, LoginRequestStatus
from gateway.login.models import ChallengeStatus, LoginChallenge
from tests.conftest import MovableClock
from tests.graphql_client import PASSWORD, data, gql
from tests.push_helpers import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    LOGIN,
    LOGOUT,
    OK,
    REAUTHENTICATE,
    REMOVE_DEVICE,
    UPDATE_PUSH_TOKEN,
    DeviceKey,
    api,
    app_session,
    challenge_view,
    code_of,
    enable_two_factor,
    enroll,
    enroll_body,
    event_kinds,
    login,
    push_account,
    settings_of,
    sign_up_as,
    unique_push_token,
    unique_username,
    user_id_of,
    verify,
)

BASE32_SECRET = re.compile(r"^[A-Z2-7]{32}$")


@dataclass
class Clocked:
    clock: MovableClock
    services: Services
    http: httpx.AsyncClient


@pytest.fixture
async def clocked(
    make_services: Callable[..., Services], clock: MovableClock
) -> AsyncIterator[Clocked]:
    services = make_services(clock=clock)
    async with api(services) as http:
        yield Clocked(clock, services, http)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# P1 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["WEB", "MOBILE_WEB", "THIRD_PARTY"])
async def test_p1_enroll_device_from_a_non_app_session_is_forbidden(
    client: httpx.AsyncClient, kind: str
) -> None:
    token = await sign_up_as(client, unique_username(), kind)
    body = await enroll_body(client, token, DeviceKey.new().public_b64)
    assert code_of(body) == "FORBIDDEN"
    assert await Device.filter(user_id=await user_id_of(client, token)).count() == 0
    assert (await settings_of(client, token))["devices"] == []


@pytest.mark.parametrize("platform", ["IOS", "ANDROID"])
async def test_p1_enroll_device_from_an_app_session_returns_device_and_login_code_secret(
    client: httpx.AsyncClient, platform: str
) -> None:
    token = await sign_up_as(client, unique_username(), platform)
    app = await enroll(client, token, name="Pixel 9", platform=platform)
    device = app.enrollment["device"]
    assert device["name"] == "Pixel 9"
    assert device["platform"] == platform
    assert device["pushEnabled"] is True
    assert UUID(device["id"])
    assert BASE32_SECRET.match(app.login_code_secret), app.login_code_secret
    row = await Device.get(id=UUID(device["id"]))
    assert row.user_id == await user_id_of(client, token)
    assert row.public_key == app.key.public_b64
    assert row.push_token == app.push_token
    listed = (await settings_of(client, token))["devices"]
    assert [d["id"] for d in listed] == [device["id"]]


@pytest.mark.parametrize(
    "public_key",
    [
        "not base64 at all!",
        b64(bytes(31)),
        b64(bytes(33)),
        b64(bytes(64)),
        "A" * 1_000,
        "",
    ],
    ids=["not-base64", "31-bytes", "33-bytes", "64-bytes", "1000-chars", "empty"],
)
async def test_p1_bad_public_key_is_bad_user_input_and_stores_nothing(
    client: httpx.AsyncClient, public_key: str
) -> None:
    token = await sign_up_as(client, unique_username(), "IOS")
    body = await enroll_body(client, token, public_key)
    assert code_of(body) == "BAD_USER_INPUT"
    assert await Device.filter(user_id=await user_id_of(client, token)).count() == 0


async def test_p1_login_code_secret_is_not_stored_in_plain_text(
    client: httpx.AsyncClient,
) -> None:
    token = await sign_up_as(client, unique_username(), "ANDROID")
    app = await enroll(client, token, platform="ANDROID")
    secret = app.login_code_secret
    raw = base64.b32decode(secret)
    forms = [
        secret,
        secret.lower(),
        raw.hex(),
        b64(raw),
        base64.urlsafe_b64encode(raw).decode(),
    ]
    connection = connections.get("default")
    rows = await connection.execute_query_dict("SELECT * FROM devices")
    dump = "\n".join(str(value) for row in rows for value in row.values())
    assert app.device_id.replace("-", "") in dump.replace("-", "")  # the row is in the dump
    for form in forms:
        assert form not in dump


# P9 ------------------------------------------------------------------------------------------


async def test_p9_update_push_token_for_own_device_replaces_it_and_reenables_push(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    app = account.app
    # FCM reported the old token dead (as the fan-out does on UNREGISTERED).
    await Device.filter(id=UUID(app.device_id)).update(
        push_enabled=False, push_disabled_reason="unregistered"
    )
    assert (await settings_of(client, app.token))["devices"][0]["pushEnabled"] is False

    new_token = unique_push_token("rotated")
    body = await gql(client, UPDATE_PUSH_TOKEN, {"d": app.device_id, "t": new_token}, app.token)
    assert code_of(body) == OK, body
    assert body["data"]["updatePushToken"]["pushEnabled"] is True
    row = await Device.get(id=UUID(app.device_id))
    assert (row.push_token, row.push_enabled, row.push_disabled_reason) == (new_token, True, None)
    assert (await settings_of(client, app.token))["devices"][0]["pushEnabled"] is True
    # Push is offered again at the next login.
    assert (await login(client, account.username))["methods"][0] == "PUSH"
    # F3: the replacement is a security event, naming the device and not the token.
    assert "device.push_token_replaced" in await event_kinds(account.user_id)


async def test_p9_a3_only_the_devices_own_app_session_replaces_its_push_token(
    client: httpx.AsyncClient,
) -> None:
    """A web session, or the app session of the user's other phone, could otherwise send the
    device's pushes to another token, or switch them off with a dead one, without the password
    that removing the device needs."""
    account = await push_account(client, devices=2, two_factor=False)
    first, second = account.apps
    web = await login(client, account.username, "WEB")
    assert web["__typename"] == "Session", web
    for token in (web["token"], second.token):
        variables = {"d": first.device_id, "t": unique_push_token("redirected")}
        body = await gql(client, UPDATE_PUSH_TOKEN, variables, token=token)
        assert code_of(body) == "FORBIDDEN", body
    row = await Device.get(id=UUID(first.device_id))
    assert (row.push_token, row.push_enabled) == (first.push_token, True)
    assert "device.push_token_replaced" not in await event_kinds(account.user_id)


async def test_p9_update_push_token_for_another_users_device_is_not_found(
    client: httpx.AsyncClient,
) -> None:
    owner = await push_account(client)
    other = await push_account(client)
    variables = {"d": owner.app.device_id, "t": unique_push_token("stolen")}
    body = await gql(client, UPDATE_PUSH_TOKEN, variables, token=other.app.token)
    assert code_of(body) == "NOT_FOUND"
    row = await Device.get(id=UUID(owner.app.device_id))
    assert row.push_token == owner.app.push_token


# P7, H5, A3 ----------------------------------------------------------------------------------


async def test_p7_h5_logout_of_the_device_session_removes_it_and_turns_2fa_off_when_last(
    client: httpx.AsyncClient,
) -> None:
    username = unique_username()
    web = await sign_up_as(client, username, "WEB")
    ios = await app_session(client, username)
    app = await enroll(client, ios)
    await enable_two_factor(client, web)
    user_id = await user_id_of(client, web)

    assert (await data(client, LOGOUT, token=ios))["logout"] is True
    assert await Device.filter(id=UUID(app.device_id)).count() == 0
    after = await settings_of(client, web)
    assert after["devices"] == []
    assert after["twoFactorEnabled"] is False
    kinds = await event_kinds(user_id)
    assert "device.removed" in kinds
    assert "two_factor.disabled" in kinds
    assert kinds.index("two_factor.disabled") > kinds.index("device.removed")
    # With 2FA off the password alone logs in again (L1).
    assert (await login(client, username))["__typename"] == "Session"


async def test_p7_h5_logout_of_the_device_session_keeps_2fa_when_totp_is_enrolled(
    client: httpx.AsyncClient,
) -> None:
    username = unique_username()
    web = await sign_up_as(client, username, "WEB")
    secret = (await data(client, BEGIN_TOTP, token=web))["beginTotpEnrollment"]["secret"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=web)
    ios = await app_session(client, username)
    app = await enroll(client, ios)
    await enable_two_factor(client, web)
    user_id = await user_id_of(client, web)

    assert (await data(client, LOGOUT, token=ios))["logout"] is True
    assert await Device.filter(id=UUID(app.device_id)).count() == 0
    after = await settings_of(client, web)
    assert after["devices"] == []
    assert after["twoFactorEnabled"] is True
    assert "TOTP" in after["methods"]
    assert "PUSH" not in after["methods"]
    kinds = await event_kinds(user_id)
    assert "device.removed" in kinds
    assert "two_factor.disabled" not in kinds
    challenge = await login(client, username)
    assert challenge["__typename"] == "LoginChallenge"
    assert "PUSH" not in challenge["methods"]
    assert "APP_CODE" not in challenge["methods"]


async def test_p7_a3_remove_device_needs_recent_auth_and_turns_2fa_off_when_last(
    clocked: Clocked,
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    app = account.app
    window = clocked.services.settings.reauth_window_seconds
    clock.advance(window + 1)

    body = await gql(http, REMOVE_DEVICE, {"d": app.device_id}, token=app.token)
    assert code_of(body) == "REAUTHENTICATION_REQUIRED"
    assert await Device.filter(id=UUID(app.device_id)).count() == 1
    assert (await settings_of(http, app.token))["twoFactorEnabled"] is True

    assert (await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=app.token))["reauthenticate"]
    body = await gql(http, REMOVE_DEVICE, {"d": app.device_id}, token=app.token)
    assert code_of(body) == OK, body
    change = body["data"]["removeDevice"]
    assert change["twoFactorDisabled"] is True
    assert change["settings"]["twoFactorEnabled"] is False
    assert change["settings"]["devices"] == []
    assert await Device.filter(id=UUID(app.device_id)).count() == 0
    kinds = await event_kinds(account.user_id)
    assert "device.removed" in kinds
    assert "two_factor.disabled" in kinds


async def test_p7_l5_a_removed_device_completes_no_challenge_opened_before(
    clocked: Clocked,
) -> None:
    """The phone was lost with the app on it: its login codes and its pending request must stop
    counting for the login already under way the moment the device is removed."""
    http, clock = clocked.http, clocked.clock
    username = unique_username()
    web = await sign_up_as(http, username, "WEB")
    secret = (await data(http, BEGIN_TOTP, token=web))["beginTotpEnrollment"]["secret"]
    await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).at(clock.now)}, token=web)
    app = await enroll(http, await app_session(http, username))
    await enable_two_factor(http, web)
    challenge = await login(http, username)
    assert challenge["methods"] == ["PUSH", "TOTP", "APP_CODE", "BACKUP_CODE"]

    await data(http, REMOVE_DEVICE, {"d": app.device_id}, token=web)

    view = await challenge_view(http, challenge)
    assert view["status"] == "PENDING"
    assert view["methods"] == ["TOTP", "BACKUP_CODE"]
    request = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    assert request.status is LoginRequestStatus.EXPIRED
    code = pyotp.TOTP(app.login_code_secret).at(clock.now)
    assert code_of(await verify(http, challenge, "APP_CODE", code)) == "METHOD_NOT_AVAILABLE"
    clock.advance(30)
    body = await verify(http, challenge, "TOTP", pyotp.TOTP(secret).at(clock.now))
    assert code_of(body) == OK, body


async def test_p7_h5_a_login_waiting_on_the_last_device_is_left_with_nothing_to_complete_it(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    assert challenge["methods"] == ["PUSH", "APP_CODE", "BACKUP_CODE"]

    assert (await data(client, LOGOUT, token=account.app.token))["logout"] is True

    # L5: nothing can complete it now, so it ends at once rather than at its expiry.
    view = await challenge_view(client, challenge)
    assert view["status"] == "EXPIRED"
    assert view["methods"] == []
    request = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    assert request.status is LoginRequestStatus.EXPIRED
    assert account.backup_code is not None
    refused = await verify(client, challenge, "BACKUP_CODE", account.backup_code)
    assert code_of(refused) == "CHALLENGE_EXPIRED"
    # 2FA is off (H5): the password alone logs in again.
    assert (await login(client, account.username))["__typename"] == "Session"


async def test_p7_remove_device_of_another_user_is_not_found(client: httpx.AsyncClient) -> None:
    owner = await push_account(client)
    other = await push_account(client)
    body = await gql(client, REMOVE_DEVICE, {"d": owner.app.device_id}, token=other.app.token)
    assert code_of(body) == "NOT_FOUND"
    assert await Device.filter(id=UUID(owner.app.device_id)).count() == 1


async def test_p7_removing_one_of_two_devices_keeps_2fa_on(client: httpx.AsyncClient) -> None:
    account = await push_account(client, devices=2)
    body = await gql(
        client, REMOVE_DEVICE, {"d": account.apps[1].device_id}, token=account.app.token
    )
    assert code_of(body) == OK, body
    assert body["data"]["removeDevice"]["twoFactorDisabled"] is False
    after = await settings_of(client, account.app.token)
    assert after["twoFactorEnabled"] is True
    assert [d["id"] for d in after["devices"]] == [account.app.device_id]


# F2 ------------------------------------------------------------------------------------------


async def test_f2_settings_show_devices_with_name_platform_push_and_last_seen(
    clocked: Clocked,
) -> None:
    http, clock = clocked.http, clocked.clock
    username = unique_username()
    ios = await sign_up_as(http, username, "IOS")
    enrolled_at = clock.now
    iphone = await enroll(http, ios, name="Ada's iPhone", platform="IOS")
    clock.advance(5)
    android = await app_session(http, username, "ANDROID")
    pixel = await enroll(http, android, name="Pixel", platform="ANDROID")
    await Device.filter(id=UUID(pixel.device_id)).update(push_enabled=False)

    shown = (await settings_of(http, ios))["devices"]
    assert [(d["id"], d["name"], d["platform"], d["pushEnabled"]) for d in shown] == [
        (iphone.device_id, "Ada's iPhone", "IOS", True),
        (pixel.device_id, "Pixel", "ANDROID", False),
    ]
    assert datetime.fromisoformat(shown[0]["lastSeenAt"]) == enrolled_at
    assert datetime.fromisoformat(shown[1]["lastSeenAt"]) == clock.now
    assert all(d["createdAt"] for d in shown)
    settings = await settings_of(http, ios)
    assert "PUSH" in settings["methods"]
    assert "APP_CODE" in settings["methods"]


# P8, H4 --------------------------------------------------------------------------------------


async def test_p8_h4_app_code_completes_a_challenge_and_is_not_accepted_twice(
    clocked: Clocked,
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    totp = pyotp.TOTP(account.app.login_code_secret)
    challenge = await login(http, account.username)
    assert "APP_CODE" in challenge["methods"]

    code = totp.at(clock.now)
    body = await verify(http, challenge, "APP_CODE", code)
    assert code_of(body) == OK, body
    assert body["data"]["verifyLoginChallenge"]["token"]
    row = await LoginChallenge.get(id=UUID(challenge["id"]))
    assert row.status is ChallengeStatus.COMPLETED

    # T2: the same step is never accepted again, not even on a new challenge.
    again = await login(http, account.username)
    assert code_of(await verify(http, again, "APP_CODE", code)) == "INVALID_CODE"
    assert (await LoginChallenge.get(id=UUID(again["id"]))).status is ChallengeStatus.PENDING
    # The next step's code is.
    clock.advance(30)
    body = await verify(http, again, "APP_CODE", totp.at(clock.now))
    assert code_of(body) == OK, body


async def test_p8_h4_a_wrong_app_code_is_refused(clocked: Clocked) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    totp = pyotp.TOTP(account.app.login_code_secret)
    near = {totp.at(clock.now.timestamp() + 30 * d) for d in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in near)
    challenge = await login(http, account.username)
    assert code_of(await verify(http, challenge, "APP_CODE", wrong)) == "INVALID_CODE"
    assert (await LoginChallenge.get(id=UUID(challenge["id"]))).wrong_attempts == 1


async def test_p8_app_code_offered_only_when_a_device_is_enrolled(
    client: httpx.AsyncClient,
) -> None:
    username = unique_username()
    web = await sign_up_as(client, username, "WEB")
    secret = (await data(client, BEGIN_TOTP, token=web))["beginTotpEnrollment"]["secret"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=web)
    await enable_two_factor(client, web)

    without = await login(client, username)
    assert without["methods"] == ["TOTP", "BACKUP_CODE"]
    body = await verify(client, without, "APP_CODE", "123456")
    assert code_of(body) == "METHOD_NOT_AVAILABLE"

    # A device enrolled from an app session (obtained with a TOTP login) adds APP_CODE.
    app_challenge = await login(client, username, "IOS", None)
    # The confirmation used the current step (T2: not again); the next one is within drift.
    next_step = datetime.now(UTC) + timedelta(seconds=30)
    body = await verify(client, app_challenge, "TOTP", pyotp.TOTP(secret).at(next_step))
    assert code_of(body) == OK, body
    ios = body["data"]["verifyLoginChallenge"]["token"]
    app = await enroll(client, ios)
    with_device = await login(client, username)
    assert with_device["methods"] == ["PUSH", "TOTP", "APP_CODE", "BACKUP_CODE"]
    body = await verify(client, with_device, "APP_CODE", pyotp.TOTP(app.login_code_secret).now())
    assert code_of(body) == OK, body


# H2: a new phone ------------------------------------------------------------------------------

CREATE_TEMPORARY_PASSWORD = "mutation { createTemporaryPassword { password } }"
DISABLE_2FA = "mutation { disableTwoFactor { twoFactorEnabled methods } }"


async def test_h2_new_phone_without_keys_logs_in_with_a_temporary_password_and_enrolls_again(
    client: httpx.AsyncClient,
) -> None:
    """The app's keys did not survive the move: a temporary password from the logged-in web
    session logs the new phone in without a challenge (L6), the new install enrolls its own
    device, and the old one can then be removed from the web without turning 2FA off."""
    username = unique_username()
    web = await sign_up_as(client, username, "WEB")
    old = await enroll(client, await app_session(client, username), name="old phone")
    await enable_two_factor(client, web)
    assert (await login(client, username, "IOS", None))["__typename"] == "LoginChallenge"

    temporary = (await data(client, CREATE_TEMPORARY_PASSWORD, token=web))[
        "createTemporaryPassword"
    ]["password"]
    new_phone = await data(client, LOGIN, {"u": username, "p": temporary, "k": "IOS"})
    assert new_phone["login"]["__typename"] == "Session"
    new = await enroll(client, new_phone["login"]["token"], name="new phone")

    await data(client, REAUTHENTICATE, {"p": PASSWORD}, token=web)
    removed = (await data(client, REMOVE_DEVICE, {"d": old.device_id}, token=web))["removeDevice"]
    assert removed["twoFactorDisabled"] is False
    assert removed["settings"]["twoFactorEnabled"] is True
    assert [device["id"] for device in removed["settings"]["devices"]] == [new.device_id]
    challenge = await login(client, username)
    assert challenge["__typename"] == "LoginChallenge"
    assert "PUSH" in challenge["methods"]
    # One use only (L6): the temporary password no longer logs anyone in.
    again = await gql(client, LOGIN, {"u": username, "p": temporary, "k": "IOS"})
    assert code_of(again) == "INVALID_CREDENTIALS"


@pytest.mark.parametrize("kind", ["IOS", "WEB"])
async def test_h2_two_factor_turns_off_from_the_old_device_or_a_web_session(
    client: httpx.AsyncClient, kind: str
) -> None:
    username = unique_username()
    web = await sign_up_as(client, username, "WEB")
    ios = await app_session(client, username)
    await enroll(client, ios)
    await enable_two_factor(client, web)
    session = ios if kind == "IOS" else web

    await data(client, REAUTHENTICATE, {"p": PASSWORD}, token=session)
    disabled = (await data(client, DISABLE_2FA, token=session))["disableTwoFactor"]
    assert disabled["twoFactorEnabled"] is False
    assert (await login(client, username))["__typename"] == "Session"


async def test_h2_logged_out_with_the_old_device_gone_a_backup_code_logs_in(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    assert account.backup_code is not None

    challenge = await login(client, account.username)
    assert "BACKUP_CODE" in challenge["methods"]
    body = await verify(client, challenge, "BACKUP_CODE", account.backup_code)
    assert code_of(body) == OK
    assert body["data"]["verifyLoginChallenge"]["clientKind"] == "WEB"


async def test_a3_p1_a_new_key_for_the_sessions_device_needs_a_recent_password(
    clocked: Clocked,
) -> None:
    """Enrolling again from the same app session replaces its device and key: a stolen app
    session must not swap in a key of its own, so it asks for the password (A3), and the
    history shows the replacement (F3)."""
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    clock.advance(clocked.services.settings.reauth_window_seconds + 1)

    stale = await enroll_body(http, account.app.token, DeviceKey.new().public_b64)
    assert code_of(stale) == "REAUTHENTICATION_REQUIRED"
    assert await Device.filter(id=UUID(account.app.device_id)).count() == 1

    await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=account.app.token)
    again = await enroll(http, account.app.token, name="reinstalled")
    assert await Device.filter(id=UUID(account.app.device_id)).count() == 0
    settings = await settings_of(http, account.app.token)
    assert [d["id"] for d in settings["devices"]] == [again.device_id]
    kinds = await event_kinds(account.user_id)
    assert kinds[-2:] == ["device.removed", "device.enrolled"]
