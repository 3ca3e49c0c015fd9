"""Handoff cases in Redis: one hash tag per case, the resident's address sealed and short-lived.

Keys (DESIGN.md conventions; <p> is the key prefix):

  <p>:{case:<number>}:case    the Case as JSON, sealed (Fernet): anonymous (category ids,
                              answers, ward) but holding what the resident and staff typed (the
                              consented message, the thread) while the case is open; that text
                              is erased when the case closes, the record kept for statistics
  <p>:{case:<number>}:addr    the platform address, sealed (Fernet); deleted on resolve, expiry
                              and delete-my-data, and it carries its own TTL so Redis drops it even
                              if no expirer ever runs
  <p>:{case:<number>}:sent    which (queue entry, notifier) pairs were delivered, so a retry
                              after a partial failure does not post to Slack twice
  <p>:{<pid>}:case            the number of this person's open case (the dialogue asks it)
  <p>:{<pid>}:unseen          LIST, sealed items: what the person's neutral notices stand for
                              (bot.phonesafe), deleted with their session (bot.store LIVE_KEYS)
  <p>:handoff:open            ZSET number → created_at: the open cases, for expiry
  <p>:handoff:unqueued        ZSET number → time: cases being stored and not yet queued; a
                              case left here by a crash is queued by the worker's sweep
  <p>:handoff:queue           STREAM of staff-side events (see bot.handoff.worker), in
                              shards (bot.streams); a case's events go to its own shard, or
                              to another while that shard's primary is unreachable
  <p>:handoff:slack:<channel>:<ts>   the case whose Slack message is <ts> (staff replies)
  <p>:handoff:content:<delivery>     a wrong-number report's post to Slack: tried / sent

A case number is reserved by its record (SET NX on open) for as long as the record lives, and
no other key naming the number outlives the record: the Slack thread mapping and the delivery
markers take the record's remaining time, and follow it when a closed record is kept 30 days.
A reply in an old thread is also checked against the record's own message (case_for_thread).

Changes to one case go through WATCH/MULTI on its single key, so two staff clicking "claim" at
once get exactly one winner, also on Redis Cluster (one key, one slot). Metrics are counted
after the transaction that made the change commits, so every transition counts once.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis
from prometheus_client import Counter, Histogram

from bot import logs
from bot.crypto import Sealer
from bot.figures import Figures, first_reply_bucket
from bot.handoff.models import Case, CaseRequest, Channel, StaffMessage
from bot.limits import LIMITED, ORIGIN, Backlog
from bot.redisconn import UNAVAILABLE, script
from bot.streams import Shards

log = logs.get("handoff")

NUMBER_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{1,31}")
OPEN_STATUSES = ("new", "claimed")
EventKind = Literal["opened", "message", "urgent", "claimed", "resolved", "expired",
                    "forgotten", "reply", "undelivered", "farewell"]

# `city`: the CaseStore's city (Settings.city_label), as in bot/metrics.py.
CASES_OPENED = Counter("tsunagu_handoff_cases_opened", "Handoff cases opened",
                       ["city", "channel"])
CASES_CLAIMED = Counter("tsunagu_handoff_cases_claimed", "Handoff cases claimed by staff",
                        ["city"])
CASES_RESOLVED = Counter("tsunagu_handoff_cases_resolved", "Handoff cases resolved by staff",
                         ["city"])
CASES_EXPIRED = Counter("tsunagu_handoff_cases_expired", "Handoff cases expired unresolved",
                        ["city"])
QUEUE_REDIRECTED = Counter("tsunagu_handoff_queue_redirected",
                           "Staff-queue entries written to another shard (their own was down)")
FIRST_STAFF_REPLY = Histogram(
    "tsunagu_handoff_first_staff_reply_seconds",
    "Time from a case being opened to the first staff reply in its thread", ["city"],
    buckets=(60, 300, 900, 1800, 3600, 3 * 3600, 8 * 3600, 24 * 3600, 72 * 3600, 7 * 24 * 3600),
)

# Create the case and its sealed address together, only if the number is free. Both keys share
# the {case:N} hash tag, so this is one slot on a cluster.
_OPEN = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('set', KEYS[2], ARGV[3], 'EX', ARGV[4])
  return 1
end
return 0
"""

