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
  <prefix>:{<pid>}:line:fail                    HASH event id → unexpected failures; a job
                                                failing JOB_TRIES times is parked

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
from prometheus_client import Counter

from bot import logs
from bot.channels.line_api import DeliveryPending
from bot.channels.line_events import Job
from bot.channels.line_render import render
from bot.crypto import Sealer
from bot.handoff.worker import default_consumer
from bot.ports import Conversation, Event, LineSender
from bot.store import LockTimeout, SessionStore, Turn

log = logs.get("line")
GROUP = "line"
FOLLOWUP_EVERY_S = 30.0
SEEN_TTL_S = 24 * 3600
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

    def __init__(self, queue: LineQueue, conversations: Conversation, api: LineSender,
                 sealer: Sealer, clock: Callable[[], datetime], threads: int = 4,
                 reclaim_idle_ms: int = 30_000, block_ms: int = 1000,
                 job_tries: int = JOB_TRIES):
        self.queue = queue
        self.conversations = conversations
        self.engine = conversations.engine  # type: ignore[attr-defined]
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
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"line-dispatch-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout)

    def _run(self) -> None:
        last_reclaim = last_followup = 0.0
        need_group = True
        while not self._stop.is_set():
            try:
                if need_group:  # once, and again only if Redis lost it (restart, NOGROUP)
                    self.queue.ensure_group()
                    need_group = False
                if time.monotonic() - last_reclaim > self.reclaim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    self.reclaim()
                if time.monotonic() - last_followup > FOLLOWUP_EVERY_S:
                    last_followup = time.monotonic()
                    self.send_followups()
                self.poll_once()
            except redis.ResponseError as exc:
                need_group = "NOGROUP" in str(exc)
                if not need_group:
                    logs.failure("line.dispatch", exc)
                self._stop.wait(0.2)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                need_group = True
                self.conversations.outage("line_dispatch", exc)  # type: ignore[attr-defined]
                self._stop.wait(1.0)
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

    def _deadline(self) -> float:
        """When an answer must be out: well before the person's lock expires."""
        return time.monotonic() + self.queue.store.lock_ms / 1000 * 0.8

    def drain(self, pid: str, ack: bytes | None = None) -> int:
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
        tried_prefix = store.key(pid, "line:try:")
        session, (taken,) = store.lock_and_load(
            pid, token, also=lambda p: p.eval(_TAKE, 1, inbox, tried_prefix, SEEN_TTL_S))
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

                def after(pipe: Any, raw: bytes = raw, remove: bool = remove,
                          finished: bool = finished) -> None:
                    if remove:
                        pipe.zrem(inbox, raw)
                    if finished:
                        self._ack(pipe, ack)

                store.commit(pid, turn, token if last else None, also=after)
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

    def _ack(self, pipe: Any, entry_id: bytes | None) -> None:
        if entry_id is not None:
            pipe.xack(self.queue.stream, GROUP, entry_id)
            pipe.xdel(self.queue.stream, entry_id)

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
            self.api.show_loading(user_id)  # type: ignore[attr-defined]
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
    engine = conversations.engine  # type: ignore[attr-defined]
    event = Event(channel="line", pid=pid, incoming=job.incoming(), event_id=job.event_id,
                  address=user_id, received=job.timestamp_ms / 1000)

    def deliver(step: Any) -> str:
        return api.deliver(user_id, job.event_id, job.reply_token, 0.0,
                           line_messages(engine, step.replies, "ja"), deadline=deadline)

    conversations.process(event, None, deliver)
