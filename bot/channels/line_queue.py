"""Durable LINE events: accepted into Redis before the webhook answers 200, then answered
in order, per person, by dispatcher threads (or the worker process).

  <prefix>:{<pid>}:line:ev                      ZSET of event marks (seen, being answered)
                                                by time, trimmed to 24 h — see _ACCEPT
  <prefix>:{<pid>}:line:inbox                   ZSET by LINE's timestamp — the person's order;
                                                members {"event_id", "sealed"}: the job (text,
                                                reply token, address) sealed with Fernet, since
                                                it waits here as long as LINE is down
  <prefix>:line:work, <prefix>:line:work:{work-<i>}
                                                STREAM shards of person tickets (bot.streams),
                                                consumer group "line": at-least-once,
                                                reclaimed if a dispatcher dies (XAUTOCLAIM)
  {<prefix>:line:work}:due, <prefix>:line:work:{work-<i>}:due
                                                ZSET per shard (the shard stream's slot):
                                                "<pid>|<event id>" → when to answer it at the
                                                latest; removed with its answer, turned into a
                                                ticket by the sweeper when overdue
  <prefix>:line:due:{line-due:<n>}              ZSET, the same, on a cluster only: 16 "spread"
                                                due sets, a person's in the one on their node;
                                                swept with a lease (SWEEP_LEASE_MS, `_LEASE`)
  <prefix>:{<pid>}:line:fail                    HASH event id → unexpected failures; a job
                                                failing JOB_TRIES times is parked

Most events are answered by the process that accepted them: in the webhook's own round trip a
Lua call takes the person's lock ("claims" them) and reads their session and inbox, and a
dispatcher thread of this process answers at once — no ticket, no stream read, no second lock
round trip. Every accepted event also gets a "due" entry: if this process dies before
answering, the entry comes due after the lock has expired and the sweeper turns it into a
ticket, which any dispatcher drains. Whoever holds a person's lock answers every event that
arrived meanwhile before releasing it (see _FINISH), so an event whose claim found the lock
taken needs no ticket either. Tickets are written at once only when this process does not
answer itself (its dispatcher not running, or too busy).

The marks and the inbox share the person's hash tag, so one Lua call checks and enqueues
atomically, also on Redis Cluster. The ticket lives in a shard (another slot, often another
node), written in the same round trip but by its own command: a ticket only names a person,
so one without inbox entries is drained empty and acknowledged; inbox entries without a
ticket (their shard's primary was down) get one in another shard, or are taken back out and
answered in degraded mode (see `LineQueue.accept`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from prometheus_client import Counter

from bot import logs, metrics
from bot.channels.line_api import DeliveryPending
from bot.channels.line_events import Job
from bot.channels.line_render import render_once
from bot.config import ANSWERING_THREADS
from bot.crypto import Sealer
from bot.handoff.worker import default_consumer
from bot.limits import Backlog
from bot.ports import Conversation, Event, LineSender
from bot.redisconn import (
    REDIS_ERRORS,
    UNAVAILABLE,
    ReplicaWait,
    beside,
    is_cluster,
    place,
    script,
    shard_of,
    spread_tags,
)
from bot.session import Session
from bot.store import LockTimeout, SessionStore, Turn
from bot.streams import Entry, Shards, StreamConsumer
from bot.workers import Workers

log = logs.get("line")
GROUP = "line"
FOLLOWUP_EVERY_S = 30.0
SEEN_TTL_S = 24 * 3600
MARKS_TTL_MS = SEEN_TTL_S * 1000
INBOX_TTL_S = 24 * 3600
JOB_TRIES = 3  # a job failing this often with an unexpected error is parked
DUE_GRACE_MS = 5_000  # a due entry comes due this long after its claim's lock would expire
SWEEP_EVERY_S = 1.0
SWEEP_BATCH = 100  # due entries turned into tickets per due set and sweep, at most
# A spread due set's overdue entries are leased for this long while their tickets are written
# (`Dispatcher._sweep_spread`): other processes' sweeps leave them alone meanwhile, and an entry
# whose ticket could not be written comes back after it. Long enough for a sweep whose ticket
# shards are failing over (a few timeouts); at worst it runs out mid-sweep, and another process
# writes a second ticket, which its drain finds empty.
SWEEP_LEASE_MS = 15_000
MAX_ROUNDS = 20  # a holder answers this many rounds of newly arrived events, then lets go
CLAIMS_PER_THREAD = 16  # claims waiting per dispatcher thread before tickets are used
GIVE_BACK_S = 0.4  # stopping: how long claims never started may take to be given back
STOP_MARGIN_S = 2.0  # stopping: a claim not begun this close to the deadline is given back
# On a cluster, due sets spread over the slot space (`redisconn.spread_tags`): a person's due
# entries go in one on the node of their own keys, so accepting and finishing an event each
# touch one node — one WAIT, one connection, one pipeline sent straight to it (clusterpipe).
SPREAD_DUES = 16
STAMP_STEPS = 4096  # fractions of a ms in a call's stamp (call_stamp)

JOBS_PARKED = Counter("tsunagu_line_jobs_parked", "LINE events given up on after repeated "
                      "unexpected failures (the person got the degraded answer instead)")

# Extend the person's lock if we still hold it (before each further job of a drain): a
# dispatcher whose lock expired must stop, not answer alongside the next one.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Give back a claim never started, only while its lock is still ours: its jobs' "being
# answered" marks removed (ARGV[2..]: nothing was sent, so their drain must not take them for
# a retry after a crash) and the lock released — one call, so marks a later holder wrote for
# the same jobs (the claim waited past its lock) are not removed. KEYS: lock, marks.
_GIVE_BACK = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV do redis.call('zrem', KEYS[2], ARGV[i]) end  -- (unpack stops at ~8000)
redis.call('del', KEYS[1])
return 1
"""

# The person's event marks live in ONE sorted set, <prefix>:{<pid>}:line:ev, scored by when
# they were written: "s<id>" (seen: a redelivery is dropped) and "t<id>" (being answered: a
# retry after a crash checks LINE before sending). Marks older than MARKS_TTL_S are trimmed
# on every write and the key's TTL is renewed, so de-duplication holds for 24 h after an
# event while one small listpack replaces two keys per event.

