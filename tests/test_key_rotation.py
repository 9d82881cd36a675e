"""T3: a key rotation that can be finished. `kanmon admin rekey` re-seals every sealed secret
under the new key, so the old key can be dropped; a secret no accepted key opens is refused like
a wrong code (never INTERNAL) and counted by rekey, not fatal to it.

Each test seals under keys of its own (A, then B), so rekey's counts of re-sealed rows are
exactly this test's rows; rows of other tests, under keys rekey is not given, only add to its
`unreadable` counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session
from gateway.accounts.service import Client
from gateway.admin.rekey import SEALED, RekeyReport, SealedTally, key_ids, rekey, reseal_row
from gateway.app import create_app
from gateway.container import Services
from gateway.core.crypto import SecretBox
from gateway.core.errors import DomainError
from gateway.factors.base import TwoFactorMethod
from gateway.factors.push.models import Device, Platform
from gateway.factors.sms.models import SmsCode, SmsCodePurpose
from gateway.factors.totp.models import TotpCredential
from gateway.login.service import ChallengeView
from gateway.settings import Settings, decode_key, new_key_text
from tests.conftest import MovableClock
from tests.graphql_client import LOGIN, PASSWORD, VERIFY, gql

KANMON = Path(sys.executable).parent / "kanmon"
WEB = Client(ClientKind.WEB, None, None)
ACCEPTED = "ACCEPTED"
SEALED_KINDS = ("totp_pending_secret", "totp_secret", "device_login_code_secret", "sms_code")


@dataclass(frozen=True)
class Keys:
    a: str
    b: str

    def rotated(self) -> dict[str, SecretStr]:
        """B is current, A is still accepted."""
        return {"secret_key": SecretStr(self.b), "old_secret_keys": SecretStr(self.a)}

    def box(self, *texts: str) -> SecretBox:
        return SecretBox([decode_key(t) for t in texts])


@pytest.fixture
def keys() -> Keys:
    return Keys(new_key_text(), new_key_text())


@dataclass(frozen=True)
class Enrolled:
    """A user made under key A: TOTP on, a re-enrollment pending, an app device, 2FA on."""

    user_id: UUID
    username: str
    web: Session
    totp: pyotp.TOTP
    pending: pyotp.TOTP
    app_code: pyotp.TOTP
    device_id: UUID


async def enrolled(services: Services, clock: MovableClock) -> Enrolled:
    username = f"rot_{secrets.token_hex(6)}"
    async with services.uow():
        user = await services.accounts.sign_up(username, PASSWORD)
        web = await services.accounts.issue_session(user.id, WEB, password_proved=True)
        app = await services.accounts.issue_session(
            user.id, Client(ClientKind.IOS, None, None), password_proved=True
        )
    web_session = await services.accounts.session_for_token(web.token)
    app_session = await services.accounts.session_for_token(app.token)
    assert web_session is not None
    assert app_session is not None
    totp = pyotp.TOTP((await services.security.begin_totp(web_session)).secret)
    await services.security.confirm_totp(web_session, totp.at(clock.now))
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    async with services.uow():
        enrollment = await services.security.enroll_device(
            app_session,
            "rotation phone",
            Platform.IOS,
            "fcm-rotation",
            base64.b64encode(key).decode(),
        )
    async with services.uow() as work:
        await services.security.enable(web_session, work)
    # A re-enrollment started and not confirmed yet: the pending secret beside the active one.
    pending = pyotp.TOTP((await services.security.begin_totp(web_session)).secret)
    return Enrolled(
        user.id,
        username,
        web_session,
        totp,
        pending,
        pyotp.TOTP(enrollment.login_code_secret),
        enrollment.device.id,
    )


async def try_login(services: Services, username: str, method: TwoFactorMethod, code: str) -> str:
    """ACCEPTED when a session was issued, else the error's code (an exception's type name)."""
    async with services.uow() as work:
        challenge = (await services.login.login(username, PASSWORD, WEB, work)).unwrap()
    assert isinstance(challenge, ChallengeView)
    assert method in challenge.methods
    try:
        async with services.uow() as work:
            outcome = await services.login.verify(
                str(challenge.id), challenge.token, method, code, None, work
            )
        assert outcome.unwrap().token
    except DomainError as error:
        return error.code
    except Exception as error:  # what the GraphQL layer would mask as INTERNAL
        return type(error).__name__
    return ACCEPTED


async def try_confirm(services: Services, session: Session, code: str) -> str:
    try:
        await services.security.confirm_totp(session, code)
    except DomainError as error:
        return error.code
    except Exception as error:
        return type(error).__name__
    return ACCEPTED


async def stored(enrolled: Enrolled) -> dict[str, str | None]:
    credential = await TotpCredential.get(user_id=enrolled.user_id)
    device = await Device.get(id=enrolled.device_id)
    return {
        "totp_secret": credential.secret_encrypted,
        "totp_pending_secret": credential.pending_secret_encrypted,
        "device_login_code_secret": device.login_code_secret_sealed,
    }


def resealed(report: RekeyReport) -> dict[str, int]:
    return {kind: tally.resealed for kind, tally in report.sealed.items()}


# --- the whole rotation ------------------------------------------------------------------------


async def test_t3_rekey_then_retiring_the_old_key_keeps_app_code_totp_and_pending_enrollment(
    make_services: Callable[..., Services], clock: MovableClock, keys: Keys
) -> None:
    under_a = make_services(clock=clock, secret_key=SecretStr(keys.a))
    user = await enrolled(under_a, clock)
    rotated = make_services(clock=clock, **keys.rotated())

    report = await rekey(rotated.box, batch=2, clock=clock)

    assert resealed(report) == {
        "totp_pending_secret": 1,
        "totp_secret": 1,
        "device_login_code_secret": 1,
        "sms_code": 0,
    }
    assert all(t.remaining_under_old_keys == 0 for t in report.sealed.values())
    assert all(t.changed_meanwhile == 0 for t in report.sealed.values())
    current = f"v1.{key_ids(rotated.box).current}."
    assert all(value and value.startswith(current) for value in (await stored(user)).values())

    retired = make_services(clock=clock, secret_key=SecretStr(keys.b))
    clock.advance(300)
    app_code = user.app_code.at(clock.now)
    assert await try_login(retired, user.username, TwoFactorMethod.APP_CODE, app_code) == ACCEPTED
    totp_code = user.totp.at(clock.now)
    assert await try_login(retired, user.username, TwoFactorMethod.TOTP, totp_code) == ACCEPTED
    assert await try_confirm(retired, user.web, user.pending.at(clock.now)) == ACCEPTED
    clock.advance(300)
    new_code = user.pending.at(clock.now)
    assert await try_login(retired, user.username, TwoFactorMethod.TOTP, new_code) == ACCEPTED


async def test_t3_rekey_reseals_sms_codes_and_counts_hashes_that_still_need_the_old_key(
    make_services: Callable[..., Services], clock: MovableClock, keys: Keys
) -> None:
    under_a = make_services(clock=clock, secret_key=SecretStr(keys.a))
    user = await enrolled(under_a, clock)
    await under_a.security.create_temporary_password(user.web)
    # An SMS code as the SMS service stores it (sealed copy and keyed hash), without sending.
    sent = f"{secrets.randbelow(10**6):06d}"
    code_id = uuid4()
    code_row = await SmsCode.create(
        id=code_id,
        user_id=user.user_id,
        purpose=SmsCodePurpose.VERIFY_PHONE,
        number="+819012345678",
        code_hash=under_a.box.keyed_hash(sent),
        code_sealed=under_a.box.encrypt(sent, context=f"sms:{code_id}"),
        expires_at=clock.now + timedelta(minutes=10),
    )
    rotated = make_services(clock=clock, **keys.rotated())

    report = await rekey(rotated.box, clock=clock)

    assert report.sealed["sms_code"].resealed == 1
    code_row = await SmsCode.get(id=code_row.id)
    assert code_row.code_sealed is not None
    only_b = keys.box(keys.b)
    assert only_b.decrypt(code_row.code_sealed, context=f"sms:{code_row.id}") == sent
    hashes = report.keyed_hashes
    # One backup code (2FA on), one temporary password, one SMS code: all hashed under A.
    assert hashes["backup_code"].under_old_keys == 1
    assert hashes["backup_code"].old_key_needed_until is None
    assert hashes["temporary_password"].under_old_keys == 1
    assert hashes["temporary_password"].old_key_needed_until is not None
    assert hashes["sms_code"].under_old_keys == 1
    assert hashes["sms_code"].old_key_needed_until == code_row.expires_at
    assert report.old_keys_needed
    assert report.as_json()["old_keys_still_needed"] is True


async def test_t3_rekey_twice_changes_nothing_the_second_time(
    make_services: Callable[..., Services], clock: MovableClock, keys: Keys
) -> None:
    user = await enrolled(make_services(clock=clock, secret_key=SecretStr(keys.a)), clock)
    rotated = make_services(clock=clock, **keys.rotated())
    first = await rekey(rotated.box, clock=clock)
    assert sum(resealed(first).values()) == 3
    after_first = await stored(user)

    second = await rekey(rotated.box, clock=clock)

    assert resealed(second) == dict.fromkeys(SEALED_KINDS, 0)
    assert all(t.changed_meanwhile == 0 for t in second.sealed.values())
    assert {k: t.unreadable for k, t in second.sealed.items()} == {
        k: t.unreadable for k, t in first.sealed.items()
    }
    assert await stored(user) == after_first


async def test_t3_a_row_the_service_rewrites_during_the_run_is_left_as_it_wrote_it(
    make_services: Callable[..., Services], clock: MovableClock, keys: Keys
) -> None:
    user = await enrolled(make_services(clock=clock, secret_key=SecretStr(keys.a)), clock)
    rotated = make_services(clock=clock, **keys.rotated())
    spec = next(s for s in SEALED if s.kind == "totp_pending_secret")
    credential = await TotpCredential.get(user_id=user.user_id)
    read = {
        "id": credential.id,
        "user_id": credential.user_id,
        spec.column: credential.pending_secret_encrypted,
    }
    # Between rekey's read and its write, the user starts over: a new enrollment under B.
    restarted = await rotated.security.begin_totp(user.web)
    written = (await stored(user))["totp_pending_secret"]
    tally = SealedTally()

    await reseal_row(rotated.box, spec, read, tally)

    assert (tally.resealed, tally.changed_meanwhile) == (0, 1)
    assert (await stored(user))["totp_pending_secret"] == written
    retired = make_services(clock=clock, secret_key=SecretStr(keys.b))
    clock.advance(30)
    code = pyotp.TOTP(restarted.secret).at(clock.now)
    assert await try_confirm(retired, user.web, code) == ACCEPTED


# --- secrets no accepted key opens -------------------------------------------------------------


async def test_t3_an_unreadable_secret_is_counted_by_rekey_not_fatal(
    make_services: Callable[..., Services], clock: MovableClock, keys: Keys
) -> None:
    user = await enrolled(make_services(clock=clock, secret_key=SecretStr(keys.a)), clock)
    rotated = make_services(clock=clock, **keys.rotated())
    baseline = await rekey(rotated.box, clock=clock)
    # Under A but for another context (the tag fails), and under a key nobody configured.
    broken_totp = keys.box(keys.a).encrypt(user.totp.secret, context="totp:someone-else")
    await TotpCredential.filter(user_id=user.user_id).update(secret_encrypted=broken_totp)
    stray = keys.box(new_key_text()).encrypt(user.app_code.secret, context="device:x")
    await Device.filter(id=user.device_id).update(login_code_secret_sealed=stray)
    await TotpCredential.filter(user_id=user.user_id).update(pending_secret_encrypted="v1.garbage")

    report = await rekey(rotated.box, clock=clock)

    for kind in ("totp_secret", "device_login_code_secret", "totp_pending_secret"):
        assert report.sealed[kind].unreadable == baseline.sealed[kind].unreadable + 1, kind
        assert report.sealed[kind].resealed == 0, kind
    # Still under A, which rekey could not move: the report says the old key is still needed.
    assert report.sealed["totp_secret"].remaining_under_old_keys == 1
    assert report.old_keys_needed
    assert await stored(user) == {
        "totp_secret": broken_totp,
        "totp_pending_secret": "v1.garbage",
        "device_login_code_secret": stray,
    }
    json.dumps(report.as_json())


async def test_t3_with_the_old_key_dropped_unopenable_secrets_refuse_codes_as_wrong_codes(
    make_services: Callable[..., Services],
    settings: Settings,
    clock: MovableClock,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await enrolled(make_services(clock=clock, secret_key=SecretStr(keys.a)), clock)
    # The old key is dropped without rekey: nothing stored opens any more.
    retired_settings = settings.model_copy(update={"secret_key": SecretStr(keys.b)})
    retired = make_services(clock=clock, secret_key=SecretStr(keys.b))
    clock.advance(300)
    app = create_app(retired_settings, retired)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR):
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            login = await gql(http, LOGIN, {"u": user.username, "p": PASSWORD, "k": "WEB"})
            challenge = login["data"]["login"]
            variables = {"id": challenge["id"], "t": challenge["token"], "m": "APP_CODE"}
            body = await gql(http, VERIFY, {**variables, "c": user.app_code.at(clock.now)})
    assert body["errors"][0]["extensions"]["code"] == "INVALID_CODE", body
    totp_code = user.totp.at(clock.now)
    assert await try_login(retired, user.username, TwoFactorMethod.TOTP, totp_code) == (
        "INVALID_CODE"
    )
    pending = await try_confirm(retired, user.web, user.pending.at(clock.now))
    assert pending == "METHOD_NOT_AVAILABLE"

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    device_errors = [r for r in errors if getattr(r, "device_id", None) == str(user.device_id)]
    assert len(device_errors) == 1
    credential = await TotpCredential.get(user_id=user.user_id)
    assert any(getattr(r, "credential_id", None) == str(credential.id) for r in errors)
    for secret in (user.totp.secret, user.pending.secret, user.app_code.secret):
        assert not any(secret in r.getMessage() or secret in str(r.__dict__) for r in errors)


# --- the command -------------------------------------------------------------------------------


async def kanmon(settings: Settings, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    base["KANMON_DATABASE_URL"] = settings.resolved_database_url()
    process = await asyncio.create_subprocess_exec(
        str(KANMON),
        *args,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_t3_cli_rekey_prints_a_json_report(
    make_services: Callable[..., Services], settings: Settings, clock: MovableClock, keys: Keys
) -> None:
    user = await enrolled(make_services(clock=clock, secret_key=SecretStr(keys.a)), clock)
    env = {"KANMON_SECRET_KEY": keys.b, "KANMON_OLD_SECRET_KEYS": keys.a}

    code, out, err = await kanmon(settings, env, "admin", "rekey", "--batch-size", "50")

    assert code == 0, (out, err)
    report = json.loads(out)
    assert {kind: report["sealed"][kind]["resealed"] for kind in SEALED_KINDS} == {
        "totp_pending_secret": 1,
        "totp_secret": 1,
        "device_login_code_secret": 1,
        "sms_code": 0,
    }
    assert report["keyed_hashes"]["backup_code"]["under_old_keys"] == 1
    assert report["old_keys_still_needed"] is True
    assert keys.a not in out + err
    assert keys.b not in out + err
    current = f"v1.{key_ids(keys.box(keys.b)).current}."
    assert all(value and value.startswith(current) for value in (await stored(user)).values())

    again, out, _ = await kanmon(settings, env, "admin", "rekey")
    assert again == 0
    assert all(json.loads(out)["sealed"][kind]["resealed"] == 0 for kind in SEALED_KINDS)


async def test_t3_cli_rekey_without_a_secret_key_is_a_configuration_error(
    settings: Settings, keys: Keys
) -> None:
    code, out, err = await kanmon(settings, {"KANMON_OLD_SECRET_KEYS": keys.a}, "admin", "rekey")
    assert code == 2
    assert out == ""
    assert "KANMON_SECRET_KEY" in err
    assert "Traceback" not in err
