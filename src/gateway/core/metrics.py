"""O3: Prometheus metrics. Counters are bumped where things happen; gauges that describe
shared state (queue depth, outbox backlog) are read at scrape time.

Several gateway processes behind one port share a PROMETHEUS_MULTIPROC_DIR (set by
`kanmon serve`), so a scrape of any one of them reports all of them.
"""

from __future__ import annotations

import gc
import os
import re
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

GRAPHQL_SECONDS = Histogram(
    "kanmon_graphql_operation_seconds",
    "GraphQL operation latency by operation name.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CHALLENGE_OUTCOMES = Counter(
    "kanmon_login_challenge_outcomes_total",
    "Login challenge outcomes by method (success, wrong_code, locked, approved, denied...).",
    ["method", "outcome"],
)
SMS_MESSAGES = Counter(
    "kanmon_sms_messages_total",
    "SMS messages reaching a status, by provider.",
    ["status", "provider"],
)
PUSH_SENDS = Counter(
    "kanmon_push_sends_total",
    "FCM sends by result (sent, unregistered, sender_id_mismatch, retry, failed).",
    ["result"],
)
QUEUE_DEPTH = Gauge(
    "kanmon_queue_depth",
    "Jobs waiting per arq queue (read at scrape time).",
    ["queue"],
    multiprocess_mode="max",
)
OUTBOX_BACKLOG = Gauge(
    "kanmon_outbox_backlog",
    "Outbox rows not yet handed to Redis (read at scrape time).",
    multiprocess_mode="max",
)
OPEN_SUBSCRIPTIONS = Gauge(
    "kanmon_open_subscriptions",
    "GraphQL subscriptions open in this process.",
    ["kind"],
    multiprocess_mode="livesum",
)
WEBSOCKETS_REFUSED = Counter(
    "kanmon_websockets_refused_total",
    "Websockets refused because their client address had KANMON_WEBSOCKETS_PER_IP open: a "
    "rise with few clients means the gateway sees the proxy's address, not theirs.",
)

GC_PAUSE_SECONDS = Histogram(
    "kanmon_gc_pause_seconds",
    "Cyclic garbage collector pauses by generation: the whole process waits meanwhile.",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_OPERATION_NAMES = 200
_seen_operations: set[str] = set()


def operation_label(name: str | None) -> str:
    """Client-chosen names are capped, so a client cannot blow up the label set."""
    if not name or not _NAME.match(name):
        return "anonymous" if not name else "other"
    if name in _seen_operations or len(_seen_operations) < _MAX_OPERATION_NAMES:
        _seen_operations.add(name)
        return name
    return "other"


def render() -> tuple[bytes, str]:
    registry: CollectorRegistry = DEFAULT_REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


_gc_started = 0.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started)


def watch_gc_pauses() -> None:
    """Times every collection into GC_PAUSE_SECONDS (once, however often it is called): a
    process serving a thousand websockets stalls for each full one, and latency tails are
    where that shows first."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)
