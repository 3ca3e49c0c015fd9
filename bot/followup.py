"""The 3-day follow-up: one LINE push asking whether the resident got through, only to people
who said yes to it, never to someone who blocked the account or deleted their data.

  <prefix>:{<pid>}:followup          JSON {a: sealed LINE address, d: due (epoch s), l: lang},
                                     expires a day after it is due; the source of truth: no key,
                                     no message (deleted by the forget command and by unfollow)
  <prefix>:{followup:<shard>}:due    ZSET pid → due time; 16 shards so a Redis Cluster spreads
                                     them and no key grows without bound

Scheduling and cancelling ride in the pipeline that saves the session (no extra round trip).
Sending: a sender claims due entries by pushing their score forward (a lease, Lua on one
shard), pushes with an X-Line-Retry-Key derived from the person and the due time, and then
deletes both keys. A sender that dies mid-way leaves the lease to run out; the next one pushes
again with the same retry key, which LINE refuses as a duplicate: one message, at most.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis

from bot import logs
from bot.crypto import Sealer
from bot.figures import TOKYO

if TYPE_CHECKING:
    from bot.engine import Engine, Step
    from bot.figures import Figures
    from bot.ports import Event
    from bot.session import Session

log = logs.get("followup")
SHARDS = 16
AFTER_DAYS = 3
HOUR = 12                  # around noon, Tokyo time: daytime, and not at work's start
SPREAD_MIN = 60            # spread over an hour, so a busy day's pushes do not all leave at once
LEASE_S = 300
KEEP_AFTER_DUE_S = 24 * 3600
OPT_IN = ("followup", "yes")  # the session answer that asks for it (bot/flows/handbook.yaml)
ASK_STATE = "followup_ask"

# Claim up to ARGV[3] entries due by ARGV[1]: move their score to ARGV[2] (the lease's end).
_CLAIM = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, pid in ipairs(due) do redis.call('zadd', KEYS[1], ARGV[2], pid) end
return due
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Followups:
    def __init__(self, client: redis.Redis, prefix: str, sealer: Sealer,
                 shards: int = SHARDS):
        self.redis = client
        self.prefix = prefix
        self.sealer = sealer
        self.shards = shards

    def key(self, pid: str) -> str:
        return f"{self.prefix}:{{{pid}}}:followup"

    def shard_key(self, pid: str) -> str:
        shard = int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16) % self.shards
        return self.due_key(shard)

    def due_key(self, shard: int) -> str:
        return f"{self.prefix}:{{followup:{shard}}}:due"

    @staticmethod
    def due_at(pid: str, now: datetime) -> datetime:
        """Three days later, around noon in Tokyo (spread over an hour by person)."""
        day = now.astimezone(TOKYO).date() + timedelta(days=AFTER_DAYS)
        minute = int(hashlib.sha256(pid.encode()).hexdigest()[:4], 16) % SPREAD_MIN
        return datetime(day.year, day.month, day.day, HOUR, tzinfo=TOKYO) + timedelta(
            minutes=minute)

    # -- in the conversation's save --------------------------------------------------------
    def writes_for(self, event: Event, before: Session | None, step: Step,
                   now: datetime) -> Callable[[Any], None] | None:
        """Schedule on a new opt-in (LINE, with an address); cancel on the forget command."""
        if step.forget:
            return self.cancel_writes(event.pid)
        session = step.session
        if (event.channel != "line" or not event.address or session is None
                or session.answers.get(OPT_IN[0]) != OPT_IN[1]
                or (before is not None and before.answers.get(OPT_IN[0]) == OPT_IN[1])):
            return None
        due = self.due_at(event.pid, now).timestamp()
        record = json.dumps({"a": self.sealer.seal(event.address), "d": int(due),
                             "l": session.lang}, separators=(",", ":"))
        ttl = max(60, int(due - now.timestamp()) + KEEP_AFTER_DUE_S)
        pid = event.pid

        def schedule(pipe: Any) -> None:
            pipe.set(self.key(pid), record, ex=ttl)
            pipe.zadd(self.shard_key(pid), {pid: due})
        return schedule

    def cancel_writes(self, pid: str) -> Callable[[Any], None]:
        def cancel(pipe: Any) -> None:
            pipe.delete(self.key(pid))
            pipe.zrem(self.shard_key(pid), pid)
        return cancel

    # -- sending (the LINE dispatcher's loop) ----------------------------------------------
    def send_due(self, engine: Engine, push: Callable[[str, str, list], str],
                 render: Callable[[Engine, list, str], list[dict]], now: datetime,
                 figures: Figures | None = None, limit: int = 20) -> int:
        """Push every due follow-up once; return how many were sent.

        `push(user_id, event_id, messages)` sends (and raises when LINE does not take it: the
        lease runs out and it is tried again with the same retry key).
        """
        sent = 0
        stamp = now.timestamp()
        for shard in range(self.shards):
            due_key = self.due_key(shard)
            pids = [_text(p) for p in self.redis.eval(_CLAIM, 1, due_key, stamp,
                                                      stamp + LEASE_S, limit)]
            for pid in pids:
                raw = self.redis.get(self.key(pid))
                record = json.loads(raw) if raw else None
                address = self.sealer.open(record["a"]) if record else None
                if record is None or address is None:
                    self.redis.zrem(due_key, pid)  # cancelled (unfollow, the forget command)
                    continue
                lang = record.get("l", "ja")
                try:
                    how = push(address, f"followup:{pid}:{record['d']}",
                               render(engine, [engine.entry_question(ASK_STATE, lang)], lang))
                except Exception as exc:  # LINE down: the lease runs out, it is tried again
                    logs.failure("followup.push", exc, logging.WARNING, pid=pid[:16])
                    continue
                pipe = self.redis.pipeline(transaction=False)
                pipe.delete(self.key(pid))
                pipe.zrem(due_key, pid)
                pipe.execute()
                if how != "rejected":
                    sent += 1
                    if figures is not None:
                        figures.count(now, [("followup_sent", "line")])
                logs.event(log, "followup_sent", pid=pid[:16], via=how)
        return sent
