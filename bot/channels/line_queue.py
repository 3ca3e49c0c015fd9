"""Durable LINE events: accepted into Redis before the webhook answers 200, then answered
in order, per person, by dispatcher threads (or the worker process).

  <prefix>:{<pid>}:line:ev                      ZSET of event marks (seen, being answered)
                                                by time, trimmed to 24 h — see _ENQUEUE
  <prefix>:{<pid>}:line:inbox                   ZSET by LINE's timestamp — the person's order;
                                                members {"event_id", "sealed"}: the job (text,
                                                reply token, address) sealed with Fernet, since
                                                it waits here as long as LINE is down
  <prefix>:line:work, <prefix>:line:work:{work-<i>}
                                                STREAM shards of person tickets (bot.streams),
                                                consumer group "line": at-least-once,
                                                reclaimed if a dispatcher dies (XAUTOCLAIM)
  <prefix>:{<pid>}:line:fail                    HASH event id → unexpected failures; a job
                                                failing JOB_TRIES times is parked

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
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from prometheus_client import Counter

from bot import logs, metrics
from bot.channels.line_api import DeliveryPending
from bot.channels.line_events import Job
from bot.channels.line_render import render
from bot.crypto import Sealer
from bot.handoff.worker import default_consumer
from bot.limits import Backlog
from bot.ports import Conversation, Event, LineSender
from bot.redisconn import UNAVAILABLE, ReplicaWait, is_cluster, script
from bot.store import LockTimeout, SessionStore, Turn
from bot.streams import Entry, Shards, StreamConsumer

log = logs.get("line")
GROUP = "line"
FOLLOWUP_EVERY_S = 30.0
SEEN_TTL_S = 24 * 3600
MARKS_TTL_MS = SEEN_TTL_S * 1000
INBOX_TTL_S = 24 * 3600
JOB_TRIES = 3  # a job failing this often with an unexpected error is parked

JOBS_PARKED = Counter("tsunagu_line_jobs_parked", "LINE events given up on after repeated "
                      "unexpected failures (the person got the degraded answer instead)")

# Extend the person's lock if we still hold it (before each further job of a drain): a
# dispatcher whose lock expired must stop, not answer alongside the next one.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

# The person's event marks live in ONE sorted set, <prefix>:{<pid>}:line:ev, scored by when
# they were written: "s<id>" (seen: a redelivery is dropped) and "t<id>" (being answered: a
# retry after a crash checks LINE before sending). Marks older than MARKS_TTL_S are trimmed
# on every write and the key's TTL is renewed, so de-duplication holds for 24 h after an
# event while one small listpack replaces two keys per event.

# Read the person's inbox and mark, for each event, that we are about to answer it; return
# each job with whether it had been marked before (a process died while answering it). Only
# under our lock (it runs right after the lock was tried, in the same pipeline): a try that
# found the lock taken must mark nothing, or its later successful try would take every job
# for a retry after a crash. KEYS: inbox, marks, lock. ARGV: now (ms), marks TTL (ms), token.
_TAKE = """
if redis.call('get', KEYS[3]) ~= ARGV[3] then return {} end
local jobs = redis.call('zrange', KEYS[1], 0, -1)
local out = {}
for i, raw in ipairs(jobs) do
  local id = cjson.decode(raw)['event_id']
  local added = redis.call('zadd', KEYS[2], 'NX', ARGV[1], 't' .. id)
  out[#out + 1] = raw
  out[#out + 1] = added == 0 and '1' or '0'
end
if #jobs > 0 then redis.call('pexpire', KEYS[2], ARGV[2]) end
return out
"""

# ARGV: now (ms), marks TTL (ms), event id, LINE timestamp, inbox member, inbox TTL (s).
_ENQUEUE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('zadd', KEYS[1], 'NX', ARGV[1], 's' .. ARGV[3]) == 1 then
  redis.call('pexpire', KEYS[1], ARGV[2])
  redis.call('zadd', KEYS[2], ARGV[4], ARGV[5])
  redis.call('expire', KEYS[2], ARGV[6])
  return 1
end
return 0
"""


class NotDurable(Exception):
    """No replica acknowledged the accepted events in time (REDIS_WAIT_TIMEOUT=refuse)."""


class LineQueue:
    def __init__(self, client: redis.Redis, store: SessionStore, sealer: Sealer, shards: int = 4,
                 wait: ReplicaWait | None = None, refuse_unreplicated: bool = False,
                 backlog_alert_at: int = 1000):
        self.redis = client
        self.store = store
        self.sealer = sealer
        self.shards = Shards(f"{store.prefix}:line:work", shards)
        self.stream = self.shards.names[0]
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

    def accept(self, jobs: list[tuple[str, Job]]) -> list[bool | None]:
        """Make events durable: one round trip for the whole webhook body (one per node on a
        cluster, in parallel). Per job: True new, False a redelivery, None not stored (Redis
        or that person's primary is down: answer it in degraded mode).

        With replicas, the round trip ends with WAIT on every primary written; too few
        acknowledgements raise NotDurable when `refuse_unreplicated` (the webhook answers 500
        and LINE redelivers), else are counted and accepted.
        """
        pipe = self.redis.pipeline(transaction=False)
        keys: list[str] = []
        members = [self.seal(job) for _, job in jobs]  # sealing is random: keep what was sent
        now_ms = int(time.time() * 1000)
        for (pid, job), member in zip(jobs, members, strict=True):
            marks = self.marks(pid)
            script(pipe, _ENQUEUE, [marks, self.inbox(pid)], now_ms, MARKS_TTL_MS,
                   job.event_id, job.timestamp_ms, member, INBOX_TTL_S)
            keys.append(marks)
        pids = list(dict.fromkeys(pid for pid, _ in jobs))
        for pid in pids:
            pipe.xadd(self.shards.of(pid), {"p": pid})
            keys.append(self.shards.of(pid))
        measure = self.backlog.due()
        if measure:  # the backlog alarm watches the whole queue
            for name in self.shards:
                pipe.xlen(name)
        waits = self.wait.add(pipe, keys) if self.wait is not None else 0
        results = pipe.execute(raise_on_error=False)
        if measure:
            first = len(jobs) + len(pids)
            self.backlog.note(sum(n for n in results[first:first + len(self.shards)]
                                  if isinstance(n, int)))
        stored = results[:len(jobs)]
        tickets = dict(zip(pids, results[len(jobs):len(jobs) + len(pids)], strict=True))
        for pid, result in tickets.items():
            if isinstance(result, Exception) and not self._ticket_elsewhere(pid):
                self._take_back(pid, [(job, member) for (p, job), member, r
                                      in zip(jobs, members, stored, strict=True)
                                      if p == pid and r == 1])
                stored = [RuntimeError("no ticket") if p == pid and r == 1 else r
                          for (p, _), r in zip(jobs, stored, strict=True)]
        if waits and self.wait is not None and not self.wait.acknowledged(results[-waits:]):
            metrics.REDIS_ERRORS.labels("line_wait").inc()
            logs.event(log, "accept_not_replicated", logging.WARNING, events=len(jobs),
                       refused=self.refuse_unreplicated)
            if self.refuse_unreplicated:
                raise NotDurable()
        return [None if isinstance(r, Exception) else bool(r) for r in stored]

    def _ticket_elsewhere(self, pid: str) -> bool:
        """The person's shard is down: put the ticket in the first shard that takes it."""
        for name in self.shards.others(self.shards.of(pid)):
            try:
                self.redis.xadd(name, {"p": pid})
                return True
            except redis.RedisError:
                continue
        return False

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
                 sealer: Sealer, clock: Callable[[], datetime], threads: int = 4,
                 reclaim_idle_ms: int = 30_000, block_ms: int = 1000,
                 job_tries: int = JOB_TRIES):
        self.queue = queue
        self.conversations = conversations
        self.engine = conversations.engine
        self.api = api
        self.sealer = sealer
        self.clock = clock
        self.threads = threads
        self.reclaim_idle_ms = reclaim_idle_ms
        self.block_ms = block_ms
        self.job_tries = job_tries
        self.consumer = default_consumer()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        # On a cluster each shard needs a thread blocking on it (bot.streams).
        threads = max(self.threads, len(self.queue.shards) if is_cluster(self.queue.redis)
                      else 1)
        for i in range(threads):
            consumer = self.queue.consumer(self.consumer, home=i)
            t = threading.Thread(target=self._run, args=(consumer,), name=f"line-dispatch-{i}",
                                 daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout)

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
        for entry in entries:
            self._ticket(entry)
        return len(entries)

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
        store, inbox = self.queue.store, self.queue.inbox(pid)
        token = uuid.uuid4().hex
        marks = self.queue.marks(pid)

        def take(pipe: Any) -> None:
            script(pipe, _TAKE, [inbox, marks, store.key(pid, "lock")],
                   int(time.time() * 1000), MARKS_TTL_MS, token)
            if self.queue.wait is not None:
                # The "being answered" marks reach a replica before anything is sent: after a
                # failover the retry knows to check, so nothing is said twice.
                self.queue.wait.add(pipe, [inbox])

        session, (taken, *_) = store.lock_and_load(pid, token, also=take)
        pairs = list(zip(taken[0::2], taken[1::2], strict=True))
        turn = Turn(session=session)
        left = 0
        done = 0
        try:
            deadline = self._deadline()
            for index, (raw, tried) in enumerate(pairs):
                if index:
                    deadline = self._renew(pid, token)
                job = self.queue.open(raw)
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
                last = index == len(pairs) - 1
                finished = last and not left

                def after(pipe: Any, finished: bool = finished) -> None:
                    if finished:  # after the job's removal: a ticket acknowledged early
                        self._ack(pipe, ack)  # could leave a job without one

                store.commit(pid, turn, token if last else None, also=after,
                             done=(inbox, raw) if remove else None)
                turn.changed = False
                done += remove
            if not pairs:
                store.commit(pid, turn, token, also=lambda p: self._ack(p, ack))
        except BaseException:
            store.commit(pid, Turn(session=None), token)
            raise
        return done

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
        user_id = self.sealer.open(job.sealed_user)
        if user_id is not None and job.kind != "unfollow":
            try:
                answer_degraded(self.conversations, self.api, pid, user_id, job, deadline)
            except Exception as again:
                logs.failure("line.job_parked_answer", again, pid=pid[:16])
        return True

    def _answer(self, pid: str, turn: Turn, job: Job, retrying: bool = False,
                deadline: float | None = None) -> None:
        user_id = self.sealer.open(job.sealed_user)
        if job.kind == "unfollow" or user_id is None:
            self.conversations.forget(pid, turn)
            logs.event(log, "unfollow" if user_id else "unreadable_address", pid=pid[:16])
            return
        now = self.clock()
        age_s = max(0.0, now.timestamp() - job.timestamp_ms / 1000)
        if age_s > 2.0:
            self.api.show_loading(user_id)
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
    return render(replies, pack.msg("web.call", lang), pack.msg("web.open_site", lang),
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