# The one Lua loop that takes a person's inbox: mark each job "being answered" and append it to
# `out` with whether it had been marked before (a process died while answering it). Shared by
# _TAKE, _ACCEPT and _FINISH. A mark whose score is this call's `now` (`call_stamp`: unique to
# the call) was written by this very call, sent again: redis-py re-sends a pipeline whose
# reply timed out (a slow WAIT, a stalled primary), and the repeat must answer as the first
# run did — not "tried before", which would treat a job nobody has answered as a retry after a
# crash.
_TAKE_FN = """
local function take(inbox, marks, now, ttl, out)
  local jobs = redis.call('zrange', inbox, 0, -1)
  for _, raw in ipairs(jobs) do
    local mark = 't' .. cjson.decode(raw)['event_id']
    local tried = '0'
    if redis.call('zadd', marks, 'NX', now, mark) == 0
        and tonumber(redis.call('zscore', marks, mark)) ~= tonumber(now) then
      tried = '1'
    end
    out[#out + 1] = raw
    out[#out + 1] = tried
  end
  if #jobs > 0 then redis.call('pexpire', marks, ttl) end
  return out
end
"""
# Read the person's inbox and mark, for each event, that we are about to answer it; return
# each job with whether it had been marked before (a process died while answering it). Only
# under our lock (it runs right after the lock was tried, in the same pipeline): a try that
# found the lock taken must mark nothing, or its later successful try would take every job
# for a retry after a crash. KEYS: inbox, marks, lock. ARGV: now (ms), marks TTL (ms), token.
_TAKE = _TAKE_FN + """
if redis.call('get', KEYS[3]) ~= ARGV[3] then return {} end
return take(KEYS[1], KEYS[2], ARGV[1], ARGV[2], {})
"""

# Accept one person's events, in one call in the person's slot: for each event not seen
# before, a "seen" mark and its inbox entry (a redelivery is dropped: the mark exists); marks
# older than the TTL are trimmed. Then, when ARGV[4] (a lock token) is not empty, claim the
# person if their inbox has work: take their lock, read their session and take the inbox (as
# _TAKE does) — so the process that accepted the events answers them, without a ticket.
# KEYS: marks, inbox, lock, session. ARGV: now (ms), marks TTL (ms), inbox TTL (s), token or
# '', lock ms, then (event id, LINE timestamp, inbox member) per event.
# Returns {stored, claim}: stored[i] 1 new / 0 a redelivery; claim {} (not asked), {0}
# nothing to do, {3} the lock is held by a drainer (its token starts "d:"), which answers
# this too before letting go (_FINISH), {2} held by someone else (a staff answer being
# relayed: a ticket is needed), or {1, session, job, tried, job, …}.
# The same call sent again (a pipeline re-sent after its reply timed out) answers as the first
# run did: its "seen" marks carry this call's `now` and its inbox members (sealed, so never
# the same twice) are there — stored, not a redelivery; the lock holds its own token — claimed.
_ACCEPT = _TAKE_FN + """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local stored, new = {}, false
for i = 6, #ARGV, 3 do
  local seen = 's' .. ARGV[i]
  if redis.call('zadd', KEYS[1], 'NX', ARGV[1], seen) == 1 then
    redis.call('zadd', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    stored[#stored + 1] = 1
    new = true
  elseif tonumber(redis.call('zscore', KEYS[1], seen)) == tonumber(ARGV[1])
      and redis.call('zscore', KEYS[2], ARGV[i + 2]) then
    stored[#stored + 1] = 1
  else
    stored[#stored + 1] = 0
  end
end
if new then
  redis.call('pexpire', KEYS[1], ARGV[2])
  redis.call('expire', KEYS[2], ARGV[3])
end
if ARGV[4] == '' then return {stored, {}} end
if redis.call('zcard', KEYS[2]) == 0 then return {stored, {0}} end
if not redis.call('set', KEYS[3], ARGV[4], 'NX', 'PX', ARGV[5]) then
  local holder = redis.call('get', KEYS[3])
  if holder ~= ARGV[4] then
    if holder and string.sub(holder, 1, 2) == 'd:' then return {stored, {3}} end
    return {stored, {2}}
  end
end
return {stored, take(KEYS[2], KEYS[1], ARGV[1], ARGV[2], {1, redis.call('get', KEYS[4])})}
"""


# The last step of answering a person, atomically: save the session (ARGV[1] not empty, TTL
# ARGV[2] s), remove the job answered (ARGV[4] not empty), then release the lock (token
# ARGV[3]) — unless events arrived meanwhile (inbox jobs not marked as being answered) and
# ARGV[5] is not '1': then keep the lock, take the inbox as _TAKE does (ARGV[6]: now in ms,
# ARGV[7]: marks TTL in ms), renew the lock (ARGV[8] ms) and return {0, job, tried, …}: the
# holder answers those too.
# Everything that arrives while a drainer holds a person is answered by it, without a ticket
# and without another round trip. {1}: released (or the lock was no longer ours).
# KEYS: session, lock, inbox, marks.
_FINISH = _TAKE_FN + """
if ARGV[1] ~= '' then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
if ARGV[4] ~= '' then redis.call('zrem', KEYS[3], ARGV[4]) end
if redis.call('get', KEYS[2]) ~= ARGV[3] then return {1} end
if ARGV[5] ~= '1' then
  local jobs = redis.call('zrange', KEYS[3], 0, -1)
  local new = false
  for _, raw in ipairs(jobs) do
    local mark = redis.call('zscore', KEYS[4], 't' .. cjson.decode(raw)['event_id'])
    if not mark or tonumber(mark) == tonumber(ARGV[6]) then  -- (or taken by this call, sent again)
      new = true
      break
    end
  end
  if new then
    local out = take(KEYS[3], KEYS[4], ARGV[6], ARGV[7], {0})
    redis.call('pexpire', KEYS[2], ARGV[8])
    return out
  end
end
redis.call('del', KEYS[2])
return {1}
"""

# Turn overdue "due" entries of one shard into tickets: their process died (or LINE was down)
# before answering. KEYS: due, the shard's stream. ARGV: now (ms), how many at most.
_SWEEP = """
local late = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local seen = {}
for _, member in ipairs(late) do
  local pid = string.match(member, '^([^|]+)|')
  if pid and not seen[pid] then
    seen[pid] = true
    redis.call('xadd', KEYS[2], '*', 'p', pid)
  end
  redis.call('zrem', KEYS[1], member)
end
return #late
"""

