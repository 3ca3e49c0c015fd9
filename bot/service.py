"""One message of one person, end to end: pseudonymise, lock, step the engine, save, log.

Every channel (web chat, LINE, the terminal) goes through here, so storage, ordering, degraded
mode and logging are written once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from bot import logs, metrics
from bot.engine import Engine, Incoming, Step
from bot.figures import Figures
from bot.replies import Text
from bot.session import Session
from bot.store import LockTimeout, SessionStore, Turn

log = logs.get("conversation")
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, LockTimeout)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Conversations:
    def __init__(self, engine: Engine, store: SessionStore, secret: str | Sequence[str],
                 clock: Callable[[], datetime] = utcnow, cases: Any = None,
                 figures: Figures | None = None):
        self.engine = engine
        self.store = store
        self.secrets = (secret,) if isinstance(secret, str) else tuple(secret)
        self.secret = self.secrets[0]
        self.clock = clock
        self.cases = cases  # bot.handoff.cases.CaseStore when staff are connected
        self.figures = figures  # the city's anonymous counts (bot.figures)
        self._outage = logs.Throttle(60.0)

    def pseudonym(self, channel: str, user_id: str) -> str:
        """Newest key's pseudonym, or an older key's while the person has data under it."""
        return self.store.find_pseudonym(self.secrets, channel, user_id)

    def handle(self, channel: str, user_id: str, incoming: Incoming) -> Step:
        pid = self.pseudonym(channel, user_id)
        started = time.perf_counter()
        now = self.clock()
        try:
            with self.store.turn(pid) as turn:
                before = turn.session
                step = self.engine.step(before, incoming, now)
                self.after_step(pid, channel, user_id, step)
                turn.keep(step.session)
                self.record(turn, channel, before, step, incoming, now)
        except REDIS_DOWN as exc:
            metrics.REDIS_ERRORS.labels("conversation").inc()
            if self._outage.ready():
                logs.event(log, "redis_unavailable", logging.WARNING, error=type(exc).__name__)
            step = self.engine.degraded_step(incoming, now)
        metrics.record_step(channel, incoming.kind, step.events)
        elapsed = time.perf_counter() - started
        metrics.LATENCY.labels(channel).observe(elapsed)
        metrics.ANSWERS.labels(channel, "response").inc()
        logs.event(log, "message", channel=channel, pid=pid[:16], kind=incoming.kind,
                   state=step.session.state if step.session else None,
                   events=step.events, ms=round(elapsed * 1000, 2))
        return step

    def record(self, turn: Turn, channel: str, before: Session | None, step: Step,
               incoming: Incoming, now: datetime) -> None:
        """Count the step in the city's figures, in the round trip that saves the session."""
        if self.figures is not None:
            turn.also(self.figures.writes_for(channel, before, step, incoming, now))

    def after_step(self, pid: str, channel: str, user_id: str, step: Step) -> None:
        """What a step asks of the handoff: open a case, relay text, forget an address.

        Runs before the session is saved and before the answer is sent, so a receipt is never
        shown for a case that was not stored.
        """
        if self.cases is None:
            return
        if step.handoff is not None:
            self._open_case(pid, channel, user_id, step)
        session = step.session
        if step.relay and session is not None and session.case:
            if self.cases.add_message(session.case, "resident", step.relay) is None:
                # The case was closed or expired meanwhile: nobody would read this. Say so
                # (after any crisis reply) and let the person start again.
                fresh, replies = self.engine.close_case(session)
                urgent = [r for r in step.replies if getattr(r, "urgent", False)]
                step.session, step.replies, step.relay = fresh, [*urgent, *replies], None
                step.events.append("handoff:gone")
            elif "handoff:urgent" in step.events:
                self.cases.mark_urgent(session.case)
        if "command:forget" in step.events:
            self.cases.delete_for(pid)

    def _open_case(self, pid: str, channel: str, user_id: str, step: Step) -> None:
        request = step.handoff
        assert request is not None and step.session is not None
        for _ in range(8):
            if self.cases.open(request, channel, pid, user_id) is not None:
                break
            # The number is taken (1 in a million): draw another, and say the new one.
            fresh = self.engine.case_number()
            step.replies = [r.model_copy(update={"text": r.text.replace(request.number, fresh)})
                            if isinstance(r, Text) else r for r in step.replies]
            request = request.model_copy(update={"number": fresh})
        else:
            raise RuntimeError("could not draw a free case number")
        step.handoff = request
        step.session.case = request.number
        logs.event(log, "case_opened", pid=pid[:16], number=request.number,
                   urgent=request.urgent)