# Drop a person's open-case index only if it still names this case (a newer case keeps its own).
_DEL_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


# Add a delivery marker; the set lives as long as the case record (one slot), never longer,
# so no key names a number after the record that reserves it is gone.
_MARK = """
redis.call('sadd', KEYS[1], ARGV[1])
local at = redis.pcall('pexpiretime', KEYS[2])
if type(at) == 'number' and at > 0 then
  redis.call('pexpireat', KEYS[1], at)
  return 1
end
local left = redis.call('pttl', KEYS[2])
if left == -2 then left = 60000
elseif left < 0 then left = tonumber(ARGV[2])
else left = math.max(1, left - 1000) end
redis.call('pexpire', KEYS[1], left)
return 1
"""

# The same TTL rule for a delivery's bookkeeping (attempts noted, failed tries counted): never
# longer than the case record. Returns SADD's answer (1: first attempt) or the new try count.
_NOTE = """
local out
if ARGV[3] == 'count' then out = redis.call('hincrby', KEYS[1], ARGV[1], 1)
else out = redis.call('sadd', KEYS[1], ARGV[1]) end
local left = redis.call('pttl', KEYS[2])
if left == -2 then left = 60000 elseif left < 0 then left = ARGV[2] end
redis.call('pexpire', KEYS[1], left)
return out
"""


UNSEEN_TTL_S = 7 * 24 * 3600  # as long as a case stays open before it expires


class Unseen:
    """Sealed items waiting for `notice.open` (bot.phonesafe): ("staff", text), ("closed", ""),
    ("expired", "")."""

    def __init__(self, client: redis.Redis, key: Callable[[str, str], str], sealer: Sealer):
        self.redis = client
        self.key = key
        self.sealer = sealer

    def push(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        """Keep items once per event (a retried delivery pushes the same event again)."""
        key = self.key(pid, "unseen")
        raw = [json.dumps({"e": event_id, "k": kind, "t": text}, ensure_ascii=False)
               for kind, text in items]
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(self.sealer.seal(r) for r in raw))
        pipe.expire(key, UNSEEN_TTL_S)
        pipe.execute()

    def take(self, pid: str) -> list[tuple[str, str]]:
        """Everything waiting, in order, each event once; the list is emptied."""
        key = self.key(pid, "unseen")
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        sealed, _ = pipe.execute()
        seen: set[tuple[str, str]] = set()
        items: list[tuple[str, str]] = []
        for token in sealed:
            plain = self.sealer.open(token.decode() if isinstance(token, bytes) else token)
            if plain is None:  # sealed with a key no longer configured: unreadable
                continue
            item = json.loads(plain)
            mark = (item["e"], item["k"])
            if mark not in seen:
                seen.add(mark)
                items.append((item["k"], item["t"]))
        return items


class TooManyCases(Exception):
    """This client address opened its day's share of cases; the resident gets phone numbers."""


@dataclass(frozen=True)
class StaffReply:
    """What recording a staff message did: `recorded` (now or by an earlier try of the same
    message), `claimed_now` (the answer claimed a new case), `refused` (claimed by another)."""

    case: Case | None
    recorded: bool
    claimed_now: bool = False
    refused: bool = False


class CaseConflict(Exception):
    """A case kept changing under us for too long (a bug or a storm); the caller may retry."""


def erase_text(case: Case) -> None:
    """What people typed leaves the record when the case closes or the resident leaves; the
    times, categories and who handled it stay (without the pseudonym) for the statistics."""
    case.request.message = None
    for message in case.thread:
        message.text = ""


def valid_number(number: str) -> bool:
    return bool(NUMBER_RE.fullmatch(number or ""))


