"""Twilio webhooks (W1, S3, S5): delivery receipts and inbound keywords.

Both check `X-Twilio-Signature` against KANMON_PUBLIC_URL; a bad or missing signature is 403
and changes nothing. A signed form that cannot be stored (a NUL byte) is 400 and changes nothing.
Unknown message ids and senders are answered calmly and change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.container import Services
from gateway.core.text import has_nul
from gateway.factors.sms.delivery import apply_receipt
from gateway.factors.sms.signature import valid_signature
from gateway.login.sms_keywords import InboundSms

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
STATUS_PATH = "/webhooks/sms/status"
INBOUND_PATH = "/webhooks/sms/inbound"


def _auth_tokens(services: Services) -> list[str]:
    settings = services.settings
    tokens = [settings.twilio_auth_token, settings.twilio_fallback_auth_token]
    return [t.get_secret_value() for t in tokens if t is not None and t.get_secret_value()]


async def _signed_form(request: Request, services: Services) -> list[tuple[str, str]] | Response:
    """The POST parameters if the signature is right, else the refusal to answer with: 403 for
    a bad signature (checked first, so a forgery learns nothing more), 400 for a signed form
    holding a NUL byte, which no text column takes (PostgreSQL refuses it)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return Response(status_code=403)
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return Response(status_code=403)
    url = services.settings.resolved_public_url() + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature")
    if not valid_signature(_auth_tokens(services), url, params, signature):
        log.warning("webhook signature refused", extra={"path": request.url.path})
        return Response(status_code=403)
    if has_nul(params):
        log.warning("webhook form with a NUL byte refused", extra={"path": request.url.path})
        return Response(status_code=400)
    return params


def twiml(reply: str | None) -> Response:
    inner = f"<Message>{escape(reply)}</Message>" if reply else ""
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>',
        media_type="application/xml",
    )


def sms_webhook_routes(services: Callable[[], Services]) -> list[Route]:
    async def status(request: Request) -> Response:
        svc = services()
        params = await _signed_form(request, svc)
        if isinstance(params, Response):
            return params
        form = dict(params)
        await apply_receipt(
            form.get("MessageSid", ""),
            form.get("MessageStatus", ""),
            form.get("ErrorCode") or None,
            svc.clock,
        )
        return Response(status_code=204)

    async def inbound(request: Request) -> Response:
        svc = services()
        params = await _signed_form(request, svc)
        if isinstance(params, Response):
            return params
        form = dict(params)
        ours = {
            svc.settings.sms_short_code,
            svc.settings.twilio_from,
            svc.settings.twilio_fallback_from,
        }
        if form.get("To") not in {n for n in ours if n}:
            return twiml(None)
        message = InboundSms(sender=form.get("From", ""), body=form.get("Body", "")[:160])
        async with svc.uow() as work:
            reply = await svc.sms_keywords.handle(message, work)
        return twiml(reply)

    return [
        Route(STATUS_PATH, status, methods=["POST"]),
        Route(INBOUND_PATH, inbound, methods=["POST"]),
    ]
