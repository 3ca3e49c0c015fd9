"""Prometheus metrics (GET /metrics). Labels carry kinds and outcomes, never personal data.

What is about residents' conversations carries `city` (Settings.city_label: the tenant id, or
the single city's pack id): one deployment may serve several cities (bot.tenants), and an
operator must tell one city's crisis replies and latency from another's. Redis errors are not
labelled: the cities share one Redis.

The handoff's own counters (cases opened, claimed, resolved, time to first staff answer) live
beside the case store in bot/handoff/cases.py, with the same `city` label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from bot.engine import Step

EVENTS = Counter("tsunagu_events_total", "Messages and events received",
                 ["city", "channel", "kind"])
ANSWERS = Counter("tsunagu_answers_total", "Answers sent", ["city", "channel", "via"])
LATENCY = Histogram("tsunagu_answer_seconds", "From receiving an event to its answer",
                    ["city", "channel"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                  2.5, 5, 10, 30, 60))
CRISIS = Counter("tsunagu_crisis_replies_total", "Crisis replies given", ["city", "kind"])
REDIS_ERRORS = Counter("tsunagu_redis_errors_total", "Redis unreachable (degraded answers)",
                       ["where"])
DEGRADED = Counter("tsunagu_degraded_answers_total", "Answers given without Redis",
                   ["city", "channel"])


def record_step(city: str, channel: str, kind: str, step: Step) -> None:
    """Count one answered message from what its step says (metrics read the step; nothing
    reads the metrics to decide what to do)."""
    EVENTS.labels(city=city, channel=channel, kind=kind).inc()
    for event in step.events:
        if event.startswith("crisis:"):
            CRISIS.labels(city=city, kind=event.split(":", 1)[1]).inc()
        elif event == "degraded":
            DEGRADED.labels(city=city, channel=channel).inc()
