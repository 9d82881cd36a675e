"""Phone numbers, free of I/O: E.164 parsing, the number types SMS may go to, masking, and the
block a number belongs to (S1, S7)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

from gateway.core.errors import DomainError

MAX_INPUT = 32
# S7: SMS goes to mobiles only; premium-rate, shared-cost, VoIP, pagers and the like are refused.
SMS_CAPABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
BLOCK_DIGITS = 3
_SEPARATORS = re.compile(r"[\s\-.()]")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


class InvalidPhoneNumber(DomainError):
    code = "INVALID_PHONE_NUMBER"
    default_message = "Enter a mobile number in international format, like +81 90 1234 5678."


@dataclass(frozen=True)
class ParsedNumber:
    e164: str
    country_code: int

    @property
    def masked(self) -> str:
        """Keeps the country code and the last 2 digits: +81*******78."""
        prefix = f"+{self.country_code}"
        rest = self.e164[len(prefix) :]
        return prefix + "*" * (len(rest) - 2) + rest[-2:]

    @property
    def block(self) -> str:
        """The number without its last digits: consecutive numbers share a block."""
        return self.e164[:-BLOCK_DIGITS]


def parse(text: str) -> ParsedNumber:
    """S1: a valid E.164 mobile number; raises INVALID_PHONE_NUMBER otherwise."""
    if len(text) > MAX_INPUT:
        raise InvalidPhoneNumber()
    compact = _SEPARATORS.sub("", text)
    if not compact.startswith("+"):
        raise InvalidPhoneNumber("Numbers must start with + and the country calling code.")
    if not _E164.fullmatch(compact):
        # phonenumbers would read keypad letters as digits and forgive '++': E.164 does not.
        raise InvalidPhoneNumber()
    try:
        number = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber() from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber()
    if phonenumbers.number_type(number) not in SMS_CAPABLE:
        raise InvalidPhoneNumber("That number cannot receive SMS; enter a mobile number.")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return ParsedNumber(e164=e164, country_code=int(number.country_code or 0))


def mask(e164: str) -> str:
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return "*" * max(len(e164) - 2, 0) + e164[-2:]
    return ParsedNumber(e164=e164, country_code=int(number.country_code or 0)).masked
