"""One message of one person, end to end: pseudonymise, lock, step the engine, save, log.

Every channel (web chat, LINE, the terminal) goes through here, so storage, ordering, degraded
mode and logging are written once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from bot import logs
from bot.engine import Engine, Incoming, Step
from bot.store import LockTimeout, SessionStore, pseudonym

log = logs.get("conversation")
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, LockTimeout)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Conversations:
    def __init__(self, engine: Engine, store: SessionStore, secret: str,
                 clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.store = store
        self.secret = secret
        self.clock = clock
        self._outage = logs.Throttle(60.0)

    def pseudonym(self, channel: str, user_id: str) -> str:
        return pseudonym(self.secret, channel, user_id)

    def handle(self, channel: str, user_id: str, incoming: Incoming) -> Step:
        pid = self.pseudonym(channel, user_id)
        started = time.perf_counter()
        now = self.clock()
        try:
            with self.store.turn(pid) as turn:
                step = self.engine.step(turn.session, incoming, now)
                turn.keep(step.session)
        except REDIS_DOWN as exc:
            if self._outage.ready():
                logs.event(log, "redis_unavailable", logging.WARNING, error=type(exc).__name__)
            step = self.engine.degraded_step(incoming, now)
        logs.event(log, "message", channel=channel, pid=pid[:16], kind=incoming.kind,
                   state=step.session.state if step.session else None,
                   events=step.events, ms=round((time.perf_counter() - started) * 1000, 2))
        return step

    def forget(self, channel: str, user_id: str) -> None:
        pid = self.pseudonym(channel, user_id)
        try:
            self.store.delete(pid)
        except REDIS_DOWN as exc:
            logs.event(log, "forget_failed", logging.WARNING, pid=pid[:16],
                       error=type(exc).__name__)
