"""Prometheus metrics (GET /metrics). Labels carry kinds and outcomes, never personal data.

What is about residents' conversations carries `city` (Settings.city_label: the tenant id, or
the single city's pack id): one deployment may serve several cities (bot.tenants), and an
operator must tell one city's crisis replies and latency from another's. Redis errors are not
labelled: the cities share one Redis.

The handoff's own counters (cases opened, claimed, resolved, time to first staff answer) live
beside the case store in bot/handoff/cases.py, with the same `city` label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from bot.engine import Step

EVENTS = Counter("tsunagu_events_total", "Messages and events received",
                 ["city", "channel", "kind"])
ANSWERS = Counter("tsunagu_answers_total", "Answers sent", ["city", "channel", "via"])
LATENCY = Histogram("tsunagu_answer_seconds", "From receiving an event to its answer",
                    ["city", "channel"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                  2.5, 5, 10, 30, 60))
CRISIS = Counter("tsunagu_crisis_replies_total",
                 "Crisis replies given, by kind (maybe: the soft tier's gentle line, beside the "
                 "normal reply)", ["city", "kind"])
REDIS_ERRORS = Counter("tsunagu_redis_errors_total", "Redis unreachable (degraded answers)",
                       ["where"])
DEGRADED = Counter("tsunagu_degraded_answers_total", "Answers given without Redis",
                   ["city", "channel"])


MAX_CHILDREN = 10_000  # label combinations remembered by `child`; past that, looked up each time
_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)` (values in the order of the metric's label names), remembered:
    prometheus_client checks and sorts the labels and takes a lock on every call, a few µs a
    message for the same few combinations. The library returns the same child for the same
    values until it is removed, and we never remove one; a lost race only looks it up twice."""
    key = (metric, *values)
    found = _children.get(key)
    if found is None:
        found = metric.labels(*values)
        if len(_children) < MAX_CHILDREN:
            _children[key] = found
    return found


def record_step(city: str, channel: str, kind: str, step: Step) -> None:
    """Count one answered message from what its step says (metrics read the step; nothing
    reads the metrics to decide what to do)."""
    child(EVENTS, city, channel, kind).inc()
    for event in step.events:
        if event.startswith("crisis:"):
            child(CRISIS, city, event.split(":", 1)[1]).inc()
        elif event == "degraded":
            child(DEGRADED, city, channel).inc()
