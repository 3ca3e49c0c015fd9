"""Per-address limits: how many requests, new conversations and refused webhooks one client
address may cause in a window, counted in our Redis.

The address is the one ProxyFix corrected (`TRUSTED_PROXIES`), and it never reaches Redis or a
log: keys carry an HMAC of it (`address_tag`), so a Redis dump does not list who visited.

We deliberately do not use Flask-Limiter: its keys carry the raw address unless re-keyed, its
answer to an over-limit client is a 429, where a resident must still get the crisis lines and
the window list, and it would be a second way of talking to Redis. A fixed-window counter is
INCR + EXPIRE in one pipelined round trip.

  <prefix>:limit:<kind>:<address tag>:<window number>   INT, expires with its window
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar

import redis
from prometheus_client import Counter, Gauge

from bot import logs

# The address tag of the web request being answered, so that CaseStore.open can count the
# cases one address opens (LINE requests carry none: one LINE account is one person).
ORIGIN: ContextVar[str | None] = ContextVar("tsunagu_origin", default=None)

LIMITED = Counter("tsunagu_rate_limited_total", "Requests answered over a per-address limit",
                  ["kind"])


def address_tag(secret: str, address: str) -> str:
    """A pseudonym for a client address: stable per key, useless without it."""
    return hmac.new(secret.encode(), f"addr:{address}".encode(), hashlib.sha256).hexdigest()[:24]


class Limits:
    def __init__(self, client: redis.Redis, prefix: str, secret: str,
                 clock: Callable[[], float] = time.time):
        self.redis = client
        self.prefix = prefix
        self.secret = secret
        self.clock = clock

    def tag(self, address: str | None) -> str:
        return address_tag(self.secret, address or "unknown")

    def _key(self, kind: str, tag: str, window_s: int) -> str:
        return f"{self.prefix}:limit:{kind}:{tag}:{int(self.clock() // window_s)}"

    def hit(self, kind: str, tag: str, limit: int, window_s: int = 60) -> bool:
        """Count one; True while within `limit` per window. Redis down: allowed (the request
        then meets the outage itself and is answered in degraded mode, storing nothing)."""
        key = self._key(kind, tag, window_s)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, window_s + 1)
            count, _ = pipe.execute()
        except redis.RedisError:
            return True
        if count > limit:
            LIMITED.labels(kind).inc()
            return False
        return True


QUEUE_BACKLOG = Gauge("tsunagu_queue_backlog", "Entries waiting in a queue stream", ["queue"])
_log = logs.get("limits")


class Backlog:
    """The length of a queue stream, watched instead of trimmed.

    Our streams hold only undelivered work (an entry is deleted when it is acknowledged), so
    XADD MAXLEN would silently drop a case or a resident's message while, say, Slack refuses
    our token. Growth is bounded upstream (per-address and per-person limits); here it is made
    visible: a gauge, and one ERROR log line a minute while the length is past `alert_at` —
    the dead-letter alarm an operator acts on.
    """

    def __init__(self, queue: str, alert_at: int = 1000, every_s: float = 1.0):
        self.queue = queue
        self.alert_at = alert_at
        self._throttle = logs.Throttle(60.0)
        self._sample = logs.Throttle(every_s)

    def due(self) -> bool:
        """Whether to measure the length now: once a second per process is enough for a gauge
        and an alarm, and measuring on every webhook cost one XLEN per shard per event."""
        return self._sample.ready()

    def note(self, length: int) -> None:
        QUEUE_BACKLOG.labels(self.queue).set(length)
        if length >= self.alert_at and self._throttle.ready():
            logs.event(_log, "queue_backlog", logging.ERROR, queue=self.queue, length=length,
                       alert_at=self.alert_at)
