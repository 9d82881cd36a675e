"""O3, F4: the logging policy, checked against every record the whole suite produced. This
file runs last (pytest collects files in name order)."""

from __future__ import annotations

import logging
import re

from tests.conftest import CAPTURED_LOGS
from tests.secrets_seen import SEEN

E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def test_o3_logs_hold_no_codes_secrets_numbers_or_push_tokens() -> None:
    logging.getLogger("gateway.test").warning("capture check", extra={"kind": "sentinel"})
    assert "capture check" in CAPTURED_LOGS.lines[-1], "logs are not being captured"
    assert len(SEEN) > 10, "the suite saw too few secrets for this check to mean anything"
    leaks = [(secret, line) for line in CAPTURED_LOGS.lines for secret in SEEN if secret in line]
    assert not leaks, leaks[:5]
    numbers = [line for line in CAPTURED_LOGS.lines if E164.search(line)]
    assert not numbers, numbers[:5]
