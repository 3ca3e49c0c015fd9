"""The 3-day follow-up: one LINE push asking whether the resident got through, only to people
who said yes to it, never to someone who blocked the account or deleted their data.

  <prefix>:{<pid>}:followup          JSON {a: sealed LINE address, d: due (epoch s), l: lang},
                                     expires a day after it is due; the source of truth: no key,
                                     no message (deleted by the forget command and by unfollow)
  <prefix>:{followup:<shard>}:due    ZSET pid → due time; 16 shards so a Redis Cluster spreads
                                     them and no key grows without bound (an entry without its
                                     record, or due before the record's time, is dropped when
                                     due: the record decides)

Scheduling and cancelling ride in the pipeline that saves the session (no extra round trip);
on a Redis Cluster into a due shard on the person's own node (`shard_key`).
Sending: a sender claims due entries by pushing their score forward (a lease, Lua on one
shard), pushes with an X-Line-Retry-Key derived from the person and the due time, and then
deletes both keys. A sender that dies mid-way leaves the lease to run out; the next one pushes
again with the same retry key, which LINE refuses as a duplicate: one message, at most.

On a Redis Cluster a node whose primary is down costs a timeout (the client's retries) per
command. Senders share one view of which nodes failed (`bot.streams.Outages`, by node, the
same back-off the LINE streams use, paced for a loop that runs every 30 s): a down node's
shards and people are left alone for a pause growing from 30 s to 5 min, tried by one sender
at a time and last in a pass, so the other shards' follow-ups go out on time.
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
from bot.redisconn import UNAVAILABLE, beside, is_cluster, place
from bot.streams import Outages

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
# A node found down is tried again after 30 s (the sending loop's pace), then twice as long
# each time it is still down, up to the lease (5 min); it comes last in a pass meanwhile.
RETRY_S = (30.0, float(LEASE_S))
OPT_IN = ("followup", "yes")  # the session answer that asks for it (bot/flows/handbook.yaml)
ASK_STATE = "followup_ask"

# Claim up to ARGV[3] entries due by ARGV[1]: move their score to ARGV[2] (the lease's end).
# Returns pid, score before the claim, pid, score, …
_CLAIM = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       ARGV[3])
for i = 1, #due, 2 do redis.call('zadd', KEYS[1], ARGV[2], due[i]) end
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
        self.nodes = Outages(RETRY_S, down_for_s=RETRY_S[1])  # nodes found down (a cluster)

    def key(self, pid: str) -> str:
        return f"{self.prefix}:{{{pid}}}:followup"

    def shard_key(self, pid: str) -> str:
        """The due shard a person's follow-up is filed in. On a cluster, one on the node of
        their own keys: scheduling and cancelling ride in the session's pipeline, which then
        touches no other node (a down node must not fail the answers, or the data deletion, of
        people on the others). Else, or when no shard is on that node, one by hash."""
        shard = int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16) % self.shards
        keys = [self.due_key(i) for i in range(self.shards)]
        return beside(self.redis, self.key(pid), keys, shard) or keys[shard]

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
    def _node(self, key: str) -> str | None:
        """Where an outage of `key` counts (`redisconn.place`, its node); None on one Redis:
        its outage is the caller's, who backs off as a whole."""
        return place(self.redis, key) if is_cluster(self.redis) else None

    def _on(self, key: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, what `call` — a command on `key` — returned), or (False, None) when key's
        node is left alone or did not answer (`Outages`): on a cluster one down node costs one
        timeout per pause, not one per shard and person at every pass."""
        node = self._node(key)
        if node is None:
            return True, call()
        return self.nodes.attempt(node, call, lambda exc: logs.event(
            log, "followup_node_down", logging.WARNING, error=type(exc).__name__))

    def send_due(self, engine: Engine, push: Callable[[str, str, list], str],
                 render: Callable[[Engine, list, str], list[dict]], now: datetime,
                 figures: Figures | None = None, limit: int = 20) -> int:
        """Push every due follow-up once; return how many were sent.

        `push(user_id, event_id, messages)` sends (and raises when LINE does not take it: the
        lease runs out and it is tried again with the same retry key). On a cluster, shards on
        a node found down come last and are skipped during its pause; a person whose own keys
        are there waits for their lease to run out (5 min).
        """
        sent = 0
        stamp = now.timestamp()
        keys = [self.due_key(shard) for shard in range(self.shards)]
        nodes = {key: self._node(key) for key in keys}
        keys.sort(key=lambda k: self.nodes.is_down(nodes[k] or ""))  # stable: down ones last
        for due_key in keys:
            ok, claimed = self._on(due_key, lambda k=due_key: self.redis.eval(
                _CLAIM, 1, k, stamp, stamp + LEASE_S, limit))
            claimed = (claimed or []) if ok else []
            for pid, score in zip(claimed[::2], claimed[1::2], strict=True):
                sent += self._send_one(engine, push, render, now, figures, due_key,
                                       _text(pid), float(score))
        return sent

    def _send_one(self, engine: Engine, push: Callable[[str, str, list], str],
                  render: Callable[[Engine, list, str], list[dict]], now: datetime,
                  figures: Figures | None, due_key: str, pid: str, score: float) -> int:
        ok, raw = self._on(self.key(pid), lambda: self.redis.get(self.key(pid)))
        if not ok:
            return 0  # their node is down: the lease runs out, tried again then
        record = json.loads(raw) if raw else None
        address = self.sealer.open(record["a"]) if record else None
        # An entry due before its record's time is stale: an opt-in cancelled, then made
        # again and filed in another shard (the shard by hash before c5f739b, or a slot map
        # that changed) — the record's own entry sends it on its day.
        if record is None or address is None or int(record["d"]) > score:
            self._on(due_key, lambda: self.redis.zrem(due_key, pid))  # cancelled (unfollow,
            return 0                                                 # the forget command)
        lang = record.get("l", "ja")
        try:
            how = push(address, f"followup:{pid}:{record['d']}",
                       render(engine, [engine.entry_question(ASK_STATE, lang)], lang))
        except Exception as exc:  # LINE down: the lease runs out, it is tried again
            logs.failure("followup.push", exc, logging.WARNING, pid=pid[:16])
            return 0
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.key(pid))
            pipe.zrem(due_key, pid)
            pipe.execute()
        except (redis.RedisError, *UNAVAILABLE) as exc:  # any (RedisClusterException is no
            # RedisError): it was sent, and pushed again after the lease with the same retry
            # key (refused by LINE); the rest of the pass goes on.
            logs.failure("followup.done", exc, logging.WARNING, pid=pid[:16])
        logs.event(log, "followup_sent", pid=pid[:16], via=how)
        if how == "rejected":
            return 0
        if figures is not None:
            figures.count(now, [("followup_sent", "line")])
        return 1
