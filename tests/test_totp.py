"""The authenticator app (T1-T3) and removing it when it is the last primary method."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

import httpx
import pyotp
import pytest
from pydantic import SecretStr
from tortoise import connections

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session as SessionRow
from gateway.accounts.service import Client
from gateway.app import create_app
from gateway.container import Services
from gateway.core.errors import DomainError
from gateway.factors.backup_codes.models import BackupCode, BackupCodeStatus
from gateway.factors.base import TwoFactorMethod
from gateway.factors.totp.models import TotpCredential
from gateway.login.service import ChallengeView
from gateway.settings import Settings, new_key_text
from tests.conftest import MovableClock
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    NEW_BACKUP_CODE,
    PASSWORD,
    SETTINGS,
    VERIFY,
    GraphQLError,
    data,
    sign_up,
)

WEB = Client(kind=ClientKind.WEB, name=None, ip_address=None)
REMOVE_TOTP = """
mutation { removeTotp { twoFactorDisabled settings { twoFactorEnabled methods totpEnabled
  backupCodesActive } } }"""
ACCEPTED = "ACCEPTED"


@pytest.fixture
async def clocked(
    settings: Settings, make_services: Callable[..., Services], clock: MovableClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The app over services whose clock the test moves."""
    app = create_app(settings, make_services(clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def wrong_code(totp: pyotp.TOTP, moment: datetime) -> str:
    """Six digits that are no code of the five steps around `moment`."""
    near = {totp.at(moment + timedelta(seconds=30 * k)) for k in range(-2, 3)}
    return next(c for c in (f"{d}" * 6 for d in range(10)) if c not in near)


def fullwidth(code: str) -> str:
    return "".join(chr(0xFF10 + int(d)) for d in code)


def arabic_indic(code: str) -> str:
    return "".join(chr(0x0660 + int(d)) for d in code)


async def domain_account(services: Services, username: str) -> str:
    async with services.uow():
        user = await services.accounts.sign_up(username, PASSWORD)
        issued = await services.accounts.issue_session(user.id, WEB, password_proved=True)
    return issued.token


async def load_session(services: Services, token: str) -> SessionRow:
    session = await services.accounts.session_for_token(token)
    assert session is not None
    return session


async def domain_totp_user(services: Services, clock: MovableClock, username: str) -> pyotp.TOTP:
    """A user with TOTP confirmed at the clock's current step and 2FA on."""
    return (await domain_totp_user_with_backup(services, clock, username))[0]


async def domain_totp_user_with_backup(
    services: Services, clock: MovableClock, username: str
) -> tuple[pyotp.TOTP, str]:
    """As `domain_totp_user`, also returning the first backup code."""
    session = await load_session(services, await domain_account(services, username))
    enrollment = await services.security.begin_totp(session)
    totp = pyotp.TOTP(enrollment.secret)
    await services.security.confirm_totp(session, totp.at(clock.now))
    async with services.uow() as work:
        _, backup = await services.security.enable(session, work)
    return totp, backup.code


async def open_challenge(services: Services, username: str) -> ChallengeView:
    async with services.uow() as work:
        outcome = await services.login.login(username, PASSWORD, WEB, work)
    challenge = outcome.unwrap()
    assert isinstance(challenge, ChallengeView)
    assert TwoFactorMethod.TOTP in challenge.methods
    return challenge


async def try_code(
    services: Services,
    challenge: ChallengeView,
    code: str,
    method: TwoFactorMethod = TwoFactorMethod.TOTP,
) -> str:
    """ACCEPTED when a session was issued, else the error's code (or exception type)."""
    try:
        async with services.uow() as work:
            outcome = await services.login.verify(
                str(challenge.id), challenge.token, method, code, None, work
            )
        issued = outcome.unwrap()
    except DomainError as error:
        return error.code
    except Exception as error:  # a failure to decrypt is still a refusal
        return type(error).__name__
    assert issued.token
    return ACCEPTED


async def try_login(services: Services, username: str, code: str) -> str:
    return await try_code(services, await open_challenge(services, username), code)


# --- T1 -----------------------------------------------------------------------------------


async def test_t1_enrollment_returns_secret_otpauth_uri_and_svg(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    secret = enrollment["secret"]
    assert len(secret) == 32
    assert len(base64.b32decode(secret)) == 20
    uri = urlsplit(enrollment["otpauthUri"])
    assert uri.scheme == "otpauth"
    assert uri.netloc == "totp"
    assert unquote(uri.path) == f"/Kanmon:{username}"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Kanmon"]
    for name, default in (("digits", "6"), ("period", "30"), ("algorithm", "SHA1")):
        assert query.get(name, [default]) == [default]
    svg = enrollment["qrSvg"].strip()
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    again = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    assert again["secret"] != secret


async def test_t1_totp_stays_off_until_a_valid_code_confirms_it(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    secret = (await data(clocked, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    settings = (await data(clocked, SETTINGS, token=token))["viewer"]["securitySettings"]
    assert settings["totpEnabled"] is False
    assert settings["methods"] == []
    with pytest.raises(GraphQLError) as refused:
        await data(clocked, ENABLE_2FA, token=token)
    assert refused.value.code == "METHOD_NOT_AVAILABLE"
    confirmed = await data(clocked, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).at(clock.now)}, token)
    assert confirmed == {"confirmTotpEnrollment": {"totpEnabled": True}}
    settings = (await data(clocked, SETTINGS, token=token))["viewer"]["securitySettings"]
    assert settings["totpEnabled"] is True
    assert settings["methods"] == ["TOTP"]


async def test_t1_wrong_confirmation_code_is_invalid_code(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    secret = (await data(clocked, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    for code in (wrong_code(totp, clock.now), totp.at(clock.now - timedelta(seconds=60))):
        with pytest.raises(GraphQLError) as refused:
            await data(clocked, CONFIRM_TOTP, {"c": code}, token=token)
        assert refused.value.code == "INVALID_CODE"
    settings = (await data(clocked, SETTINGS, token=token))["viewer"]["securitySettings"]
    assert settings["totpEnabled"] is False
    # A code from another enrollment's secret does not confirm this one either.
    other = pyotp.TOTP(pyotp.random_base32()).at(clock.now)
    if other not in {totp.at(clock.now + timedelta(seconds=30 * k)) for k in (-1, 0, 1)}:
        with pytest.raises(GraphQLError):
            await data(clocked, CONFIRM_TOTP, {"c": other}, token=token)
    assert (await data(clocked, CONFIRM_TOTP, {"c": totp.at(clock.now)}, token=token)) == {
        "confirmTotpEnrollment": {"totpEnabled": True}
    }


# --- T2 -----------------------------------------------------------------------------------


async def test_t2_codes_one_step_either_side_are_accepted(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    totp = await domain_totp_user(services, clock, username)
    clock.advance(300)
    assert await try_login(services, username, totp.at(clock.now - timedelta(seconds=30))) == (
        ACCEPTED
    )
    clock.advance(300)
    assert await try_login(services, username, totp.at(clock.now)) == ACCEPTED
    clock.advance(300)
    assert await try_login(services, username, totp.at(clock.now + timedelta(seconds=30))) == (
        ACCEPTED
    )


async def test_t2_codes_two_steps_off_are_refused(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    totp = await domain_totp_user(services, clock, username)
    clock.advance(300)
    challenge = await open_challenge(services, username)
    assert await try_code(services, challenge, totp.at(clock.now - timedelta(seconds=60))) == (
        "INVALID_CODE"
    )
    assert await try_code(services, challenge, totp.at(clock.now + timedelta(seconds=60))) == (
        "INVALID_CODE"
    )
    assert await try_code(services, challenge, totp.at(clock.now)) == ACCEPTED


async def test_t2_replayed_code_is_refused_even_in_a_new_challenge(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    totp = await domain_totp_user(services, clock, username)
    clock.advance(300)
    code = totp.at(clock.now)
    assert await try_login(services, username, code) == ACCEPTED
    assert await try_login(services, username, code) == "INVALID_CODE"
    clock.advance(10)  # the used step is now current or one behind: still refused
    assert await try_login(services, username, code) == "INVALID_CODE"
    clock.advance(60)
    assert await try_login(services, username, totp.at(clock.now)) == ACCEPTED


async def test_t2_confirmation_code_cannot_be_replayed_to_log_in(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    totp = await domain_totp_user(services, clock, username)
    assert await try_login(services, username, totp.at(clock.now)) == "INVALID_CODE"


async def test_t2_older_step_after_a_newer_one_is_refused(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    totp = await domain_totp_user(services, clock, username)
    clock.advance(300)
    assert await try_login(services, username, totp.at(clock.now + timedelta(seconds=30))) == (
        ACCEPTED
    )
    assert await try_login(services, username, totp.at(clock.now)) == "INVALID_CODE"
    assert await try_login(services, username, totp.at(clock.now - timedelta(seconds=30))) == (
        "INVALID_CODE"
    )


async def test_t2_totp_login_over_graphql(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    secret = (await data(clocked, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    await data(clocked, CONFIRM_TOTP, {"c": totp.at(clock.now)}, token=token)
    await data(clocked, ENABLE_2FA, token=token)
    clock.advance(90)
    login = (await data(clocked, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    variables = {"id": login["id"], "t": login["token"], "m": "TOTP", "c": totp.at(clock.now)}
    session = (await data(clocked, VERIFY, variables))["verifyLoginChallenge"]
    assert session["clientKind"] == "WEB"
    replay = (await data(clocked, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    with pytest.raises(GraphQLError) as refused:
        await data(clocked, VERIFY, {**variables, "id": replay["id"], "t": replay["token"]})
    assert refused.value.code == "INVALID_CODE"


# --- T3 -----------------------------------------------------------------------------------


async def test_t3_database_holds_no_plaintext_secret(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    pending = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    viewer_id = (await data(client, "{ viewer { id } }", token=token))["viewer"]["id"]
    row = await TotpCredential.get(user_id=UUID(viewer_id))
    assert row.pending_secret_encrypted is not None
    assert row.secret_encrypted is None
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(pending).now()}, token=token)
    row = await TotpCredential.get(user_id=UUID(viewer_id))
    assert row.secret_encrypted is not None
    raw = await connections.get("default").execute_query_dict("SELECT * FROM totp_credentials")
    dumped = json.dumps(raw, default=str)
    assert row.secret_encrypted in dumped
    raw_bytes = base64.b32decode(pending)
    for form in (pending, pending.lower(), raw_bytes.hex(), base64.b64encode(raw_bytes).decode()):
        assert form not in dumped
        assert form.lower() not in dumped.lower()


async def test_t3_rotated_key_verifies_with_the_old_key_configured(
    make_services: Callable[..., Services],
    clock: MovableClock,
    settings: Settings,
    username: str,
) -> None:
    assert settings.secret_key is not None
    old = settings.secret_key.get_secret_value()
    new = new_key_text()
    before = make_services(clock=clock)
    totp, backup = await domain_totp_user_with_backup(before, clock, username)
    rotated = make_services(
        clock=clock, secret_key=SecretStr(new), old_secret_keys=SecretStr(f" {old} ")
    )
    clock.advance(300)
    assert await try_login(rotated, username, totp.at(clock.now)) == ACCEPTED
    challenge = await open_challenge(rotated, username)
    assert await try_code(rotated, challenge, backup, TwoFactorMethod.BACKUP_CODE) == ACCEPTED
    clock.advance(300)
    assert await try_login(rotated, username, totp.at(clock.now)) == ACCEPTED


async def test_t3_only_the_new_key_cannot_verify_secrets_sealed_with_the_old_key(
    make_services: Callable[..., Services],
    clock: MovableClock,
    username: str,
) -> None:
    before = make_services(clock=clock)
    totp = await domain_totp_user(before, clock, username)
    new_only = make_services(clock=clock, secret_key=SecretStr(new_key_text()))
    clock.advance(300)
    assert await try_login(new_only, username, totp.at(clock.now)) != ACCEPTED
    # The secret itself is intact: the right key still verifies the very same code.
    assert await try_login(before, username, totp.at(clock.now)) == ACCEPTED


async def test_t3_rotation_completes_so_the_old_key_can_be_retired(
    make_services: Callable[..., Services],
    clock: MovableClock,
    settings: Settings,
    username: str,
) -> None:
    assert settings.secret_key is not None
    old = settings.secret_key.get_secret_value()
    new = new_key_text()
    before = make_services(clock=clock)
    totp = await domain_totp_user(before, clock, username)
    rotated = make_services(clock=clock, secret_key=SecretStr(new), old_secret_keys=SecretStr(old))
    clock.advance(300)
    assert await try_login(rotated, username, totp.at(clock.now)) == ACCEPTED
    retired = make_services(clock=clock, secret_key=SecretStr(new))
    clock.advance(300)
    assert await try_login(retired, username, totp.at(clock.now)) == ACCEPTED


async def test_t3_unicode_digits_are_refused(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    secret = (await data(clocked, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    code = totp.at(clock.now)
    for lookalike in (fullwidth(code), arabic_indic(code), fullwidth("123456")):
        with pytest.raises(GraphQLError) as refused:
            await data(clocked, CONFIRM_TOTP, {"c": lookalike}, token=token)
        assert refused.value.code == "INVALID_CODE"
    settings = (await data(clocked, SETTINGS, token=token))["viewer"]["securitySettings"]
    assert settings["totpEnabled"] is False
    await data(clocked, CONFIRM_TOTP, {"c": code}, token=token)
    await data(clocked, ENABLE_2FA, token=token)

    clock.advance(300)
    code = totp.at(clock.now)
    login = (await data(clocked, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    variables: dict[str, Any] = {"id": login["id"], "t": login["token"], "m": "TOTP"}
    for lookalike in (fullwidth(code), arabic_indic(code)):
        with pytest.raises(GraphQLError) as refused:
            await data(clocked, VERIFY, {**variables, "c": lookalike})
        assert refused.value.code == "INVALID_CODE"
    session = (await data(clocked, VERIFY, {**variables, "c": code}))["verifyLoginChallenge"]
    assert session["token"]


# --- removing TOTP ------------------------------------------------------------------------


async def test_f1_removing_totp_as_last_primary_method_turns_two_factor_off(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    secret = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=token)
    first = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]["backupCode"]
    await data(client, NEW_BACKUP_CODE, token=token)
    change = (await data(client, REMOVE_TOTP, token=token))["removeTotp"]
    assert change == {
        "twoFactorDisabled": True,
        "settings": {
            "twoFactorEnabled": False,
            "methods": [],
            "totpEnabled": False,
            "backupCodesActive": 0,
        },
    }
    viewer_id = (await data(client, "{ viewer { id } }", token=token))["viewer"]["id"]
    statuses = {row.status for row in await BackupCode.filter(user_id=UUID(viewer_id))}
    assert statuses == {BackupCodeStatus.INVALIDATED}
    login = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    assert login["__typename"] == "Session"
    assert first["code"]
    with pytest.raises(GraphQLError) as again:
        await data(client, REMOVE_TOTP, token=token)
    assert again.value.code == "METHOD_NOT_AVAILABLE"


# --- replacing TOTP (A3) ---------------------------------------------------------------------

REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"
EVENTS = "{ viewer { securityEvents(first: 5) { edges { node { kind detail } } } } }"


async def test_a3_t1_replacing_a_confirmed_authenticator_needs_a_recent_password(
    settings: Settings,
    make_services: Callable[..., Services],
    clock: MovableClock,
    username: str,
) -> None:
    """A new secret confirmed removes the old one: a stale or stolen session must not move
    the codes to an authenticator of its own. The window is the configured one (two
    minutes here)."""
    app = create_app(settings, make_services(clock=clock, reauth_window_seconds=120))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        token = await sign_up(http, username)
        first = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
        await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(first).at(clock.now)}, token=token)
        clock.advance(121)

        with pytest.raises(GraphQLError) as stale:
            await data(http, BEGIN_TOTP, token=token)
        assert stale.value.code == "REAUTHENTICATION_REQUIRED"

        await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token)
        second = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
        clock.advance(121)
        with pytest.raises(GraphQLError) as late:
            await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(second).at(clock.now)}, token=token)
        assert late.value.code == "REAUTHENTICATION_REQUIRED"
        credential = await TotpCredential.get(
            user_id=UUID((await data(http, SETTINGS, token=token))["viewer"]["id"])
        )
        assert credential.pending_secret_encrypted is not None

        await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token)
        await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(second).at(clock.now)}, token=token)
        events = (await data(http, EVENTS, token=token))["viewer"]["securityEvents"]["edges"]
        assert [(e["node"]["kind"], e["node"]["detail"]) for e in events][:3] == [
            ("totp.enabled", None),
            ("totp.removed", "replaced"),
            ("totp.enabled", None),
        ]


async def test_a3_t1_a_first_authenticator_needs_no_recent_password(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    clock.advance(3600)
    secret = (await data(clocked, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    confirmed = await data(
        clocked, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).at(clock.now)}, token=token
    )
    assert confirmed["confirmTotpEnrollment"]["totpEnabled"] is True
