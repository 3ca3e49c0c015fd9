"""Durable LINE events: accepted into Redis before the webhook answers 200, then answered
in order, per person, by dispatcher threads (or the worker process).

  <prefix>:{<pid>}:line:seen:<webhookEventId>   SET NX EX — a redelivered event is dropped
  <prefix>:{<pid>}:line:inbox                   ZSET by LINE's timestamp — the person's order;
                                                members {"event_id", "sealed"}: the job (text,
                                                reply token, address) sealed with Fernet, since
                                                it waits here as long as LINE is down
  <prefix>:line:work                            STREAM of person tickets, consumer group
                                                "line": at-least-once, reclaimed if a
                                                dispatcher dies (XAUTOCLAIM)

The seen key and the inbox share the person's hash tag, so one Lua call checks and enqueues
atomically, also on Redis Cluster.
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
from bot.store import LockTimeout, SessionStore, Turn

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


class LineQueue:
    def __init__(self, client: redis.Redis, store: SessionStore, sealer: Sealer):
        self.redis = client
        self.store = store
        self.sealer = sealer
        self.stream = f"{store.prefix}:line:work"

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

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def accept(self, jobs: list[tuple[str, Job]]) -> list[bool]:
        """Make events durable: one round trip for the whole webhook body."""
        pipe = self.redis.pipeline(transaction=False)
        for pid, job in jobs:
            seen = self.store.key(pid, f"line:seen:{job.event_id}")
            pipe.eval(_ENQUEUE, 2, seen, self.inbox(pid), SEEN_TTL_S, job.timestamp_ms,
                      self.seal(job), INBOX_TTL_S)
        for pid in dict.fromkeys(pid for pid, _ in jobs):
            pipe.xadd(self.stream, {"p": pid})
        results = pipe.execute()
        return [bool(r) for r in results[: len(jobs)]]


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
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"line-dispatch-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout)

    def _run(self) -> None:
        last_reclaim = 0.0
        need_group = True
        while not self._stop.is_set():
            try:
                if need_group:  # once, and again only if Redis lost it (restart, NOGROUP)
                    self.queue.ensure_group()
                    need_group = False
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self.reclaim()
                self.poll_once()
            except redis.ResponseError as exc:
                need_group = "NOGROUP" in str(exc)
                if not need_group:
                    log.exception("dispatch_error")
                self._stop.wait(0.2)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                need_group = True
                metrics.REDIS_ERRORS.labels("line_dispatch").inc()
                if self._outage.ready():
                    logs.event(log, "redis_unavailable", logging.WARNING,
                               error=type(exc).__name__)
                self._stop.wait(1.0)
            except Exception:
                log.exception("dispatch_error")
                self._stop.wait(0.5)

    def poll_once(self) -> int:
        got = self.queue.redis.xreadgroup(GROUP, self.consumer, {self.queue.stream: ">"},
                                          count=8, block=self.block_ms)
        handled = 0
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self._ticket(entry_id, fields)
                handled += 1
        return handled

    def reclaim(self) -> int:
        """Take over tickets a dead dispatcher read but never acknowledged."""
        _next, entries, *_ = self.queue.redis.xautoclaim(
            self.queue.stream, GROUP, self.consumer, min_idle_time=self.reclaim_idle_ms,
            start_id="0-0", count=16)
        for entry_id, fields in entries:
            if fields:
                self._ticket(entry_id, fields)
        return len(entries)

    def _ticket(self, entry_id: bytes, fields: dict) -> None:
        raw = fields.get(b"p", fields.get("p", b""))
        pid = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            self.drain(pid, ack=entry_id)
        except (DeliveryPending, LockTimeout):
            # Left unacknowledged: reclaimed and retried after `reclaim_idle_ms`.
            logs.event(log, "delivery_pending", logging.WARNING, pid=pid[:16])

    def drain(self, pid: str, ack: bytes | None = None) -> int:
        """Answer every queued event of one person, oldest first, under their lock.

        Lock, session, inbox and the "being answered" marks travel in one round trip; each
        answer is committed with the removal of its job (and, for the last, the unlock).
        """
        store, inbox = self.queue.store, self.queue.inbox(pid)
        token = uuid.uuid4().hex
        tried_prefix = store.key(pid, "line:try:")
        session, (taken,) = store.lock_and_load(
            pid, token, also=lambda p: p.eval(_TAKE, 1, inbox, tried_prefix, SEEN_TTL_S))
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

    def _ack(self, pipe, entry_id: bytes | None) -> None:
        if entry_id is not None:
            pipe.xack(self.queue.stream, GROUP, entry_id)
            pipe.xdel(self.queue.stream, entry_id)

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