class CaseStore:
    """Open, read and move cases through new → claimed → resolved (or expired)."""

    def __init__(self, client: redis.Redis, prefix: str, sealer: Sealer,
                 expire_after_s: int = 7 * 24 * 3600, keep_closed_s: int = 30 * 24 * 3600,
                 thread_max: int = 50, clock: Callable[[], float] = time.time,
                 cases_per_origin_per_day: int = 0, urgent_alert_interval_s: int = 0,
                 backlog_alert_at: int = 1000, shards: int = 1, city: str = ""):
        self.city = city  # the metrics' city label (Settings.city_label)
        self.cases_per_origin_per_day = cases_per_origin_per_day  # 0: no limit
        self.urgent_alert_interval_s = urgent_alert_interval_s    # 0: every crisis alerts
        self.backlog = Backlog("handoff", backlog_alert_at)        # never trimmed: watched
        self.redis = client
        self.prefix = prefix
        self.sealer = sealer
        self.expire_after_s = expire_after_s
        self.keep_closed_s = keep_closed_s
        self.thread_max = thread_max
        self.clock = clock
        self.queues = Shards(f"{prefix}:handoff:queue", shards)
        self.queue = self.queues.names[0]
        self.open_index = f"{prefix}:handoff:open"
        self.unqueued = f"{prefix}:handoff:unqueued"
        self.figures = Figures(client, prefix)  # the city's anonymous counts
        self.unseen = Unseen(client, self.person_key, sealer)

    def _count(self, now: float, *cells: tuple[str, str]) -> None:
        """Count a staff-side transition in the city's figures (a lost count is only lost)."""
        self.figures.count(datetime.fromtimestamp(now, UTC), cells)

    # -- keys --------------------------------------------------------------------------------

    def queue_of(self, number: str) -> str:
        """The staff-queue shard of a case: one case's events stay in order in one stream."""
        return self.queues.of(number)

    def case_key(self, number: str, what: str = "case") -> str:
        return f"{self.prefix}:{{case:{number}}}:{what}"

    def person_key(self, pid: str, what: str) -> str:
        """A key of one person, under their hash tag: the same as bot.store.SessionStore.key,
        so the session store finds and deletes it with the person's other keys."""
        return f"{self.prefix}:{{{pid}}}:{what}"

    def pid_key(self, pid: str) -> str:
        return self.person_key(pid, "case")

    def thread_key(self, channel: str, ts: str) -> str:
        return f"{self.prefix}:handoff:slack:{channel}:{ts}"

    @property
    def open_ttl(self) -> int:
        """An open case outlives its expiry by the retention time, even if no expirer runs."""
        return self.expire_after_s + self.keep_closed_s

    # -- opening and reading -----------------------------------------------------------------

    def open(self, request: CaseRequest, channel: Channel, pid: str, address: str) -> Case | None:
        """Store a new case and queue it for staff; None if the number is another case's.

        The same person asking again with the same number (a retried message) gets the stored
        case back and nothing is queued twice. The case (with its sealed address) is written
        in one slot, then indexed and queued; it is noted in `unqueued` before the write and
        removed with the queueing, so a process dying in between leaves a note that
        `requeue_stranded` (the worker) turns into the missing queue entry.
        """
        if not valid_number(request.number):
            raise ValueError("case number must be upper-case letters, digits and '-'")
        self._check_origin()
        now = self.clock()
        case = Case(number=request.number, channel=channel, pid=pid, created_at=now,
                    updated_at=now, request=request)
        stored: Case | None = None
        noted = self.redis.zadd(self.unqueued, {case.number: now}, nx=True)
        created = int(self.redis.eval(
            _OPEN, 2, self.case_key(case.number), self.case_key(case.number, "addr"),
            self._seal(case), self.open_ttl, self.sealer.seal(address), self.expire_after_s))
        if created == 0:
            stored = self.get(case.number)
            if stored is not None and pid and stored.pid == pid \
                    and stored.status in OPEN_STATUSES:
                created = 2  # this person's case: a retry of the same request
        if created == 0:
            if noted:
                self.redis.zrem(self.unqueued, case.number)
            logs.event(log, "case_number_taken", number=case.number)
            return None
        if created == 2:
            stored = stored or case
            if noted:  # the first try queued it (and removed its note): nothing more to do
                self.redis.zrem(self.unqueued, case.number)
            else:      # the first try died between storing and queueing
                self._queue_opened(stored)
            return stored
        self._queue_opened(case)
        CASES_OPENED.labels(city=self.city, channel=channel).inc()
        logs.event(log, "case_opened", number=case.number, channel=channel,
                   urgent=request.urgent, categories=len(request.categories),
                   with_message=bool(request.message))
        return case

    def _check_origin(self) -> None:
        """Count a case against the web request's client address (bot.limits.ORIGIN); past
        `cases_per_origin_per_day`, TooManyCases — staff are not flooded by one script."""
        origin = ORIGIN.get()
        if origin is None or not self.cases_per_origin_per_day:
            return
        key = f"{self.prefix}:limit:cases:{origin}:{int(self.clock() // 86400)}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 86400 + 1)
        count, _ = pipe.execute()
        if count > self.cases_per_origin_per_day:
            LIMITED.labels("cases").inc()
            raise TooManyCases(origin[:8])

    def _queue_opened(self, case: Case) -> None:
        """Queue the case (in another shard if its own is down), then index it and drop its
        `unqueued` note. The entry is written on its own: on a cluster a pipeline that meets
        a node down raises without saying which commands ran, and the note must go only once
        the entry is surely queued. If this dies after queueing, the sweep queues it again:
        a second "opened" updates the staff message instead of posting it twice."""
        self._add(case.number, {"k": "opened", "n": case.number})
        pipe = self.redis.pipeline(transaction=False)
        if case.pid:
            pipe.set(self.pid_key(case.pid), case.number, ex=self.expire_after_s)
        pipe.zadd(self.open_index, {case.number: case.created_at})
        pipe.zrem(self.unqueued, case.number)
        pipe.execute()
        self._note_backlog()

    def _add(self, number: str, entry: dict[str, str]) -> str:
        """XADD to the case's shard; when its primary is unreachable, to the first other
        shard that takes it (as LINE tickets do, bot.channels.line_queue). The case's events
        may then reach the worker out of order: one that needs an earlier one (a thread
        message before the case's own message) waits pending and is retried (NotReady).
        Raises only when no shard takes it; an opened case then stays noted for the sweep."""
        name, entry_id = self.queues.write_first(number, lambda n: self.redis.xadd(n, entry))
        if name != self.queue_of(number):
            QUEUE_REDIRECTED.inc()
            logs.event(log, "queue_redirected", logging.WARNING, number=number,
                       kind=entry.get("k", ""), shard=self.queues.names.index(name))
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def _note_backlog(self) -> None:
        """The whole queue's length for the backlog alarm; best effort (a shard lately down
        is left out rather than waited for)."""
        names = [n for n in self.queues if not self.queues.is_down(n)]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.xlen(name)
        try:
            lengths = pipe.execute(raise_on_error=False)
        except UNAVAILABLE:
            return
        self.backlog.note(sum(n for n in lengths if isinstance(n, int)))

    def requeue_stranded(self, older_than_s: float = 60.0) -> list[str]:
        """Queue the cases a dying process stored but never queued (see `open`)."""
        cutoff = self.clock() - older_than_s
        found = []
        for raw in self.redis.zrangebyscore(self.unqueued, "-inf", cutoff, start=0, num=100):
            number = raw.decode() if isinstance(raw, bytes) else raw
            case = self.get(number)
            if case is None or case.status not in OPEN_STATUSES:
                self.redis.zrem(self.unqueued, number)  # never stored: nothing to deliver
                continue
            self._queue_opened(case)
            found.append(number)
        if found:
            logs.event(log, "cases_requeued", logging.WARNING, count=len(found))
        return found

    def get(self, number: str) -> Case | None:
        if not valid_number(number):
            return None
        return self._unseal(self.redis.get(self.case_key(number)))

    def _seal(self, case: Case) -> str:
        """The record at rest: sealed whole, so no typed text is ever readable in Redis."""
        return self.sealer.seal(case.model_dump_json())

    def _unseal(self, raw: bytes | str | None) -> Case | None:
        if raw is None:
            return None
        plain = self.sealer.open(raw)
        if plain is None:  # sealed with a key no longer configured: as good as gone
            logs.event(log, "case_unreadable", logging.ERROR)
            return None
        return Case.model_validate_json(plain)

    def open_case_of(self, pid: str) -> str | None:
        """The number of this person's open case, so what they write goes to staff."""
        raw = self.redis.get(self.pid_key(pid))
        return raw.decode() if isinstance(raw, bytes) else raw

    def address(self, number: str) -> str | None:
        """The resident's platform address, unsealed; None once resolved, expired or deleted."""
        if not valid_number(number):
            return None
        token = self.redis.get(self.case_key(number, "addr"))
        if token is None:
            return None
        return self.sealer.open(token.decode() if isinstance(token, bytes) else token)

    def case_for_thread(self, channel: str, ts: str) -> str | None:
        """The case whose Slack message is `ts` — only if that case still names this message.

        A number is reserved by its record, and the mapping never outlives the record; the
        check makes sure anyway that a reply in an old thread can never reach a newer case
        that drew the same number.
        """
        raw = self.redis.get(self.thread_key(channel, ts))
        number = raw.decode() if isinstance(raw, bytes) else raw
        if number is None:
            return None
        case = self.get(number)
        if case is None or case.slack_ts != ts or (case.slack_channel or channel) != channel:
            logs.event(log, "thread_of_another_case", logging.WARNING, number=number)
            return None
        return number

    # -- changes -----------------------------------------------------------------------------

    def _mutate(self, number: str, change: Callable[[Case], bool], ttl: int | None = None,
                delete: tuple[str, ...] = ()) -> tuple[bool, Case | None]:
        """Apply `change` atomically (optimistic WATCH/MULTI on the case key).

        `change` returns False to leave the case as it is. It may run more than once (after a
        conflicting write), so it must only touch the case. `delete` names keys of the same
        case (same slot) removed in the same transaction.
        """
        key = self.case_key(number)
        for attempt in range(64):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    case = self._unseal(pipe.get(key))
                    if case is None:
                        pipe.unwatch()
                        return False, None
                    if not change(case):
                        pipe.unwatch()
                        return False, case
                    case.updated_at = self.clock()
                    pipe.multi()
                    if ttl is None:
                        pipe.set(key, self._seal(case), keepttl=True)
                    else:
                        pipe.set(key, self._seal(case), ex=ttl)
                    for what in delete:
                        pipe.delete(self.case_key(number, what))
                    pipe.execute()
                    if ttl is not None and case.slack_ts:
                        # The thread → case mapping dies with the record (which reserves the
                        # number): never a mapping to a number that may be drawn again.
                        self._align_thread(number, case.slack_channel or "", case.slack_ts)
                    return True, case
                except redis.WatchError:
                    time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise CaseConflict(number)

    def enqueue(self, number: str, kind: EventKind, done: tuple[str, ...] = (),
                **fields: str) -> str:
        """Queue a staff-side event; `done` names notifiers that already handled it."""
        entry: dict[str, str] = {"k": kind, "n": number, **fields}
        if done:
            entry["done"] = ",".join(done)
        entry_id = self._add(number, entry)
        self._note_backlog()  # the backlog alarm watches the whole queue
        return entry_id

    def claim(self, number: str, staff_id: str) -> tuple[bool, Case | None]:
        """new → claimed. Exactly one of several simultaneous claims wins."""
        now = self.clock()

        def change(case: Case) -> bool:
            if case.status != "new":
                return False
            case.status, case.claimed_by, case.claimed_at = "claimed", staff_id, now
            return True

        won, case = self._mutate(number, change)
        if won:
            CASES_CLAIMED.labels(self.city).inc()
            self._count(now, ("handoff_claimed", case.channel if case else "unknown"))
            logs.event(log, "case_claimed", number=number)
        return won, case

    def staff_reply(self, number: str, staff_id: str, text: str, message_id: str = "",
                    lead: bool = False) -> StaffReply:
        """Record a staff message once per `message_id`; an unclaimed case becomes claimed by
        whoever answers first.

        A claimed case takes answers only from the staff member who claimed it, or from a
        `lead`; anyone else is refused (`refused`), nothing recorded. A closed or data-deleted
        case is returned unchanged, so the caller can tell staff the reply cannot reach anyone.
        """
        now = self.clock()
        flags: dict[str, bool] = {}

        def change(case: Case) -> bool:
            flags.update(claimed=False, first=False, refused=False, again=False)
            if case.status not in OPEN_STATUSES or case.forgotten_at is not None:
                return False
            if message_id and any(m.id == message_id for m in case.thread):
                flags["again"] = True
                return False
            if case.status == "claimed" and case.claimed_by != staff_id and not lead:
                flags["refused"] = True
                return False
            if case.status == "new":
                case.status, case.claimed_by, case.claimed_at = "claimed", staff_id, now
                flags["claimed"] = True
            if case.first_staff_reply_at is None:
                case.first_staff_reply_at = now
                flags["first"] = True
            self._append(case, "staff", text, now, message_id)
            return True

        changed, case = self._mutate(number, change)
        if changed and case is not None:
            cells = []
            if flags["claimed"]:
                CASES_CLAIMED.labels(self.city).inc()
                cells.append(("handoff_claimed", case.channel))
            if flags["first"]:
                FIRST_STAFF_REPLY.labels(self.city).observe(max(0.0, now - case.created_at))
                cells.append(("handoff_first_reply",
                              first_reply_bucket(max(0.0, now - case.created_at))))
            if cells:
                self._count(now, *cells)
            logs.event(log, "staff_replied", number=number, first=flags["first"])
        return StaffReply(case=case, recorded=changed or flags.get("again", False),
                          claimed_now=changed and flags.get("claimed", False),
                          refused=flags.get("refused", False))

    def _append(self, case: Case, who: str, text: str, now: float, key: str = "") -> float:
        """Append to the thread with a unique, increasing time (it identifies the message)."""
        at = now
        if case.thread and at <= case.thread[-1].at:
            at = case.thread[-1].at + 1e-6
        case.thread.append(StaffMessage(at=at, who=who, text=text, id=key))  # type: ignore[arg-type]
        del case.thread[: -self.thread_max]
        return at

    def add_message(self, number: str, who: Literal["resident", "staff", "system"], text: str,
                    announce: bool | None = None, key: str | None = None,
                    urgent: bool = False) -> Case | None:
        """Append to the case thread (last `thread_max` kept), once per `key`.

        A resident's message is queued for staff (posted in the Slack thread by the worker), so
        a Slack outage delays it but does not lose it; `urgent` (crisis words) marks the case
        urgent in the same write and announces it again. A second call with the same `key` (a
        retried message) changes and queues nothing and returns the case. None if the case is
        closed or gone.
        """
        now = self.clock()
        stamp: dict[str, float] = {}
        again: dict[str, bool] = {}

        def change(case: Case) -> bool:
            again["yes"] = False
            if case.status not in OPEN_STATUSES:
                return False
            if key and any(m.id == key for m in case.thread):
                again["yes"] = True
                return False
            stamp["at"] = self._append(case, who, text, now, key or "")
            if urgent:
                case.request.urgent = True
            return True

        changed, case = self._mutate(number, change)
        if again.get("yes"):
            return case
        if not changed:
            return None
        if (who == "resident") if announce is None else announce:
            # The entry carries the text, sealed: the record erases it when the case closes,
            # yet a message written just before must still reach staff.
            self.enqueue(number, "message", at=repr(stamp["at"]), t=self.sealer.seal(text))
        if urgent:
            self._announce_urgent(number)
        return case

    def _announce_urgent(self, number: str) -> None:
        """The resident got the crisis reply already; staff get one announcement (an @here in
        the thread) per case per `urgent_alert_interval_s`, not one per message: the messages
        themselves still reach the thread."""
        if self.urgent_alert_interval_s <= 0 or self.redis.set(
                self.case_key(number, "alerted"), "1", nx=True, ex=self.urgent_alert_interval_s):
            self.enqueue(number, "urgent")
        logs.event(log, "case_urgent", number=number)

    def mark_urgent(self, number: str) -> Case | None:
        """Crisis words in an open case: make it urgent and announce it again in its thread."""
        def change(case: Case) -> bool:
            if case.status not in OPEN_STATUSES:
                return False
            case.request.urgent = True
            return True

        changed, case = self._mutate(number, change)
        if changed:
            self._announce_urgent(number)
        return case if changed else None

    def set_slack_message(self, number: str, channel: str, ts: str) -> Case | None:
        """Remember the case's Slack message: its thread is the conversation."""
        def change(case: Case) -> bool:
            case.slack_channel, case.slack_ts = channel, ts
            return True

        _, case = self._mutate(number, change)
        if case is not None:
            self.redis.set(self.thread_key(channel, ts), number, px=self.open_ttl * 1000)
            self._align_thread(number, channel, ts)
        return case

    def _align_thread(self, number: str, channel: str, ts: str) -> None:
        """Give the thread mapping exactly the record's expiry time (to the millisecond): the
        record's expiry frees the number, and no mapping may name it after that."""
        record, thread = self.case_key(number), self.thread_key(channel, ts)
        try:
            at_ms = int(self.redis.pexpiretime(record))  # Redis 7
        except redis.ResponseError:  # older Redis: its remaining time, less a margin
            left_ms = int(self.redis.pttl(record))
            if left_ms > 0:
                self.redis.pexpire(thread, max(1, left_ms - 1000))
            return
        if at_ms > 0:
            self.redis.pexpireat(thread, at_ms)

    def _forget(self, case: Case) -> Case | None:
        """Delete what leads back to the person: the sealed address, the pid index and the
        pseudonym in the kept record."""
        pid = case.pid

        def change(stored: Case) -> bool:
            if not stored.pid:
                return False
            stored.pid = ""
            return True

        _, stored = self._mutate(case.number, change, delete=("addr",))
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.case_key(case.number, "addr"))  # also when the record is gone
        if pid:
            script(pipe, _DEL_IF, [self.pid_key(pid)], case.number)
        pipe.zrem(self.open_index, case.number)
        pipe.execute()
        return stored

    def release(self, number: str) -> Case | None:
        """After a resolved case's farewell: delete the address, pid index and pseudonym."""
        case = self.get(number)
        return self._forget(case) if case is not None else None

    def resolve(self, number: str, staff_id: str,
                before_forget: Callable[[Case], None] | None = None,
                may: Callable[[Case], bool] | None = None,
                farewell: bool = False) -> Case | None:
        """claimed/new → resolved; then the address and the pid index are deleted.

        `before_forget(case)` runs once, for the call that resolved the case, while the address
        still exists (to tell the resident the conversation ended). Its failure is logged and
        does not keep the address. The record stays, without the pseudonym and without any
        typed text, for `keep_closed_s`. `may(case)` False refuses (claim semantics,
        bot.handoff.staff): the open case comes back unchanged. `farewell`: instead of calling
        `before_forget` and forgetting now, queue a "farewell" after the staff answers already
        queued; the worker tells the resident and then calls `release`.
        """
        now = self.clock()
        refused: dict[str, bool] = {}

        def change(case: Case) -> bool:
            refused["yes"] = False
            if case.status not in OPEN_STATUSES:
                return False
            if may is not None and not may(case):
                refused["yes"] = True
                return False
            case.status, case.resolved_at, case.resolved_by = "resolved", now, staff_id
            erase_text(case)
            return True

        changed, case = self._mutate(number, change, ttl=self.keep_closed_s)
        if case is None:
            return None
        if refused.get("yes"):
            return case
        if changed:
            CASES_RESOLVED.labels(self.city).inc()
            self._count(now, ("handoff_resolved", case.channel))
            logs.event(log, "case_resolved", number=number)
            if before_forget is not None and not farewell:
                self._before_forget(before_forget, case)
            self.enqueue(number, "resolved")
            if farewell:
                self.enqueue(number, "farewell")
        if farewell and case.pid:
            return case  # the queued farewell releases it (expiry does, should it never run)
        return self._forget(case) or case

    @staticmethod
    def _before_forget(call: Callable[[Case], None], case: Case) -> None:
        try:
            call(case.model_copy(deep=True))
        except Exception as exc:
            logs.failure("handoff.notice_before_forget", exc, number=case.number)

    def expire_stale(self, now: float | None = None,
                     before_forget: Callable[[Case], None] | None = None) -> list[str]:
        """Cases open longer than `expire_after_s` → expired, their address deleted.

        `before_forget(case)` runs once per expired case while its address still exists, to
        tell the resident (phone-safe wording); its failure is logged and does not keep the
        address."""
        now = self.clock() if now is None else now
        cutoff = now - self.expire_after_s
        numbers = [n.decode() if isinstance(n, bytes) else n
                   for n in self.redis.zrangebyscore(self.open_index, "-inf", cutoff,
                                                     start=0, num=500)]
        expired = []
        for number in numbers:
            def change(case: Case) -> bool:
                if case.status not in OPEN_STATUSES:
                    return False
                case.status = "expired"
                erase_text(case)
                return True

            changed, case = self._mutate(number, change, ttl=self.keep_closed_s)
            if case is None:
                self.redis.delete(self.case_key(number, "addr"))
                self.redis.zrem(self.open_index, number)
                continue
            if changed and before_forget is not None and case.pid:
                self._before_forget(before_forget, case)
            self._forget(case)
            if changed:
                CASES_EXPIRED.labels(self.city).inc()
                self._count(now, ("handoff_expired", case.channel))
                self.enqueue(number, "expired")
                expired.append(number)
        if expired:
            logs.event(log, "cases_expired", count=len(expired))
        return expired

    def delete_for(self, pid: str) -> Case | None:
        """Delete-my-data: forget this person's open case address and free text; the case stays,
        anonymous, so staff see that the person left and cannot be answered."""
        number = self.open_case_of(pid)
        if number is None:
            return None
        now = self.clock()

        def change(case: Case) -> bool:
            case.forgotten_at = case.forgotten_at or now
            erase_text(case)
            return True

        _, case = self._mutate(number, change)
        if case is None:
            self.redis.delete(self.pid_key(pid))
            return None
        stored = self._forget(case) or case
        self.enqueue(number, "forgotten")
        logs.event(log, "case_forgotten", number=number)
        return stored

    # -- what neutral notices stand for (bot.phonesafe) ---------------------------------------

    def keep_unseen(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        """Keep, sealed, what a neutral notice stands for, once per event."""
        self.unseen.push(pid, event_id, items)

    def take_unseen(self, pid: str) -> list[tuple[str, str]]:
        """Everything waiting for `notice.open`, in order, each event once; none left after."""
        return self.unseen.take(pid)

    # -- delivery bookkeeping (bot.handoff.worker) -------------------------------------------

    def note_attempt(self, number: str, delivery: str) -> bool:
        """Note that `delivery` is being tried; True the first time (nothing can be out there
        yet), False when an earlier try may have got through (see SlackNotifier)."""
        return bool(self.redis.eval(_NOTE, 2, self.case_key(number, "sent"),
                                    self.case_key(number), f"try:{delivery}",
                                    self.open_ttl * 1000, "add"))

    def count_try(self, number: str, marker: str) -> int:
        """One more failed try of a delivery; returns how many so far."""
        return int(self.redis.eval(_NOTE, 2, self.case_key(number, "tries"),
                                   self.case_key(number), marker, self.open_ttl * 1000,
                                   "count"))

    def delivered(self, number: str) -> set[str]:
        """Every delivery marker of a case (see `mark_delivered`)."""
        return {m.decode() if isinstance(m, bytes) else m
                for m in self.redis.smembers(self.case_key(number, "sent"))}

    def was_delivered(self, number: str, marker: str) -> bool:
        return bool(self.redis.sismember(self.case_key(number, "sent"), marker))

    def mark_delivered(self, number: str, marker: str) -> None:
        self.redis.eval(_MARK, 2, self.case_key(number, "sent"), self.case_key(number),
                        marker, self.open_ttl * 1000)

    # -- delivery bookkeeping of content problems (wrong-number reports: no case) ------------

    def content_key(self, delivery: str) -> str:
        return f"{self.prefix}:handoff:content:{delivery}"

    def note_content_attempt(self, delivery: str) -> bool:
        """As `note_attempt`, for a report that has no case: True the first time."""
        return bool(self.redis.set(self.content_key(delivery), "try", nx=True,
                                   ex=self.open_ttl))

    def content_delivered(self, delivery: str) -> bool:
        raw = self.redis.get(self.content_key(delivery))
        return (raw.decode() if isinstance(raw, bytes) else raw) == "sent"

    def mark_content_delivered(self, delivery: str) -> None:
        """Posted: a retry of the queue entry (another notifier failed) does not post again.
        Kept as long as a case's markers, longer than any entry waits in the queue."""
        self.redis.set(self.content_key(delivery), "sent", ex=self.open_ttl)
