"""The staff queue: a Redis Stream of case events, delivered at least once to every notifier.

  <prefix>:handoff:queue   STREAM, entries {k: kind, n: case number[, at: message time]
                           [, done: notifiers that already handled it]}, consumer group
                           "notifiers"

An entry is acknowledged (and deleted) only after every notifier has it. A notifier that fails
leaves the entry pending: this worker retries its own pending entries with growing backoff, and
entries left pending by a worker that died are taken over with XAUTOCLAIM after
`reclaim_idle_ms`. Per-entry delivery markers (CaseStore.mark_delivered) keep a retry caused by
one notifier (say the webhook) from posting to the others (Slack) twice.

Besides the notifiers (towards staff), the worker carries staff answers towards the resident:
an entry of kind "reply" names a staff message recorded in the case thread; the relay sends it
(LINE push keyed by the message id, or the web outbox) and it is marked delivered by that id.
A reply that keeps failing is parked after `relay_tries` passes, and staff are told in the thread
("undelivered"). The same loop sweeps cases stored but never queued (a crash in between) and
expires stale cases, telling their residents.

`python -m bot worker` runs `bot.wiring.run_worker(settings)`; with the embedded Redis the web
process runs the same loop in a thread instead (Handoff.start_thread).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from prometheus_client import Counter
from pydantic import ValidationError

from bot import logs
from bot.handoff.cases import (
    CASES_CLAIMED,
    CASES_EXPIRED,
    CASES_OPENED,
    CASES_RESOLVED,
    FIRST_STAFF_REPLY,
    CaseStore,
    valid_number,
)
from bot.handoff.models import Case, StaffMessage
from bot.handoff.notify import Notifier, NotifierDown, NotifierError
from bot.ports import StaffRelay
from bot.redisconn import UNAVAILABLE
from bot.streams import Entry, StreamConsumer

log = logs.get("handoff")
GROUP = "notifiers"
ANSWERS_GRACE_S = 120.0  # how long a farewell waits for staff answers read after it
WRONG_NUMBER = "wrong_number"  # a content problem, not a case: {k, w: window, name, phone, d}

DELIVERIES = Counter("tsunagu_handoff_deliveries", "Queue events handed to a notifier",
                     ["notifier", "outcome"])
RELAYS_PARKED = Counter("tsunagu_handoff_relays_parked",
                        "Staff answers given up on after repeated failures (staff told)")

__all__ = ["CASES_CLAIMED", "CASES_EXPIRED", "CASES_OPENED", "CASES_RESOLVED", "DELIVERIES",
           "FIRST_STAFF_REPLY", "GROUP", "HandoffWorker"]


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class HandoffWorker:
    """Reads the staff queue and hands each event to every notifier."""

    def __init__(self, client: redis.Redis, cases: CaseStore, notifiers: list[Notifier],
                 consumer_name: str | None = None, reclaim_idle_ms: int = 30_000,
                 block_ms: int = 1000, batch: int = 16, retry_base_s: float = 0.5,
                 retry_max_s: float = 60.0, expire_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, relay: StaffRelay | None = None,
                 relay_tries: int = 5):
        self.redis = client
        self.cases = cases
        self.notifiers = notifiers
        self.consumer = consumer_name or default_consumer()
        self.reclaim_idle_ms = reclaim_idle_ms
        self.block_ms = block_ms
        self.batch = batch
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.expire_every_s = expire_every_s
        self.clock = clock
        self.relay = relay
        self.relay_tries = relay_tries
        self.stream = cases.queue
        self.queue = StreamConsumer(client, cases.queues, GROUP, self.consumer)
        self._failures = 0           # consecutive passes with a failed delivery
        self._retry_at = 0.0         # when our own pending entries are tried again
        self._last_reclaim = float("-inf")
        self._last_expire = float("-inf")
        self._outage = logs.Throttle(60.0)

    def ensure_group(self) -> None:
        self.queue.ensure_groups()

    # -- one entry -----------------------------------------------------------------------------

    def _ack(self, entry: Entry) -> None:
        self.queue.ack([(entry.stream, entry.id)])

    def deliver(self, entry: Entry, down: set[str]) -> bool:
        """Hand one entry to every notifier not yet done; ack when all are. True if acked.

        `down` collects notifiers that failed as a whole during this pass: they are not called
        again until the next pass, so an outage costs one timeout per pass, not one per entry.
        """
        eid, fields = entry.id, entry.fields
        kind, number = fields.get("k", ""), fields.get("n", "")
        if kind == WRONG_NUMBER:
            return self._content(entry, down)
        if not kind or not valid_number(number):
            logs.event(log, "queue_entry_malformed", logging.ERROR, entry=eid)
            self._ack(entry)
            return True
        try:
            case = self.cases.get(number)
            at = float(fields.get("at", "nan"))
        except (ValueError, ValidationError) as exc:  # a corrupt record or entry never heals
            logs.event(log, "queue_entry_unreadable", logging.ERROR, entry=eid, number=number,
                       error=type(exc).__name__)
            self._ack(entry)
            return True
        if case is None:
            logs.event(log, "queue_case_gone", logging.WARNING, entry=eid, number=number)
            self._ack(entry)
            return True
        if kind == "reply":
            sealed = fields.get("t")
            text = self.cases.sealer.open(sealed) if sealed else None
            return self._reply(entry, case, fields.get("m", ""), text)
        if kind == "farewell":
            return self._farewell(entry, case)
        message: StaffMessage | None = None
        if kind == "message":
            message = next((m for m in case.thread if m.at == at and m.who == "resident"), None)
            sealed = self.cases.sealer.open(fields["t"]) if fields.get("t") else None
            if sealed and case.forgotten_at is None:  # the case may have closed since
                message = StaffMessage(at=at, who="resident", text=sealed)
            if message is None or not message.text:  # trimmed, or deleted by `cmd.forget`
                self._ack(entry)
                return True
        done = set(filter(None, fields.get("done", "").split(",")))
        ok = True
        for notifier in self.notifiers:
            marker = f"{eid}:{notifier.name}"
            if notifier.name in done or self.cases.was_delivered(number, marker):
                continue
            if notifier.name in down:
                ok = False
                continue
            try:
                notifier.notify(kind, case, message=message, delivery=eid)
            except NotifierError as exc:
                ok = False
                if isinstance(exc, NotifierDown):
                    down.add(notifier.name)
                DELIVERIES.labels(notifier=notifier.name, outcome="failed").inc()
                # Only our own NotifierError texts are safe to log (error codes, HTTP status).
                logs.event(log, "delivery_failed", logging.WARNING, notifier=notifier.name,
                           kind=kind, number=number, error=type(exc).__name__,
                           reason=str(exc)[:120])
                continue
            except Exception as exc:  # a bug or a surprise: may quote case data, so no text
                ok = False
                DELIVERIES.labels(notifier=notifier.name, outcome="failed").inc()
                logs.failure(f"handoff.notify.{notifier.name}", exc, kind=kind, number=number)
                continue
            DELIVERIES.labels(notifier=notifier.name, outcome="ok").inc()
            self.cases.mark_delivered(number, marker)
        if ok:
            self._ack(entry)
            logs.event(log, "delivered", kind=kind, number=number)
        return ok

    def _content(self, entry: Entry, down: set[str]) -> bool:
        """A wrong-number report (bot/figures.py counts them all): staff hear of a window at
        most once a day, so one resident tapping again and again does not flood the channel.
        The day's marker holds the first entry's id, so that entry's own retries still go out.
        """
        eid, fields = entry.id, entry.fields
        window = fields.get("w", "")
        if not window or len(window) > 100:
            self._ack(entry)
            return True
        marker = f"{self.cases.prefix}:handoff:wrong:{window}:{fields.get('d', '')}"
        first: object = eid
        if not self.redis.set(marker, eid, nx=True, ex=2 * 86400):
            first = self.redis.get(marker)
        if (first.decode() if isinstance(first, bytes) else first) != eid:
            self._ack(entry)  # already told today
            return True
        report = {"window": window, "name": fields.get("name", ""),
                  "phone": fields.get("phone", "")}
        ok = True
        for notifier in self.notifiers:
            tell = getattr(notifier, "content_problem", None)
            if tell is None:
                continue
            if notifier.name in down:
                ok = False
                continue
            try:
                tell(report, delivery=eid)
            except NotifierError as exc:
                ok = False
                if isinstance(exc, NotifierDown):
                    down.add(notifier.name)
                logs.event(log, "delivery_failed", logging.WARNING, notifier=notifier.name,
                           kind=WRONG_NUMBER, error=type(exc).__name__, reason=str(exc)[:120])
            except Exception as exc:
                ok = False
                logs.failure(f"handoff.notify.{notifier.name}", exc, kind=WRONG_NUMBER)
        if ok:
            self._ack(entry)
            logs.event(log, "delivered", kind=WRONG_NUMBER, window=window)
        return ok

    def _reply(self, entry: Entry, case: Case, message_id: str, text: str | None) -> bool:
        """A staff answer → the resident, once per message id; parked after `relay_tries`.

        Also after the case was resolved, as long as its farewell has not released the address
        (the farewell is queued after the answers, so they arrive first)."""
        number, marker = case.number, f"reply:{message_id}"
        message = next((m for m in case.thread if m.id == message_id and m.who == "staff"),
                       None)
        if message is not None and text:  # the record's copy is erased once the case closes
            message = message.model_copy(update={"text": text})
        if (message is None or not message.text or not case.pid
                or case.forgotten_at is not None or self.cases.was_delivered(number, marker)):
            if message is not None:  # done with it: a farewell need not wait for it
                self.cases.mark_delivered(number, marker)
            self._ack(entry)  # trimmed, released, forgotten (staff were told), or done
            return True
        return self._to_resident(entry, case, marker,
                                 lambda: self._relay().staff_reply(case, message), "undelivered")

    def _farewell(self, entry: Entry, case: Case) -> bool:
        """Resolved: tell the resident it has ended, then release their address — after the
        staff answers written before it (see `_answers_outstanding`)."""
        if not case.pid:
            self._ack(entry)
            return True
        if self._answers_outstanding(case):
            return False  # pending: tried again after them
        done = True
        if case.forgotten_at is None and not self.cases.was_delivered(case.number, "farewell"):
            done = self._to_resident(entry, case, "farewell",
                                     lambda: self._relay().closed(case), None, ack=False)
        if done:
            self.cases.release(case.number)
            self._ack(entry)
        return done

    def _answers_outstanding(self, case: Case) -> bool:
        """Staff answers in the thread not yet relayed nor given up on. The farewell is queued
        after them, but not always in the same shard (one written while the case's shard was
        down went to another, bot.handoff.cases `_add`), so it may be read first; releasing
        the address then would drop them. Waited for at most `ANSWERS_GRACE_S` after the case
        closed (an answer whose queueing failed never comes)."""
        ids = {f"reply:{m.id}" for m in case.thread if m.who == "staff" and m.id}
        if not ids or case.resolved_at is None \
                or self.cases.clock() - case.resolved_at > ANSWERS_GRACE_S:
            return False
        waiting = ids - self.cases.delivered(case.number)
        if waiting:
            logs.event(log, "farewell_waits", number=case.number, answers=len(waiting))
        return bool(waiting)

    def _relay(self) -> StaffRelay:
        if self.relay is None:
            raise RuntimeError("no relay wired: staff answers cannot reach residents")
        return self.relay

    def _to_resident(self, entry: Entry, case: Case, marker: str, send: Callable[[], None],
                     undelivered: str | None, ack: bool = True) -> bool:
        """Run `send` once per `marker`; after `relay_tries` failures give up (and tell staff
        with an `undelivered` entry). True when done with it either way."""
        number = case.number
        try:
            send()
        except Exception as exc:
            tries = self.cases.count_try(number, marker)
            logs.failure("handoff.relay", exc, logging.WARNING, number=number, tries=tries)
            if tries < self.relay_tries:
                return False
            self.cases.mark_delivered(number, marker)
            if undelivered:
                self.cases.enqueue(number, undelivered)  # type: ignore[arg-type]
            RELAYS_PARKED.inc()
            logs.event(log, "relay_parked", logging.ERROR, number=number, tries=tries)
            if ack:
                self._ack(entry)
            return True
        self.cases.mark_delivered(number, marker)
        if ack:
            self._ack(entry)
        logs.event(log, "relayed_to_resident", number=number, channel=case.channel)
        return True

    def _deliver_all(self, entries: list[Entry], down: set[str]) -> tuple[int, int]:
        done = failed = 0
        for entry in entries:
            if not entry.fields:  # deleted from the stream while pending: nothing to deliver
                self._ack(entry)
                continue
            if self.deliver(entry, down):
                done += 1
            else:
                failed += 1
        return done, failed

    def _note(self, failed: int) -> None:
        """Back off after a pass with failures; reset after a clean one."""
        if failed:
            self._failures += 1
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** (self._failures - 1))
            self._retry_at = self.clock() + delay
        elif self._failures and self.clock() >= self._retry_at:
            self._failures = 0

    # -- passes --------------------------------------------------------------------------------

    def poll_once(self, block_ms: int | None = None) -> int:
        """Read new entries (blocking up to block_ms) and deliver them. Returns how many."""
        entries = self.queue.read(self.batch, self.block_ms if block_ms is None else block_ms)
        down: set[str] = set()
        done, failed = self._deliver_all(entries, down)
        if failed:
            self._note(failed)
        return done + failed

    def retry_pending(self) -> int:
        """Deliver again the entries this consumer read but could not deliver yet."""
        entries = self.queue.own_pending(self.batch)
        done, failed = self._deliver_all(entries, set())
        self._note(failed)
        return done

    def reclaim(self) -> int:
        """Take over entries another consumer (a dead worker) left pending, and deliver them."""
        self._last_reclaim = self.clock()
        entries = self.queue.reclaim(self.reclaim_idle_ms, self.batch)
        if entries:
            logs.event(log, "queue_reclaimed", entries=len(entries))
        done, failed = self._deliver_all(entries, set())
        if failed:
            self._note(failed)
        return done

    def pending(self) -> int:
        """How many entries wait for acknowledgement, over all consumers."""
        return self.queue.pending()

    def step(self, block_ms: int | None = None) -> None:
        """One loop turn: reclaim and expire when due, retry our pending when due, read new."""
        now = self.clock()
        if now - self._last_reclaim >= self.reclaim_idle_ms / 2000:
            self.reclaim()
        if now - self._last_expire >= self.expire_every_s:
            self._last_expire = now
            self.cases.requeue_stranded()
            self.cases.expire_stale(before_forget=self.relay.expired if self.relay else None)
        if now >= self._retry_at:
            self.retry_pending()
        wait_ms = self.block_ms if block_ms is None else block_ms
        if self._failures:
            wait_ms = max(1, min(wait_ms, int((self._retry_at - self.clock()) * 1000)))
        self.poll_once(block_ms=wait_ms)

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; Redis outages back off instead of spinning.

        On a cluster the wait for new entries covers every shard (a doorbell thread per
        shard, bot.streams.Doorbell), so an entry in any shard is read at once."""
        self.queue.ring_on_every_shard(self.block_ms)
        try:
            self._loop(stop)
        finally:
            self.queue.stop_ringing()

    def _loop(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                self.step()
                delay = 0.5
            except UNAVAILABLE as exc:
                self.queue.lost()
                if self._outage.ready():
                    logs.event(log, "redis_unavailable", logging.WARNING,
                               error=type(exc).__name__)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:
                logs.failure("handoff.worker", exc)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
