"""Builds the SMS providers from settings (the adapters' composition root)."""

from __future__ import annotations

import httpx

from gateway.core.crypto import SecretBox
from gateway.factors.push.port import NoPushSender, PushSender
from gateway.factors.sms.delivery import SmsDelivery, SmsProvider
from gateway.settings import ConfigurationError, Settings, SmsProviderName
from workers.adapters.console import ConsoleProvider
from workers.adapters.twilio import TwilioProvider

STATUS_PATH = "/webhooks/sms/status"


def build_sms_delivery(
    settings: Settings, client: httpx.AsyncClient, box: SecretBox
) -> SmsDelivery:
    primary: SmsProvider
    fallback: SmsProvider | None = None
    callback = settings.resolved_public_url() + STATUS_PATH
    if settings.sms_provider is SmsProviderName.TWILIO:
        if not (
            settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from
        ):
            raise ConfigurationError(
                "KANMON_SMS_PROVIDER=twilio needs KANMON_TWILIO_ACCOUNT_SID, _AUTH_TOKEN and _FROM"
            )
        primary = TwilioProvider(
            name="twilio",
            client=client,
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            sender=settings.twilio_from,
            status_callback=callback,
            timeout=settings.sms_send_timeout_seconds,
        )
    else:
        primary = ConsoleProvider()
    if (
        settings.twilio_fallback_base_url
        and settings.twilio_fallback_account_sid
        and settings.twilio_fallback_auth_token
    ):
        fallback = TwilioProvider(
            name="twilio-fallback",
            client=client,
            base_url=settings.twilio_fallback_base_url,
            account_sid=settings.twilio_fallback_account_sid,
            auth_token=settings.twilio_fallback_auth_token.get_secret_value(),
            sender=settings.twilio_fallback_from or settings.twilio_from or "",
            status_callback=callback,
            timeout=settings.sms_send_timeout_seconds,
        )
    return SmsDelivery(
        box,
        primary,
        fallback,
        primary_tries=settings.sms_primary_tries,
        fallback_tries=settings.sms_fallback_tries,
        retry_base_seconds=settings.sms_retry_base_seconds,
    )


async def build_push_sender(settings: Settings) -> PushSender:
    """FCM when configured; otherwise apps learn of requests over the subscription and the list."""
    if settings.fcm_credentials is None:
        return NoPushSender()
    from workers.adapters.fcm import FcmSender

    return await FcmSender.from_settings(
        settings.fcm_credentials, settings.fcm_project_id, settings.fcm_endpoint
    )
