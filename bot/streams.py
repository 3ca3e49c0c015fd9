"""One stream consumer for every queue: read, claim, reclaim, acknowledge.

A queue is N Redis Streams ("shards"), each under a hash tag of its own, so on a Redis
Cluster no single slot (node) carries every event and one primary failing over stops only
its shards. Shard 0 keeps the queue's old single-stream name, so entries left there by an
older version are still read.

On one Redis a consumer reads all shards with one blocking XREADGROUP. On a cluster one
command cannot name keys of several slots: the consumer reads every shard but its `home`
without blocking, then blocks on the home shard; the LINE dispatcher gives each thread a
different home, so each shard has a reader waiting on it.

Entries are deleted when acknowledged (XACK + XDEL), so a stream holds only what is still to
be done and needs no trimming.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from bot.redisconn import is_cluster, node_of, shard_of


def shard_names(base: str, count: int) -> list[str]:
    """`base` itself, then `base:{<tag><i>}`: each shard its own slot on a cluster."""
    tag = base.rsplit(":", 1)[-1]
    return [base] + [f"{base}:{{{tag}-{i}}}" for i in range(1, count)]


class Shards:
    """The shard streams of one queue, and which shard a person or a case writes to."""

    def __init__(self, base: str, count: int):
        self.names = shard_names(base, count)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def of(self, owner: str) -> str:
        """One owner's entries stay in one shard (so they are read in order)."""
        return self.names[shard_of(owner, len(self.names))]

    def others(self, name: str) -> list[str]:
        """Where else to write when `name`'s primary is down (its owner order is lost then,
        which the readers tolerate: a LINE ticket only names a person)."""
        i = self.names.index(name)
        return self.names[i + 1:] + self.names[:i]


@dataclass(frozen=True)
class Entry:
    stream: str
    id: str
    fields: dict[str, str]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(got: Any) -> list[Entry]:
    out = []
    for stream, batch in got or []:
        for entry_id, fields in batch:
            out.append(Entry(_text(stream), _text(entry_id),
                             {_text(k): _text(v) for k, v in (fields or {}).items()}))
    return out


class StreamConsumer:
    """One consumer of one group over all shards of a queue."""

    def __init__(self, client: Any, shards: Shards, group: str, consumer: str, home: int = 0):
        self.redis = client
        self.shards = shards
        self.group = group
        self.consumer = consumer
        self.home = home % len(shards)
        self.cluster = is_cluster(client)
        self._ready = False
        self._reclaim_from = 0

    def ensure_groups(self, force: bool = False) -> None:
        """Create the group on every shard (once, and again after Redis lost it)."""
        if self._ready and not force:
            return
        for name in self.shards:
            try:
                self.redis.xgroup_create(name, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._ready = True

    def lost(self) -> None:
        """Redis went away or lost the group (NOGROUP): create it again before the next read."""
        self._ready = False

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer; blocks up to `block_ms` (None: not at all)."""
        self.ensure_groups()
        return self._read(">", count, block_ms)

    def own_pending(self, count: int) -> list[Entry]:
        """Entries this consumer read earlier and has not acknowledged (to try again)."""
        self.ensure_groups()
        return self._read("0", count, None)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        names = list(self.shards)
        if not self.cluster or len(names) == 1:
            return _entries(self.redis.xreadgroup(self.group, self.consumer,
                                                  dict.fromkeys(names, start), count=count,
                                                  block=block_ms))
        home = names[self.home]
        out: list[Entry] = []
        for name in names:
            if name != home:
                out += self._one(name, start, count, None)
        if out or start != ">":
            return out + self._one(home, start, count, None)
        return self._one(home, start, count, block_ms)

    def _one(self, name: str, start: str, count: int, block_ms: int | None) -> list[Entry]:
        args: list[Any] = ["GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        try:
            # Routed by hand: XREADGROUP's keys are "movable" (see bot.redisconn.node_of).
            return _entries(self.redis.execute_command("XREADGROUP", *args, "STREAMS", name,
                                                       start, **node_of(self.redis, name)))
        except (redis.ConnectionError, redis.TimeoutError):
            if name == self.shards.names[self.home] and block_ms:
                raise  # our own shard is down: the caller backs off
            return []   # another shard's primary is failing over: read it next time

    def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer (a dead process) left pending too long."""
        self.ensure_groups()
        out: list[Entry] = []
        names = list(self.shards)
        for offset in range(len(names)):
            name = names[(self._reclaim_from + offset) % len(names)]
            try:
                _next, got, *_ = self.redis.xautoclaim(name, self.group, self.consumer,
                                                       min_idle_time=min_idle_ms,
                                                       start_id="0-0", count=count)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            out += _entries([(name, got)])
        self._reclaim_from = (self._reclaim_from + 1) % len(names)
        return out

    def ack(self, entries: Iterable[tuple[str, str]], pipe: Any = None) -> None:
        """Acknowledge and delete (stream, id) pairs; into `pipe` if given, else now."""
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if own else pipe
        for stream, entry_id in entries:
            pipe.xack(stream, self.group, entry_id)
            pipe.xdel(stream, entry_id)
        if own:
            pipe.execute()

    def pending(self) -> int:
        """How many entries wait for acknowledgement, over all shards and consumers."""
        self.ensure_groups()
        return sum(int(self.redis.xpending(name, self.group)["pending"]) for name in self.shards)
