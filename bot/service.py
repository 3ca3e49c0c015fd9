"""One message of one person, end to end: step, side effects, deliver, save, record, log.

Every channel goes through `Conversations.process` — the web chat (`handle`), the LINE
dispatcher, the degraded mode when Redis is down, and staff answers relayed to a resident — so
the order of the work, its idempotence, metrics and logging are written once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bot import logs, metrics, phonesafe
from bot.engine import Engine, Incoming, Step
from bot.figures import Figures, tokyo_day
from bot.followup import Followups
from bot.handoff.cases import TooManyCases
from bot.ports import Cases, Deliver, Event
from bot.redisconn import UNAVAILABLE, beside
from bot.replies import Text
from bot.store import LockTimeout, SessionStore, Turn

log = logs.get("conversation")
REDIS_DOWN = (*UNAVAILABLE, LockTimeout)
NUMBER_TRIES = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


def respond(step: Step) -> str:
    """Deliver for request/response channels: the replies go back in the HTTP response."""
    return "response"


class Conversations:
    def __init__(self, engine: Engine, store: SessionStore, secret: str | Sequence[str],
                 clock: Callable[[], datetime] = utcnow, cases: Cases | None = None,
                 figures: Figures | None = None, followups: Followups | None = None,
                 city: str | None = None):
        self.engine = engine
        self.city = city or engine.pack.name  # the metrics' city label (Settings.city_label)
        self.store = store
        self.secrets = (secret,) if isinstance(secret, str) else tuple(secret)
        self.secret = self.secrets[0]
        self.clock = clock
        self.cases = cases  # bot.handoff.cases.CaseStore when staff are connected
        self.figures = figures  # the city's anonymous counts (bot.figures)
        self.followups = followups  # the 3-day follow-up on LINE (bot.followup)
        self._outage = logs.Throttle(60.0)

    def pseudonym(self, channel: str, user_id: str) -> str:
        """Newest key's pseudonym, or an older key's while the person has data under it."""
        return self.store.find_pseudonym(self.secrets, channel, user_id)

    def outage(self, where: str, exc: BaseException) -> None:
        """Redis is unreachable: count it, and say so at most once a minute."""
        metrics.REDIS_ERRORS.labels(where).inc()
        if self._outage.ready():
            logs.event(log, "redis_unavailable", logging.WARNING, error=type(exc).__name__)

    def handle(self, channel: str, user_id: str, incoming: Incoming,
               event_id: str | None = None) -> Step:
        """A request/response channel (web chat, terminal): lock, process, save, unlock.

        Args:
            channel: "web" or another request/response channel name.
            user_id: the platform's id for the person (pseudonymised here, kept only sealed
                as a case's address).
            incoming: what they sent.
            event_id: unique per message; a fresh one when the channel has none.

        Returns:
            The Step, its replies to be sent in the response. When Redis is unreachable the
            degraded step (crisis lines, 24-hour lines, the list), nothing stored.

        Raises:
            Nothing for Redis outages (degraded mode); other failures propagate.

        Ordering: one message of a person at a time (their lock, `SessionStore.turn`).
        """
        pid = self.pseudonym(channel, user_id)
        event = Event(channel=channel, pid=pid, incoming=incoming,
                      event_id=event_id or uuid.uuid4().hex, address=user_id)
        try:
            with self.store.turn(pid) as turn:
                return self.process(event, turn, respond)
        except REDIS_DOWN as exc:
            self.outage("conversation", exc)
            return self.process(event, None, respond)

    def process(self, event: Event, turn: Turn | None, deliver: Deliver) -> Step:
        """Step the engine, do what the step asks, deliver, keep the session, record, log.

        Args:
            event: the message, with an `event_id` stable across retries of it.
            turn: the person's loaded session under their lock (the caller holds the lock and
                saves `turn` after this returns); None when Redis is unreachable: a degraded
                step, no side effects, nothing kept.
            deliver: sends the step's replies; returns how (a metrics label).

        Returns:
            The Step that was delivered; `turn` holds its session.

        Raises:
            Whatever `deliver` raises (e.g. DeliveryPending): then the session is not kept,
            and the caller may run `process` again with the same event. Redis errors from the
            side effects propagate too.

        Ordering: the work is always in this order — step; side effects: open a case, relay
        to the case (with urgency), forget the person's case data; deliver; keep the
        session (with the city's figures, saved in the same round trip); metrics; log.
        Each side effect is idempotent per `event.event_id`: a retry
        after a failed delivery opens no second case (the case number derives from the event
        id) and relays no message twice (the thread knows the event id).
        """
        started = time.perf_counter()
        now = self.clock()
        if turn is None:
            step = self.engine.degraded_step(event.incoming, now)
        else:
            step = self.engine.step(turn.session, event.incoming, now, channel=event.channel)
            self._effects(event, step)
        via = deliver(step)
        if turn is not None:
            before = turn.session
            if step.session is not None or step.forget:
                # No session and no forget (a staff answer to someone without a session):
                # nothing stored changes.
                turn.keep(step.session)
            if self.figures is not None and not event.incoming.from_staff:
                # Counted on the node of the person's session (a cluster): one down node
                # holding the day's figures must not fail everyone's answer.
                turn.also(self.figures.writes_for(event.channel, before, step, event.incoming,
                                                  now, near=self.store.key(event.pid, "session")))
            if self.followups is not None and not event.incoming.from_staff:
                turn.also(self.followups.writes_for(event, before, step, now))
            if self.cases is not None:
                turn.also(self._wrong_numbers(step, now, event.pid))
        self._record(event, step, via, started)
        return step

    def _wrong_numbers(self, step: Step, now: datetime,
                       pid: str) -> Callable[[Any], None] | None:
        """A card's number reported as not working: queue it for staff (a content problem,
        no case, nothing about the person), in the session's round trip — on a cluster in a
        staff-queue shard on the node of the person's session (any shard does: it belongs to
        no case), so a down node holding another shard cannot fail this person's answer."""
        reports = []
        for name in step.events:
            if name.startswith("wrong_number:"):
                window = self.engine.pack.windows.get(name.split(":", 1)[1])
                if window is not None:
                    reports.append({"k": "wrong_number", "w": window.id,
                                    "name": window.name.ja, "phone": window.phone or "",
                                    "d": tokyo_day(now)[0]})
        if not reports or self.cases is None:
            return None
        shards = self.cases.queues.names  # type: ignore[attr-defined]
        queue = beside(self.store.redis, self.store.key(pid, "session"), shards) or shards[0]

        def enqueue(pipe: Any) -> None:
            for report in reports:
                pipe.xadd(queue, report)
        return enqueue

    def forget(self, pid: str, turn: Turn) -> None:
        """Delete everything of this person (LINE unfollow, an unreadable address)."""
        turn.keep(None)
        if self.cases is not None:
            self.cases.delete_for(pid)
        if self.followups is not None:
            turn.also(self.followups.cancel_writes(pid))

    # -- side effects, in their fixed order --------------------------------------------------

    def _effects(self, event: Event, step: Step) -> None:
        phonesafe.effects(self.cases, self.engine, event.pid, event.event_id, step)
        if self.cases is None:
            return
        if step.handoff is not None:
            self._open_case(event, step)
        session = step.session
        if step.relay and session is not None and session.case:
            case = self.cases.add_message(session.case, "resident", step.relay,
                                          key=event.event_id, urgent=step.urgent)
            if case is None:
                # The case was closed or expired meanwhile: nobody would read this. Say so
                # (after any crisis reply) and let the person start again.
                fresh, replies = self.engine.close_case(session)
                urgent = [r for r in step.replies if getattr(r, "urgent", False)]
                step.session, step.replies, step.relay = fresh, [*urgent, *replies], None
                step.events.append("handoff:gone")
        if step.forget:
            self.cases.delete_for(event.pid)

    def case_number(self, event: Event, attempt: int) -> str:
        """The case number for this event: the same on every retry of the event."""
        seed = hmac.new(self.secret.encode(), f"case:{event.pid}:{event.event_id}:{attempt}"
                        .encode(), hashlib.sha256).digest()
        return self.engine.case_number(seed)

    def _open_case(self, event: Event, step: Step) -> None:
        request = step.handoff
        assert request is not None and step.session is not None and self.cases is not None
        if event.address is None:
            raise ValueError("a case needs the person's address")
        drawn = request.number
        for attempt in range(NUMBER_TRIES):
            # A taken number (1 in a million) is another person's case: draw the next one.
            request = request.model_copy(update={"number": self.case_number(event, attempt)})
            try:
                opened = self.cases.open(request, event.channel, event.pid,  # type: ignore[arg-type]
                                         event.address)
            except TooManyCases:  # this web address opened its day's share (bot.limits)
                self.engine.case_refused(step, self.clock())
                return
            if opened is not None:
                break
        else:
            raise RuntimeError("could not draw a free case number")
        step.replies = [r.model_copy(update={"text": r.text.replace(drawn, request.number)})
                        if isinstance(r, Text) else r for r in step.replies]
        step.handoff = request
        step.session.case = request.number
        logs.event(log, "case_opened", pid=event.pid[:16], number=request.number,
                   urgent=request.urgent)

    # -- metrics and the log line ------------------------------------------------------------

    def _record(self, event: Event, step: Step, via: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.record_step(self.city, event.channel, event.incoming.kind, step)
        metrics.child(metrics.ANSWERS, self.city, event.channel, via).inc()
        waited = elapsed
        if event.received is not None:
            waited = max(0.0, self.clock().timestamp() - event.received)
        metrics.child(metrics.LATENCY, self.city, event.channel).observe(waited)
        logs.event(log, "message", channel=event.channel, pid=event.pid[:16],
                   kind=event.incoming.kind, via=via,
                   state=step.session.state if step.session else None,
                   events=step.events, ms=round(elapsed * 1000, 2))