# Lease the overdue entries of a spread due set, whose tickets go to other slots (no script
# can write both): up to ARGV[3] entries due by ARGV[1] get the lease's end, ARGV[2], as their
# score — so a sweep of another process running now does not take them too — and are
# returned (the shape of bot.followup's _CLAIM). KEYS: the due set.
_LEASE = """
local late = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(late) do redis.call('zadd', KEYS[1], ARGV[2], member) end
return late
"""


def call_stamp(now_ms: int | None = None) -> str:
    """`now` for one call of _ACCEPT, _TAKE or _FINISH: the time in ms plus a random fraction
    of a ms, so the marks a call writes carry a score no other call writes — a repeat of this
    very call (its pipeline re-sent after a lost reply) finds its own, another call in the same
    millisecond does not. A score is a double: at ~1.8e12 ms it has 1/4096-ms steps, so
    k/4096 is exact, and its repr round-trips through Lua and Redis unchanged."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return repr(now_ms + random.randrange(1, STAMP_STEPS) / STAMP_STEPS)


def drainer_token() -> str:
    """The lock token of whoever answers a person's LINE events: its "d:" tells a claim that
    the holder will answer what arrives meanwhile (no ticket needed).

    These draws (and `call_stamp`'s) need to differ, not to be secret — nobody outside Redis
    sees them — so they come from `random` (reseeded from the OS in every forked worker)
    rather than `secrets`, whose every draw is a system call that lets go of the GIL
    (README, "Where the rest went: context switches")."""
    return f"d:{random.getrandbits(128):032x}"


def due_member(pid: str, event_id: str) -> str:
    """An event's entry in its shard's due set ("<pid>|<event id>": _SWEEP reads the pid)."""
    return f"{pid}|{event_id}"


def due_key(stream: str) -> str:
    """A shard's due set, in its stream's slot (shard 0's name has no hash tag: its whole
    name is the tag then)."""
    return f"{stream}:due" if "{" in stream else f"{{{stream}}}:due"


@dataclass
class Claim:
    """A person this process locked while accepting their events: answer now."""

    pid: str
    token: str
    session: bytes | None
    taken: list[tuple[bytes, bytes]]
    at: float = field(default_factory=time.monotonic)
    # The jobs this process sealed itself, by inbox member: no need to open those again.
    known: dict[bytes, Job] = field(default_factory=dict)


@dataclass
class Accepted:
    stored: list[bool | None]    # per job: new, a redelivery, not stored (answer degraded)
    claims: list[Claim]          # people this process locked: answer them now
    replicated: bool = True      # False: no replica acknowledged in time


class LineQueue:
    def __init__(self, client: redis.Redis, store: SessionStore, sealer: Sealer, shards: int = 4,
                 wait: ReplicaWait | None = None, refuse_unreplicated: bool = False,
                 backlog_alert_at: int = 1000):
        self.redis = client
        self.store = store
        self.sealer = sealer
        self.shards = Shards(f"{store.prefix}:line:work", shards)
        self.stream = self.shards.names[0]
        self._dues = {name: due_key(name) for name in self.shards}
        # The spread due sets (a cluster only): swept like a shard's, their tickets written
        # to the person's shard (`Dispatcher.sweep`).
        self.spread_dues = [f"{store.prefix}:line:due:{{{tag}}}"
                            for _, tag in spread_tags("line-due", SPREAD_DUES)] \
            if is_cluster(client) else []
        self.wait = wait
        self.refuse_unreplicated = refuse_unreplicated
        self.backlog = Backlog("line", backlog_alert_at)  # never trimmed: see bot.limits

    def seal(self, job: Job) -> str:
        """An inbox member: the event id in clear (the Lua de-dup reads it), the rest sealed."""
        return json.dumps({"event_id": job.event_id, "sealed": self.sealer.seal(job.dumps())},
                          separators=(",", ":"))

    def open(self, raw: bytes | str) -> Job | None:
        """The job of an inbox member; None if it cannot be opened (a key no longer set)."""
        plain = self.sealer.open(json.loads(raw)["sealed"])
        return None if plain is None else Job.loads(plain)

    def inbox(self, pid: str) -> str:
        return self.store.key(pid, "line:inbox")

    def marks(self, pid: str) -> str:
        return self.store.key(pid, "line:ev")

    def consumer(self, name: str, home: int = 0) -> StreamConsumer:
        return StreamConsumer(self.redis, self.shards, GROUP, name, home=home)

    def accept(self, jobs: list[tuple[str, Job]], claim: bool = False) -> Accepted:
        """Make events durable: one round trip for the whole webhook body (one per node on a
        cluster, in parallel). Per job: True new, False a redelivery, None not stored (Redis
        or that person's primary is down: answer it in degraded mode).

        `claim`: this process will answer now — take the lock of each person with work in
        the same round trip (`Accepted.claims`); a person whose lock is taken is answered
        by its holder. Otherwise each person gets a ticket for the dispatchers. Every event
        gets a due entry either way (the sweeper's, if nobody answers it in time).

        With replicas, the round trip ends with WAIT on every primary written; too few
        acknowledgements set `replicated` False (the webhook may answer 500 so that LINE
        redelivers: REDIS_WAIT_TIMEOUT=refuse), and are counted.
        """
        pipe = self.redis.pipeline(transaction=False)
        keys: list[str] = []
        members = [self.seal(job) for _, job in jobs]  # sealing is random: keep what was sent
        now_ms = int(time.time() * 1000)
        due_at = now_ms + self.store.lock_ms + DUE_GRACE_MS
        people: dict[str, list[int]] = {}  # pid → indexes of its jobs, in the body's order
        for i, (pid, _) in enumerate(jobs):
            people.setdefault(pid, []).append(i)
        tokens: dict[str, str] = {}
        due_sets: dict[str, str] = {}  # pid → the due set written
        dues = {pid: {due_member(pid, jobs[i][1].event_id): due_at for i in mine}
                for pid, mine in people.items()}
        for pid, mine in people.items():
            args: list[Any] = []
            for i in mine:
                args += (jobs[i][1].event_id, jobs[i][1].timestamp_ms, members[i])
            tokens[pid] = drainer_token() if claim else ""
            script(pipe, _ACCEPT, [self.marks(pid), self.inbox(pid),
                                   self.store.key(pid, "lock"), self.store.key(pid, "session")],
                   call_stamp(now_ms), MARKS_TTL_MS, INBOX_TTL_S, tokens[pid],
                   self.store.lock_ms, *args)
            keys.append(self.marks(pid))
            due_sets[pid] = due = self.due(pid)
            pipe.zadd(due, dues[pid])
            keys.append(due)
            if not claim:
                pipe.xadd(self.shards.of(pid), {"p": pid})
                keys.append(self.shards.of(pid))
        # The backlog alarm watches the whole queue: tickets and due events (not in a shard
        # known down: its timeout would hold up this answer). Not a cluster's spread due sets:
        # their entries are events being answered now, which become tickets — counted — once
        # overdue; and reading them would touch every node from this webhook.
        measured = [n for n in self.shards if not self.shards.is_down(n)] \
            if self.backlog.due() else []
        for name in measured:
            pipe.xlen(name)
            pipe.zcard(due_key(name))
        waits = self.wait.add(pipe, keys) if self.wait is not None else 0
        results = iter(pipe.execute(raise_on_error=False))
        stored: list[Any] = [None] * len(jobs)
        claims, busy = [], []
        for pid, mine in people.items():
            accepted, due, ticket = next(results), next(results), None if claim else next(results)
            if isinstance(due, Exception):
                self._due_elsewhere(pid, dues[pid], due_sets[pid], due)
            if isinstance(accepted, Exception):
                for i in mine:
                    stored[i] = accepted
                continue
            new, claimed = accepted
            for i, flag in zip(mine, new, strict=True):
                stored[i] = int(flag)
            if claimed and int(claimed[0]) == 1:
                claims.append(Claim(pid=pid, token=tokens[pid], session=claimed[1],
                                    taken=list(zip(claimed[2::2], claimed[3::2], strict=True)),
                                    known={members[i].encode(): jobs[i][1] for i in mine}))
            elif claimed and int(claimed[0]) == 2:
                busy.append(pid)
            if isinstance(ticket, Exception) and not self._ticket_elsewhere(pid, ticket):
                self._take_back(pid, [(jobs[i][1], members[i]) for i in mine if stored[i] == 1])
                for i in mine:
                    if stored[i] == 1:
                        stored[i] = RuntimeError("no ticket")
        if measured:
            self.backlog.note(sum(x for x in [next(results) for _ in range(2 * len(measured))]
                                  if isinstance(x, int)))
        if busy:
            self.tickets(busy)
        replicated = True
        if waits and self.wait is not None and not self.wait.acknowledged(list(results)):
            replicated = False
            metrics.REDIS_ERRORS.labels("line_wait").inc()
            logs.event(log, "accept_not_replicated", logging.WARNING, events=len(jobs),
                       refused=self.refuse_unreplicated)
        return Accepted([None if isinstance(r, Exception) else bool(r) for r in stored],
                        claims, replicated)

    def tickets(self, pids: list[str]) -> list[str]:
        """A ticket for each person, in their shard or the first other that takes it; the
        people who got one. The one way to write tickets outside the webhook's own round
        trip: for people someone else has locked (a drainer answers what arrived meanwhile,
        another holder — a staff answer being relayed — does not: a ticket makes sure), a
        claim given back, a ticket the webhook's round trip failed to write, and the sweep.
        By shard: people of one shard share their order of shards (`Shards.for_writing`), so
        theirs are one pipeline to one slot, whose failure says which shard is down
        (`Shards.failed`: tried last by the next writes). When no shard takes a group, the
        rest are not tried against a Redis that is down (a timeout each): their due entries
        still bring their events back."""
        groups: dict[str, list[str]] = {}
        for pid in pids:
            groups.setdefault(self.shards.of(pid), []).append(pid)
        done: list[str] = []
        for group in groups.values():
            try:
                self.shards.write_first(group[0], lambda name, g=group: self._write(name, g),
                                        errors=REDIS_ERRORS)
            except REDIS_ERRORS as exc:
                logs.event(log, "ticket_failed", logging.WARNING, error=type(exc).__name__,
                           people=len(pids) - len(done))
                break
            done += group
        return done

    def _write(self, stream: str, pids: list[str]) -> list[Any]:
        """One ticket per person in `stream`, in one round trip (one slot: one node)."""
        pipe = self.redis.pipeline(transaction=False)
        for pid in pids:
            pipe.xadd(stream, {"p": pid})
        return pipe.execute()

    def due(self, pid: str) -> str:
        """The due set of a person's events: on a cluster a spread one on their node, else
        (one Redis, or no spread set on that node) their shard's."""
        if self.spread_dues:
            near = beside(self.redis, self.marks(pid), self.spread_dues,
                          shard_of(pid, len(self.spread_dues)))
            if near is not None:
                return near
        return self._dues[self.shards.of(pid)]

    def _due_elsewhere(self, pid: str, entries: dict[str, int], failed: str | None = None,
                       error: Exception | None = None) -> None:
        """The due set `failed` (by default the person's, `due`) did not take the entries
        (`error`): keep them in a shard's due set, in `for_writing` order — the person's own
        shard's first: on a cluster `failed` is a spread set on the person's node, and their
        shard is usually on another, live one. A shard's due set shares its stream's slot, so
        a shard found unreachable is marked for both (`Shards.failed`). If none takes them,
        the events are still answered — by this process's claim or by the person's lock
        holder — but not recovered if that process dies before answering."""
        failed = failed or self.due(pid)
        tried = {name for name in self.shards if due_key(name) == failed}
        if isinstance(error, UNAVAILABLE):
            for name in tried:
                self.shards.failed(name)
        try:
            self.shards.write_first(pid, lambda name: self.redis.zadd(due_key(name), entries),
                                    skip=tried, errors=REDIS_ERRORS)
        except REDIS_ERRORS:
            logs.event(log, "accept_no_due_entry", logging.ERROR, pid=pid[:16])

    def _ticket_elsewhere(self, pid: str, error: Exception | None = None) -> bool:
        """The ticket's write to the person's shard failed (`error`): that shard marked when
        unreachable (so it is tried last), the ticket written by `tickets`. False: no shard
        took it."""
        if isinstance(error, UNAVAILABLE):
            self.shards.failed(self.shards.of(pid))
        return bool(self.tickets([pid]))

    def _take_back(self, pid: str, jobs: list[tuple[Job, str]]) -> None:
        """No shard took the ticket: remove the inbox entries just written (best effort), so
        the degraded answer is the only one; if this fails too, the entries are answered late
        with the person's next event."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for job, member in jobs:
                pipe.zrem(self.inbox(pid), member)
                pipe.zrem(self.marks(pid), f"s{job.event_id}")
            pipe.execute()
        except redis.RedisError as exc:
            logs.event(log, "accept_take_back_failed", logging.ERROR, pid=pid[:16],
                       error=type(exc).__name__)


class Dispatcher:
    """Answers queued LINE events. Threads share one LineApi and one compiled engine."""

    def __init__(self, queue: LineQueue, conversations: Conversation, api: LineSender,
                 sealer: Sealer, clock: Callable[[], datetime],
                 threads: int = ANSWERING_THREADS, reclaim_idle_ms: int = 30_000,
                 block_ms: int = 1000, job_tries: int = JOB_TRIES, hands_over: bool = True,
                 readers: int | None = None):
        self.queue = queue
        # Stopping, work this process has no time for goes to another one (a claim given
        # back, a ticket passed on). Not with a Redis that lives in this process (`make
        # run`): it goes when the process does — there, answer all there is time for.
        self.hands_over = hands_over
        self.conversations = conversations
        self.engine = conversations.engine
        self.api = api
        self.sealer = sealer
        self.clock = clock
        self.threads = threads
        # Ticket readers (each blocks on XREADGROUP and drains what it reads): as many as the
        # answering threads unless told otherwise — tickets carry a spike another process
        # could not take, and a drain waits out LINE calls too.
        self.readers = threads if readers is None else readers
        self.reclaim_idle_ms = reclaim_idle_ms
        self.block_ms = block_ms
        self.job_tries = job_tries
        self.consumer = default_consumer()
        self._stop = threading.Event()
        self._stop_by = 0.0  # stopping: when the answers must be done (`_start_claim`)
        self._workers: list[threading.Thread] = []
        self._pool: Workers | None = None
        self._sweep = threading.Lock()
        self._swept_at = 0.0

    def start(self) -> None:
        # On a cluster each shard needs a thread blocking on it (bot.streams).
        threads = max(self.readers, len(self.queue.shards) if is_cluster(self.queue.redis)
                      else 1)
        self._pool = Workers("line-answer", self.threads, self.threads * CLAIMS_PER_THREAD)
        for i in range(threads):
            consumer = self.queue.consumer(self.consumer, home=i)
            t = threading.Thread(target=self._run, args=(consumer,), name=f"line-dispatch-{i}",
                                 daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 5.0) -> bool:
        """Take no new work and let the answers under way finish, waiting `timeout` in all.
        Returns whether every thread of this dispatcher has ended (False: some answer still
        runs — whatever it uses, the LINE HTTP pool, must then stay open).

        The loops end after their current pass: tickets already read are drained, no new
        read starts, and a read under way that returns tickets passes them on
        (`_pass_on`). Claims in the pool run, the running ones and those still waiting
        alike, within the budget (one not begun STOP_MARGIN_S before the deadline is given
        back instead, `_start_claim`): a claim dropped here would keep its person's lock until it
        expired (~30 s), their event coming back only with its due entry ~35 s later, and
        their new messages meanwhile left to the lock's (absent) holder. What still waits at
        the deadline is taken out of the pool and given back (`_give_back`: lock released,
        ticket written), so another process answers it now; that costs one round trip per
        claim, after the deadline, and stops at GIVE_BACK_S (a claim not given back is still
        answered by its due entry, as a retry). Whoever closes what the answers use must
        come after this.
        """
        deadline = time.monotonic() + timeout
        self._stop_by = deadline
        self._stop.set()
        ended = True
        if self._pool is not None:
            ended = self._pool.finish(timeout)
            # Also after an early end: a webhook's claim offered just as the pool stopped
            # may sit behind the threads' wake-ups, which no thread reads.
            self._give_back_all([args[0] for _, args in self._pool.take_waiting()])
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        return ended and not any(t.is_alive() for t in self._workers)

    def _give_back_all(self, claims: list[Claim]) -> None:
        """Give back claims never started (the pool refused them, or stopping), best effort:
        each failure is logged and its due entry answers it later; at most GIVE_BACK_S in all
        — after a timeout (Redis slow) the rest are not tried, a timeout each."""
        if not claims:
            return
        until = time.monotonic() + GIVE_BACK_S
        given = 0
        for claim in claims:
            if time.monotonic() > until:
                break
            try:
                self._give_back(claim)
                given += 1
            except Exception as exc:  # Redis down or slow: the due entry still answers it
                logs.failure("line.give_back", exc, pid=claim.pid[:16])
        logs.event(log, "claims_given_back", logging.WARNING, given=given,
                   left=len(claims) - given)

    def can_claim(self) -> bool:
        """Whether this process answers the events it accepts: its threads run and are not
        too far behind (else tickets spread the work over every process)."""
        return self._pool is not None and not self._stop.is_set() and not self._pool.full()

    def answer_claims(self, claims: list[Claim]) -> None:
        """Answer people locked while accepting their events, off the webhook's thread."""
        assert self._pool is not None
        # Too many waiting, or shutting down: the event is answered, just not first in line
        # — by the ticket's drain once the lock is given back. A give-back that fails (Redis
        # slow or down) is left to the due entry; the webhook's events are stored, so it
        # must never reach the webhook, which would answer them again in degraded mode.
        self._give_back_all([claim for claim in claims
                             if not self._pool.offer(self._start_claim, claim)])

    def _give_back(self, claim: Claim) -> None:
        """Undo a claim never started (`_GIVE_BACK`), and a ticket for the dispatchers."""
        marks = [f"t{json.loads(raw)['event_id']}" for raw, tried in claim.taken
                 if tried in (b"0", "0")]
        self.queue.redis.eval(_GIVE_BACK, 2, self.queue.store.key(claim.pid, "lock"),
                              self.queue.marks(claim.pid), claim.token, *marks)
        self.queue.tickets([claim.pid])

    def _start_claim(self, claim: Claim) -> None:
        """A claim's turn in the pool. While stopping, one that could not finish before the
        worker exits is given back rather than begun: cut mid-answer it would hold its
        person's lock until it expired and come back as a retry — said twice if the reply
        had gone out and the retry comes after the reply token's 50 s."""
        if self._cut_short():
            self._give_back_all([claim])
            return
        self._claimed(claim)

    def _cut_short(self) -> bool:
        """Stopping, and too close to the deadline to begin answering (STOP_MARGIN_S)."""
        return self.hands_over and self._stop.is_set() and \
            time.monotonic() > self._stop_by - STOP_MARGIN_S

    def _claimed(self, claim: Claim) -> None:
        try:
            lock_s = self.queue.store.lock_ms / 1000
            if time.monotonic() - claim.at > lock_s / 2:
                deadline = self._renew(claim.pid, claim.token)  # waited long: still ours?
            else:
                deadline = claim.at + lock_s * 0.8
            session = Session.loads(claim.session) if claim.session else None
            self._answer_taken(claim.pid, claim.token, session, claim.taken, None, deadline,
                               claim.known)
        except (DeliveryPending, LockTimeout):
            logs.event(log, "delivery_pending", logging.WARNING, pid=claim.pid[:16])
        except UNAVAILABLE as exc:
            self.conversations.outage("line_dispatch", exc)
        except Exception as exc:
            logs.failure("line.claim", exc, pid=claim.pid[:16])

    def sweep(self, now_ms: int | None = None) -> int:
        """Turn overdue due entries into tickets (their process died, or LINE was down).
        Shard by shard: one whose primary is down is left alone between tries, as its
        readers do (`Shards.due`), and does not hold up the others."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        shards, swept = self.queue.shards, 0
        for name in shards:
            _, n = shards.attempt(name, lambda s=name: self._sweep_shard(s, now_ms))
            swept += n if isinstance(n, int) else 0
        for key in self.queue.spread_dues:  # left alone by node (a down one holds several)
            _, n = shards.attempt(place(self.queue.redis, key),
                                  lambda k=key: self._sweep_spread(k, now_ms))
            swept += n or 0
        if swept:
            logs.event(log, "due_swept", logging.WARNING, events=swept)
        return swept

    def _sweep_shard(self, name: str, now_ms: int) -> Any:
        pipe = self.queue.redis.pipeline(transaction=False)
        script(pipe, _SWEEP, [due_key(name), name], now_ms, SWEEP_BATCH)
        return pipe.execute(raise_on_error=False)[0]

    def _sweep_spread(self, key: str, now_ms: int) -> int:
        """`_SWEEP` for a spread due set, whose people's shards are in other slots (no one
        script can write both). Every process sweeps every second: the overdue entries are
        first leased, atomically in the due set's slot (`_LEASE`), so a sweep running
        elsewhere meanwhile does not take them too — one ticket per person. Then the tickets
        (one per person), then the entries that got one removed. An entry whose ticket was
        not written keeps its leased score and comes back after the lease; a sweep cut
        anywhere leaves at worst a second ticket (its drain finds nothing left), never an
        event with neither."""
        client = self.queue.redis
        late = client.eval(_LEASE, 1, key, now_ms, now_ms + SWEEP_LEASE_MS, SWEEP_BATCH)
        people: dict[str, list[Any]] = {}
        for member in late or []:
            text = member.decode() if isinstance(member, bytes) else member
            people.setdefault(text.split("|", 1)[0], []).append(member)
        ticketed = self.queue.tickets(list(people))
        done = [member for pid in ticketed for member in people[pid]]
        if done:
            client.zrem(key, *done)
        return len(done)

    def _sweep_if_due(self) -> None:
        if time.monotonic() - self._swept_at < SWEEP_EVERY_S or \
                not self._sweep.acquire(blocking=False):
            return
        try:
            self._swept_at = time.monotonic()
            self.sweep()
        finally:
            self._sweep.release()

    def _run(self, consumer: StreamConsumer) -> None:
        last_reclaim = last_followup = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self.reclaim(consumer)
                if time.monotonic() - last_followup > FOLLOWUP_EVERY_S:
                    last_followup = time.monotonic()
                    self.send_followups()
                self._sweep_if_due()
                if not self._stop.is_set():  # stopping: read no new tickets
                    self.poll_once(consumer)
            except UNAVAILABLE as exc:
                consumer.lost()
                self.conversations.outage("line_dispatch", exc)
                self._stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (restart without data)
                    consumer.lost()
                else:
                    logs.failure("line.dispatch", exc)
                self._stop.wait(0.2)
            except Exception as exc:
                logs.failure("line.dispatch", exc)
                self._stop.wait(0.5)

    def send_followups(self, now: datetime | None = None) -> int:
        """Push the 3-day follow-ups that are due (bot.followup); leases keep threads and
        processes from sending one twice."""
        followups = getattr(self.conversations, "followups", None)
        if followups is None:
            return 0

        def push(user_id: str, event_id: str, messages: list[dict]) -> str:
            return self.api.deliver(user_id, event_id, None, 0.0, messages)

        return followups.send_due(self.engine, push, line_messages, now or self.clock(),
                                  figures=getattr(self.conversations, "figures", None))

    def poll_once(self, consumer: StreamConsumer | None = None) -> int:
        consumer = consumer or self.queue.consumer(self.consumer)
        entries = consumer.read(count=8, block_ms=self.block_ms)
        if entries and self._stop.is_set() and self.hands_over:
            self._pass_on(consumer, entries)
            return len(entries)
        for entry in entries:
            self._ticket(entry)
        return len(entries)

    def _pass_on(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        """Tickets a read returned once this dispatcher was stopping (the read was blocked
        when `stop` began): written again for another process — or this worker's
        successor — and acknowledged here, rather than drained by a process that is exiting
        and may be cut mid-answer, its lock then held until it expires. Among them the
        tickets of claims `stop` gave back, which would otherwise come straight back here.
        Written (`LineQueue.tickets`) before acknowledged: cut in between, a second ticket
        (its drain finds nothing). A ticket not written again stays pending, reclaimed by
        another process after `reclaim_idle_ms`."""
        written = set(self.queue.tickets([e.fields["p"] for e in entries if e.fields.get("p")]))
        done = [(e.stream, e.id) for e in entries
                if not e.fields.get("p") or e.fields["p"] in written]
        try:
            if done:
                consumer.ack(done)
        except REDIS_ERRORS as exc:  # left pending: a second ticket, its drain finds nothing
            logs.event(log, "tickets_not_acknowledged", logging.WARNING,
                       error=type(exc).__name__, tickets=len(done))

    def reclaim(self, consumer: StreamConsumer | None = None) -> int:
        """Take over tickets a dead dispatcher read but never acknowledged."""
        consumer = consumer or self.queue.consumer(self.consumer)
        entries = consumer.reclaim(self.reclaim_idle_ms, count=16)
        for entry in entries:
            self._ticket(entry)
        return len(entries)

    def _ticket(self, entry: Entry) -> None:
        pid = entry.fields.get("p", "")
        if not pid:  # not a ticket (or deleted while pending): nothing to answer
            self.queue.consumer(self.consumer).ack([(entry.stream, entry.id)])
            return
        try:
            self.drain(pid, ack=(entry.stream, entry.id))
        except (DeliveryPending, LockTimeout):
            # Left unacknowledged: reclaimed and retried after `reclaim_idle_ms`.
            logs.event(log, "delivery_pending", logging.WARNING, pid=pid[:16])

    def _deadline(self) -> float:
        """When an answer must be out: well before the person's lock expires."""
        return time.monotonic() + self.queue.store.lock_ms / 1000 * 0.8

    def drain(self, pid: str, ack: tuple[str, str] | None = None) -> int:
        """Answer every queued event of one person, oldest first, under their lock.

        Args:
            pid: the person's pseudonym (their inbox and lock share its hash tag).
            ack: the stream ticket to acknowledge once the inbox is empty.

        Returns:
            How many events were taken from the inbox (answered or parked).

        Raises:
            DeliveryPending: LINE did not take an answer; that job and later ones stay in
                the inbox, the ticket unacknowledged (reclaimed later). LockTimeout: the
                person's lock is held, or was lost during the drain. Redis errors propagate.

        Ordering: lock, session, inbox and the "being answered" marks travel in one round
        trip; each answer is committed with the removal of its job, after its delivery;
        before each further job the lock is renewed (lost → stop). No delivery runs past the
        lock (`LineApi.deliver` deadline). A job failing with an unexpected error is skipped
        — later events, a crisis answer included, are answered — and parked after
        `job_tries` failures, the person then getting the degraded answer.
        """
        store = self.queue.store
        token = drainer_token()
        session, (taken, *_) = store.lock_and_load(pid, token,
                                                   also=lambda p: self._take(p, pid, token))
        try:
            pairs = list(zip(taken[0::2], taken[1::2], strict=True))
        except BaseException:
            store.commit(pid, Turn(session=None), token)
            raise
        return self._answer_taken(pid, token, session, pairs, ack, self._deadline())

    def _take(self, pipe: Any, pid: str, token: str) -> None:
        script(pipe, _TAKE, [self.queue.inbox(pid), self.queue.marks(pid),
                             self.queue.store.key(pid, "lock")],
               call_stamp(), MARKS_TTL_MS, token)
        if self.queue.wait is not None:
            # The "being answered" marks reach a replica before anything is sent: after a
            # failover the retry knows to check, so nothing is said twice.
            self.queue.wait.add(pipe, [self.queue.inbox(pid)])

    def _answer_taken(self, pid: str, token: str, session: Session | None,
                      pairs: list[tuple[Any, Any]], ack: tuple[str, str] | None,
                      deadline: float, known: dict[bytes, Job] | None = None) -> int:
        """Answer the jobs taken under our lock, in order; then release the lock — or, when
        events arrived meanwhile, take and answer those too (see _FINISH). `known`: jobs
        this process sealed itself, by inbox member (not opened again)."""
        store, inbox = self.queue.store, self.queue.inbox(pid)
        turn = Turn(session=session)
        done = 0
        try:
            for rounds in range(MAX_ROUNDS + 1):
                left = 0
                for index, (raw, tried) in enumerate(pairs):
                    if index:
                        deadline = self._renew(pid, token)
                    job = known.get(raw) if known else None
                    job = job or self.queue.open(raw)
                    remove = True
                    try:
                        if job is None:  # sealed with a key no longer configured
                            logs.event(log, "job_unreadable", logging.ERROR, pid=pid[:16])
                        else:
                            self._answer(pid, turn, job, retrying=tried in (b"1", "1"),
                                         deadline=deadline)
                    except (DeliveryPending, LockTimeout, redis.RedisError):
                        raise
                    except Exception as exc:
                        logs.failure("line.job", exc, pid=pid[:16])
                        assert job is not None
                        turn.changed = False
                        remove = self._failed(pid, job, deadline)
                        left += 0 if remove else 1
                    done += remove
                    answered = self._due_member(pid, raw, job) if remove else None
                    if index < len(pairs) - 1:
                        store.commit(pid, turn, None, done=(inbox, raw) if remove else None,
                                     also=lambda p, a=answered: self._unlist(p, pid, a))
                        turn.changed = False
                # A ticket is acknowledged only with the last job removed (and not while a
                # failed one waits for its retry, which the ticket's reclaim brings).
                last = pairs[-1][0] if pairs and remove else None
                answered = self._due_member(pid, last, job) if last is not None else None
                cut = self._cut_short()
                more = self._finish(pid, turn, token, last, answered, None if left else ack,
                                    force=rounds == MAX_ROUNDS or cut)
                if more is None:
                    if cut:  # what arrived meanwhile: to another process, now
                        self.queue.tickets([pid])
                    return done
                ack = None if not left else ack
                pairs, deadline = more, self._deadline()  # _FINISH renewed the lock
        except BaseException:
            store.commit(pid, Turn(session=None), token)
            raise
        return done

    @staticmethod
    def _due_member(pid: str, raw: Any, job: Job | None) -> str:
        if job is not None:
            return due_member(pid, job.event_id)
        text = raw.decode() if isinstance(raw, bytes) else raw
        return due_member(pid, json.loads(text)["event_id"])

    def _unlist(self, pipe: Any, pid: str, member: str | None) -> None:
        if member is not None:
            pipe.zrem(self.queue.due(pid), member)

    def _finish(self, pid: str, turn: Turn, token: str, raw: Any, member: str | None,
                ack: tuple[str, str] | None,
                force: bool = False) -> list[tuple[Any, Any]] | None:
        """Save, remove the last job, acknowledge, and release — or, when events arrived
        meanwhile, keep the lock and return them, taken (answer those too). `force` (too
        many rounds): let go anyway — what arrived is answered by its due entry."""
        store = self.queue.store
        pipe = self.queue.redis.pipeline(transaction=False)
        blob = ""
        if turn.changed:
            if turn.session is None:
                store.forget(pipe, pid)
            else:
                blob = turn.session.dumps()
        at = len(pipe)  # _FINISH's result comes after whatever `forget` queued
        script(pipe, _FINISH, [store.key(pid, "session"), store.key(pid, "lock"),
                               self.queue.inbox(pid), self.queue.marks(pid)],
               blob, store.ttl, token, raw or "", "1" if force else "",
               call_stamp(), MARKS_TTL_MS, store.lock_ms)
        self._unlist(pipe, pid, member)
        self._ack(pipe, ack)
        for write in turn.writes:
            write(pipe)
        turn.writes.clear()
        turn.changed = False
        result = pipe.execute()[at]
        if int(result[0]) == 1:
            return None
        self._replicate(pid)
        return list(zip(result[1::2], result[2::2], strict=True))

    def _replicate(self, pid: str) -> None:
        """Marks of jobs `_finish` took reach a replica before anything is sent (see _take).
        A round trip of its own, only then: in the common case (nothing new arrived) the
        finish itself needs no WAIT — its answer is out, and a finish a failover loses
        leaves the job marked as being answered, so its due entry brings it back as a retry
        (`LineApi.deliver`): within the reply token's life (50 s) LINE refuses the used token
        — said once; a retry later than that (a slow failover, a long PERSON_LOCK_MS) can
        only push, whose retry key the first reply never used — said twice at worst, never
        lost. The price of not waiting on every answer: README, "Durable 200"."""
        if self.queue.wait is None:
            return
        pipe = self.queue.redis.pipeline(transaction=False)
        # WAIT counts the writes of its own connection, which need not be the one `_FINISH`
        # used: a write of the same slot first, on this one — replicated in order, so waiting
        # for it waits for the marks too.
        pipe.pexpire(self.queue.marks(pid), MARKS_TTL_MS)
        if self.queue.wait.add(pipe, [self.queue.inbox(pid)]):
            pipe.execute()

    def _renew(self, pid: str, token: str) -> float:
        lock_ms = self.queue.store.lock_ms
        if not self.queue.redis.eval(_RENEW, 1, self.queue.store.key(pid, "lock"), token,
                                     lock_ms):
            raise LockTimeout(pid)
        return self._deadline()

    def _ack(self, pipe: Any, entry: tuple[str, str] | None) -> None:
        if entry is not None:
            self.queue.consumer(self.consumer).ack([entry], pipe)

    def _failed(self, pid: str, job: Job, deadline: float) -> bool:
        """An unexpected failure answering `job`: count it; park the job (True: remove it
        from the inbox) after `job_tries`, answering in degraded mode instead."""
        key = self.queue.store.key(pid, "line:fail")
        pipe = self.queue.redis.pipeline(transaction=True)
        pipe.hincrby(key, job.event_id, 1)
        pipe.expire(key, INBOX_TTL_S)
        tries, _ = pipe.execute()
        if int(tries) < self.job_tries:
            return False
        self.queue.redis.hdel(key, job.event_id)
        JOBS_PARKED.inc()
        logs.event(log, "job_parked", logging.ERROR, pid=pid[:16], tries=int(tries))
        user_id = job.address(self.sealer)
        if user_id is not None and job.kind != "unfollow":
            try:
                answer_degraded(self.conversations, self.api, pid, user_id, job, deadline)
            except Exception as again:
                logs.failure("line.job_parked_answer", again, pid=pid[:16])
        return True

    def _answer(self, pid: str, turn: Turn, job: Job, retrying: bool = False,
                deadline: float | None = None) -> None:
        user_id = job.address(self.sealer)
        if job.kind == "unfollow" or user_id is None:
            self.conversations.forget(pid, turn)
            logs.event(log, "unfollow" if user_id else "unreadable_address", pid=pid[:16])
            return
        now = self.clock()
        age_s = max(0.0, now.timestamp() - job.timestamp_ms / 1000)
        if age_s > 2.0:
            self.api.show_loading(user_id, deadline=deadline)
        event = Event(channel="line", pid=pid, incoming=job.incoming(), event_id=job.event_id,
                      address=user_id, received=job.timestamp_ms / 1000)

        def deliver(step: Any) -> str:
            lang = (step.session or turn.session or self.engine.new_session()).lang
            return self.api.deliver(user_id, job.event_id, job.reply_token, age_s,
                                    line_messages(self.engine, step.replies, lang),
                                    retrying=retrying, deadline=deadline)

        self.conversations.process(event, turn, deliver)


def line_messages(engine: Any, replies: list, lang: str) -> list[dict]:
    pack = engine.pack
    return render_once(replies, pack.msg("web.call", lang), pack.msg("web.open_site", lang),
                       pack.msg("wrong_number.button", lang))


def answer_degraded(conversations: Conversation, api: LineSender, pid: str, user_id: str,
                    job: Job, deadline: float | None = None) -> None:
    """Answer one event without stored state (Redis down, or the job is parked): crisis
    lines, the 24-hour lines and the list, through the same `process` as every answer."""
    engine = conversations.engine
    event = Event(channel="line", pid=pid, incoming=job.incoming(), event_id=job.event_id,
                  address=user_id, received=job.timestamp_ms / 1000)

    def deliver(step: Any) -> str:
        return api.deliver(user_id, job.event_id, job.reply_token, 0.0,
                           line_messages(engine, step.replies, "ja"), deadline=deadline)

    conversations.process(event, None, deliver)
