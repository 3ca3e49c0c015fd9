"""Durable LINE events: accepted into Redis before the webhook answers 200, then answered
in order, per person, by dispatcher threads (or the worker process).

  <prefix>:{<pid>}:line:seen:<webhookEventId>   SET NX EX — a redelivered event is dropped
  <prefix>:{<pid>}:line:inbox                   ZSET by LINE's timestamp — the person's order;
                                                members {"event_id", "sealed"}: the job (text,
                                                reply token, address) sealed with Fernet, since
                                                it waits here as long as LINE is down
  <prefix>:line:work, <prefix>:line:work:{work-<i>}
                                                STREAM shards of person tickets (bot.streams),
                                                consumer group "line": at-least-once,
                                                reclaimed if a dispatcher dies (XAUTOCLAIM)

The seen key and the inbox share the person's hash tag, so one Lua call checks and enqueues
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

from bot import logs, metrics
from bot.channels.line_api import DeliveryPending, LineApi
from bot.channels.line_events import Job
from bot.channels.line_render import render
from bot.crypto import Sealer
from bot.engine import Engine
from bot.handoff.worker import default_consumer
from bot.redisconn import UNAVAILABLE, ReplicaWait, is_cluster, script
from bot.store import LockTimeout, SessionStore, Turn
from bot.streams import Entry, Shards, StreamConsumer

log = logs.get("line")
GROUP = "line"
SEEN_TTL_S = 24 * 3600
INBOX_TTL_S = 24 * 3600

# Read the person's inbox and note, for each event, that we are about to answer it; return
# each job with whether it had been noted before (a process died while answering it).
_TAKE = """
local jobs = redis.call('zrange', KEYS[1], 0, -1)
local out = {}
for i, raw in ipairs(jobs) do
  local id = cjson.decode(raw)['event_id']
  local before = redis.call('set', ARGV[1] .. id, '1', 'NX', 'GET', 'EX', ARGV[2])
  out[#out + 1] = raw
  out[#out + 1] = before and '1' or '0'
end
return out
"""

_ENQUEUE = """
if redis.call('set', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
  redis.call('expire', KEYS[2], ARGV[4])
  return 1
end
return 0
"""


class NotDurable(Exception):
    """No replica acknowledged the accepted events in time (REDIS_WAIT_TIMEOUT=refuse)."""


class LineQueue:
    def __init__(self, client: redis.Redis, store: SessionStore, sealer: Sealer, shards: int = 4,
                 wait: ReplicaWait | None = None, refuse_unreplicated: bool = False):
        self.redis = client
        self.store = store
        self.sealer = sealer
        self.shards = Shards(f"{store.prefix}:line:work", shards)
        self.stream = self.shards.names[0]
        self.wait = wait
        self.refuse_unreplicated = refuse_unreplicated

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
        for (pid, job), member in zip(jobs, members, strict=True):
            seen = self.store.key(pid, f"line:seen:{job.event_id}")
            script(pipe, _ENQUEUE, [seen, self.inbox(pid)], SEEN_TTL_S, job.timestamp_ms,
                   member, INBOX_TTL_S)
            keys.append(seen)
        pids = list(dict.fromkeys(pid for pid, _ in jobs))
        for pid in pids:
            pipe.xadd(self.shards.of(pid), {"p": pid})
            keys.append(self.shards.of(pid))
        waits = self.wait.add(pipe, keys) if self.wait is not None else 0
        results = pipe.execute(raise_on_error=False)
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
                pipe.delete(self.store.key(pid, f"line:seen:{job.event_id}"))
            pipe.execute()
        except redis.RedisError as exc:
            logs.event(log, "accept_take_back_failed", logging.ERROR, pid=pid[:16],
                       error=type(exc).__name__)


class Dispatcher:
    """Answers queued LINE events. Threads share one LineApi and one compiled engine."""

    def __init__(self, queue: LineQueue, engine: Engine, api: LineApi, sealer: Sealer,
                 clock: Callable[[], datetime], threads: int = 4,
                 reclaim_idle_ms: int = 30_000, block_ms: int = 1000,
                 conversations: Any = None):
        self.queue = queue
        self.conversations = conversations  # bot.service.Conversations: handoff hooks
        self.engine = engine
        self.api = api
        self.sealer = sealer
        self.clock = clock
        self.threads = threads
        self.reclaim_idle_ms = reclaim_idle_ms
        self.block_ms = block_ms
        self.consumer = default_consumer()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._outage = logs.Throttle(60.0)

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
        last_reclaim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self.reclaim(consumer)
                self.poll_once(consumer)
            except UNAVAILABLE as exc:
                consumer.lost()
                metrics.REDIS_ERRORS.labels("line_dispatch").inc()
                if self._outage.ready():
                    logs.event(log, "redis_unavailable", logging.WARNING,
                               error=type(exc).__name__)
                self._stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (restart without data)
                    consumer.lost()
                else:
                    log.exception("dispatch_error")
                self._stop.wait(0.2)
            except Exception:
                log.exception("dispatch_error")
                self._stop.wait(0.5)

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

    def drain(self, pid: str, ack: tuple[str, str] | None = None) -> int:
        """Answer every queued event of one person, oldest first, under their lock.

        Lock, session, inbox and the "being answered" marks travel in one round trip; each
        answer is committed with the removal of its job (and, for the last, the unlock).
        """
        store, inbox = self.queue.store, self.queue.inbox(pid)
        token = uuid.uuid4().hex
        tried_prefix = store.key(pid, "line:try:")
        session, (taken,) = store.lock_and_load(
            pid, token, also=lambda p: script(p, _TAKE, [inbox], tried_prefix, SEEN_TTL_S))
        pairs = list(zip(taken[0::2], taken[1::2], strict=True))
        turn = Turn(session=session)
        try:
            for index, (raw, tried) in enumerate(pairs):
                job = self.queue.open(raw)
                if job is not None:
                    self._answer(pid, turn, job, retrying=tried in (b"1", "1"))
                else:
                    logs.event(log, "job_unreadable", logging.ERROR, pid=pid[:16])
                last = index == len(pairs) - 1

                def after(pipe: Any, raw: bytes = raw, last: bool = last) -> None:
                    pipe.zrem(inbox, raw)
                    if last:
                        self._ack(pipe, ack)

                store.commit(pid, turn, token if last else None, also=after)
                turn.changed = False
            if not pairs:
                store.commit(pid, turn, token, also=lambda p: self._ack(p, ack))
        except BaseException:
            store.commit(pid, Turn(session=None), token)
            raise
        return len(pairs)

    def _ack(self, pipe: Any, entry: tuple[str, str] | None) -> None:
        if entry is not None:
            self.queue.consumer(self.consumer).ack([entry], pipe)

    def _answer(self, pid: str, turn: Turn, job: Job, retrying: bool = False) -> None:
        user_id = self.sealer.open(job.sealed_user)
        now = self.clock()
        if job.kind == "unfollow" or user_id is None:
            turn.keep(None)
            if self.conversations is not None and self.conversations.cases is not None:
                self.conversations.cases.delete_for(pid)
            logs.event(log, "unfollow" if user_id else "unreadable_address", pid=pid[:16])
            return
        age_s = max(0.0, now.timestamp() - job.timestamp_ms / 1000)
        if age_s > 2.0:
            self.api.show_loading(user_id)
        before, incoming = turn.session, job.incoming()
        step = self.engine.step(before, incoming, now)
        if self.conversations is not None:
            self.conversations.after_step(pid, "line", user_id, step)
        pack = self.engine.pack
        lang = (step.session or turn.session or self.engine.new_session()).lang
        messages = render(step.replies, pack.msg("web.call", lang), pack.msg("web.open_site", lang))
        how = self.api.deliver(user_id, job.event_id, job.reply_token, age_s, messages,
                               retrying=retrying)
        turn.keep(step.session)
        if self.conversations is not None:
            self.conversations.record(turn, "line", before, step, incoming, now)
        metrics.record_step("line", job.kind, step.events)
        metrics.ANSWERS.labels("line", how).inc()
        metrics.LATENCY.labels("line").observe(max(0.0, self.clock().timestamp()
                                                   - job.timestamp_ms / 1000))
        logs.event(log, "answered", pid=pid[:16], via=how, events=step.events,
                   state=step.session.state if step.session else None,
                   age_ms=round(age_s * 1000))
