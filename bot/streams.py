"""One stream consumer for every queue: read, claim, reclaim, acknowledge.

A queue is N Redis Streams ("shards"), each under a hash tag of its own, so on a Redis
Cluster no single slot (node) carries every event and one primary failing over stops only
its shards. Shard 0 keeps the queue's old single-stream name, so entries left there by an
older version are still read.

On one Redis a consumer reads all shards with one blocking XREADGROUP. On a cluster one
command cannot name keys of several slots: the consumer reads every shard but its `home`
without blocking, then blocks on the home shard; the LINE dispatcher gives each thread a
different home, so each shard has a reader waiting on it. A consumer that must stay one
reader (the handoff worker: one case's events in order, one delivery at a time) rings a
`Doorbell` instead: a thread per shard blocks on it (XREAD, which consumes nothing) and wakes
the consumer, which then reads every shard without blocking.

A shard whose primary is down costs a timeout at each read: it is left alone between tries
spaced by a growing pause (0.1 s doubling to 5 s, `Shards.due`, shared by every consumer of
the queue in the process, one try at a time), and read again as soon as one works. Where a
doorbell runs, its thread for that shard makes the tries.

Entries are deleted when acknowledged (XACK + XDEL), so a stream holds only what is still to
be done and needs no trimming.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from bot import logs
from bot.redisconn import UNAVAILABLE, is_cluster, node_of, shard_of

T = TypeVar("T")


def shard_names(base: str, count: int) -> list[str]:
    """`base` itself, then `base:{<tag><i>}`: each shard its own slot on a cluster."""
    tag = base.rsplit(":", 1)[-1]
    return [base] + [f"{base}:{{{tag}-{i}}}" for i in range(1, count)]


class Backoff:
    """A pause that doubles after each failure, from `first` up to `longest`, and starts from
    `first` again after a success: how long to leave a shard whose primary is down alone."""

    def __init__(self, first: float = 0.1, longest: float = 5.0):
        self.first = first
        self.longest = longest
        self.pause = 0.0

    def failed(self) -> float:
        """The pause to take now."""
        self.pause = min(self.pause * 2, self.longest) if self.pause else self.first
        return self.pause

    def reset(self) -> None:
        self.pause = 0.0


class Outages:
    """Which places (stream shards, cluster nodes) failed lately, shared by every user of them
    in the process: a place that failed is tried last by writers for `down_for_s`, and left
    alone by readers for a pause that grows (`retry`: first, longest) while it stays down,
    tried by one reader at a time, and back at once after its first success. Each try of a
    place whose primary is down costs a timeout (the client's retries)."""

    DOWN_FOR_S = 30.0  # how long a place whose write failed is tried last (a failover's time)
    # A place found down is tried again after 0.1 s, then twice as long each time it is still
    # down, up to 5 s: each read of it costs a timeout while its primary fails over.
    RETRY_S = (0.1, 5.0)

    def __init__(self, retry: tuple[float, float] | None = None,
                 down_for_s: float | None = None):
        self.retry = retry or self.RETRY_S
        self.down_for_s = self.DOWN_FOR_S if down_for_s is None else down_for_s
        self._down: dict[str, float] = {}  # place → until when it is tried last
        self._retry: dict[str, tuple[float, Backoff]] = {}  # place → when it is tried again
        self._lock = threading.Lock()

    def failed(self, name: str) -> None:
        """A command on `name` found its primary unreachable: writes try it last for a while,
        so each write during a failover does not first wait for the client's retries to give
        up; readers leave it alone for a growing pause (`due`)."""
        now = time.monotonic()
        with self._lock:
            self._down[name] = now + self.down_for_s
            _, backoff = self._retry.get(name) or (0.0, Backoff(*self.retry))
            self._retry[name] = (now + backoff.failed(), backoff)

    def recovered(self, name: str) -> None:
        """`name` answered (a read worked): back to its place at once."""
        if name in self._down or name in self._retry:
            with self._lock:
                self._down.pop(name, None)
                self._retry.pop(name, None)

    def due(self, name: str) -> bool:
        """Whether a reader should try `name` now: yes, unless it failed lately; then once
        its pause is over, and by one reader at a time — the others leave it alone until
        that read tells (`failed`, `recovered`), or a longest pause has gone by."""
        if name not in self._retry:
            return True
        now = time.monotonic()
        with self._lock:
            at, backoff = self._retry.get(name) or (0.0, None)
            if backoff is None:
                return True
            if now < at:
                return False
            self._retry[name] = (now + backoff.longest, backoff)
            return True

    def is_down(self, name: str) -> bool:
        return self._down.get(name, 0.0) > time.monotonic()

    def attempt(self, name: str, call: Callable[[], T],
                on_error: Callable[[Exception], None] | None = None) -> tuple[bool, T | None]:
        """(True, what `call` — commands on `name` — returned), or (False, None) when `name` is
        left alone for now (`due`) or did not answer (then `failed`, and `on_error` told); an
        answer is `recovered`. Errors other than Redis being unavailable propagate."""
        if not self.due(name):
            return False, None
        try:
            got = call()
        except UNAVAILABLE as exc:
            self.failed(name)
            if on_error is not None:
                on_error(exc)
            return False, None
        self.recovered(name)
        return True, got


class Shards(Outages):
    """The shard streams of one queue, which shard a person or a case writes to, and which
    shards failed lately (`Outages`, by shard name)."""

    def __init__(self, base: str, count: int):
        super().__init__()
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

    def for_writing(self, owner: str) -> list[str]:
        """Where an owner's entry goes, in order: its own shard, then the others (see
        `others`); shards that failed lately come last, yet are still tried."""
        own = self.of(owner)
        order = [own, *self.others(own)]
        return [n for n in order if not self.is_down(n)] + [n for n in order if self.is_down(n)]

    def write_first(self, owner: str, write: Callable[[str], T], skip: Collection[str] = (),
                    errors: tuple[type[Exception], ...] = UNAVAILABLE) -> tuple[str, T]:
        """Write an owner's entry to the first shard that takes it: (that shard, what
        `write(shard)` returned). The one loop every "its own shard, else another" writer uses
        (staff-queue entries, LINE tickets and due entries), so each gets the same order
        (`for_writing`: a shard found down lately is tried last, not first at each write
        during a failover) and each write that finds a primary unreachable teaches the
        others (`failed`); a write that works puts its shard back (`recovered`).

        `skip`: shards not to try (the caller's write there just failed). `errors`: what
        moves on to the next shard — by default only an unreachable primary; any other error
        propagates. When no shard takes it, the first error is raised (a ConnectionError if
        none was tried)."""
        first: Exception | None = None
        for name in self.for_writing(owner):
            if name in skip:
                continue
            try:
                got = write(name)
            except errors as exc:
                if isinstance(exc, UNAVAILABLE):
                    self.failed(name)
                first = first or exc
                continue
            self.recovered(name)
            return name, got
        raise first or redis.ConnectionError("no shard left to write to")


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


class Doorbell:
    """Rings when any shard of a queue gets an entry: one thread per shard blocks on it with
    XREAD (no group, so it takes nothing from the consumer), from the last id it saw, so an
    entry added between two of its reads still rings. A shard whose primary is down is
    watched again after a growing pause; meanwhile the consumer's own timeout reads it. Its
    reads also tell whether the shard is up (`Shards.failed`, `Shards.recovered`), so the
    consumer skips a shard that is down instead of waiting for the client's retries on it
    at every pass."""

    def __init__(self, client: Any, shards: Shards, block_ms: int):
        self.redis = client
        self.shards = shards
        self.names = list(shards)
        self.block_ms = max(1, block_ms)
        self._rung = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for i, name in enumerate(self.names):
            thread = threading.Thread(target=self._watch, args=(name,), daemon=True,
                                      name=f"doorbell-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def clear(self) -> None:
        """Before reading: an entry that arrives after this rings again."""
        self._rung.clear()

    def wait(self, seconds: float) -> bool:
        """Wait for a ring (True) or `seconds` (False)."""
        return self._rung.wait(seconds)

    def _watch(self, name: str) -> None:
        last, backoff = "$", Backoff(*Shards.RETRY_S)
        while not self._stop.is_set():
            try:
                got = _entries(self.redis.execute_command(
                    "XREAD", "COUNT", 64, "BLOCK", self.block_ms, "STREAMS", name, last,
                    **node_of(self.redis, name)))
            except UNAVAILABLE:
                self.shards.failed(name)
                self._stop.wait(backoff.failed())  # this shard's primary is failing over
                continue
            except Exception as exc:  # a surprise: keep ringing (the consumer's timeout
                logs.failure("streams.doorbell", exc)  # still reads this shard meanwhile)
                self._stop.wait(backoff.failed())
                continue
            backoff.reset()
            self.shards.recovered(name)
            if got:
                last = got[-1].id
                self._rung.set()


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
        self.bell: Doorbell | None = None

    def ring_on_every_shard(self, block_ms: int) -> Doorbell | None:
        """On a cluster with several shards, start a `Doorbell` so `read` waits on every
        shard, not only `home`; the caller stops it (`stop_ringing`). None where one blocking
        read already covers every shard."""
        if not self.cluster or len(self.shards) == 1:
            return None
        if self.bell is None:
            self.bell = Doorbell(self.redis, self.shards, block_ms)
        self.bell.start()
        return self.bell

    def stop_ringing(self) -> None:
        if self.bell is not None:
            self.bell.stop()

    def _skip(self, name: str) -> bool:
        """Leave a shard known down alone: with a doorbell watching every shard, until the
        doorbell sees it answer; without one (the LINE dispatcher's threads), between the
        tries `Shards.due` spaces out — each costs a timeout while its primary is down. On
        one Redis every shard shares its fate: the caller's own backoff covers it."""
        if not self.cluster:
            return False
        if self.bell is not None and self.bell.running:
            return self.shards.is_down(name)
        return not self.shards.due(name)

    def ensure_groups(self, force: bool = False) -> None:
        """Create the group on every shard (once, and again after Redis lost it)."""
        if self._ready and not force:
            return
        missing: list[Exception] = []
        for name in self.shards:
            if self._skip(name):
                missing.append(redis.ConnectionError(f"shard {name} is down"))
                continue
            try:
                self.redis.xgroup_create(name, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            except UNAVAILABLE as exc:  # that shard's primary is down: the others are read
                self.shards.failed(name)
                missing.append(exc)
                continue
            self.shards.recovered(name)
        if len(missing) == len(self.shards):
            raise missing[0]  # Redis is down: the caller backs off
        self._ready = not missing  # else tried again before the next read

    def lost(self) -> None:
        """Redis went away or lost the group (NOGROUP): create it again before the next read."""
        self._ready = False

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer; blocks up to `block_ms` (None: not at all)."""
        self.ensure_groups()
        bell = self.bell
        if bell is None or not bell.running or not block_ms:
            return self._read(">", count, block_ms)
        bell.clear()
        got = self._read(">", count, None)
        if got or not bell.wait(block_ms / 1000):
            return got
        return self._read(">", count, None)

    def own_pending(self, count: int) -> list[Entry]:
        """Entries this consumer read earlier and has not acknowledged (to try again)."""
        self.ensure_groups()
        return self._read("0", count, None)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        names = list(self.shards)
        if not self.cluster or len(names) == 1:
            got = _entries(self.redis.xreadgroup(self.group, self.consumer,
                                                 dict.fromkeys(names, start), count=count,
                                                 block=block_ms))
            for name in names:  # they all answered
                self.shards.recovered(name)
            return got
        home = names[self.home]
        out: list[Entry] = []
        for name in names:
            if name != home:
                out += self._one(name, start, count, None)
        if out or start != ">":
            return out + self._one(home, start, count, None)
        return self._one(home, start, count, block_ms)

    def _one(self, name: str, start: str, count: int, block_ms: int | None) -> list[Entry]:
        if self._skip(name):
            if block_ms:  # our own shard, left alone: wait as its read would have
                time.sleep(block_ms / 1000)
            return []
        args: list[Any] = ["GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        try:
            # Routed by hand: XREADGROUP's keys are "movable" (see bot.redisconn.node_of).
            got = _entries(self.redis.execute_command("XREADGROUP", *args, "STREAMS", name,
                                                      start, **node_of(self.redis, name)))
        except UNAVAILABLE:
            self.shards.failed(name)
            if name == self.shards.names[self.home] and block_ms:
                raise  # our own shard is down: the caller backs off
            return []   # another shard's primary is failing over: read it later (`_skip`)
        self.shards.recovered(name)
        return got

    def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer (a dead process) left pending too long."""
        self.ensure_groups()
        out: list[Entry] = []
        names = list(self.shards)
        for offset in range(len(names)):
            name = names[(self._reclaim_from + offset) % len(names)]
            ok, claimed = self.shards.attempt(name, lambda n=name: self.redis.xautoclaim(
                n, self.group, self.consumer, min_idle_time=min_idle_ms, start_id="0-0",
                count=count))
            if ok:
                out += _entries([(name, claimed[1])])
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
