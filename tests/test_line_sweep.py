"""The sweep of overdue LINE due entries, and where a write goes when its shard's primary is
down. On a cluster a person's due entries sit in a spread due set beside their keys, whose
tickets go to other slots: the sweep takes its entries with a lease (one Lua call in the due
set's slot) before writing their tickets, so two processes sweeping at once write one ticket
per person, and a ticket that could not be written brings its entries back after the lease.
Every "first shard that takes it" write (LINE tickets and due entries, staff-queue entries)
goes through `Shards.write_first`: the shards in `for_writing` order, a failing one marked."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import redis

from bot.channels import line_queue
from bot.channels.line_queue import due_key, due_member
from bot.streams import Shards

USER = "U" + "e" * 32


@pytest.fixture
def redis_url(either_redis: str | None) -> str | None:
    return either_redis


def _tickets(redis_client, queue) -> Counter:
    """The people named by the tickets in every shard."""
    out: Counter = Counter()
    for name in queue.shards:
        for _, fields in redis_client.xrange(name):
            out[fields[b"p"].decode()] += 1
    return out


def _spread(line) -> tuple[Any, str, list[str]]:
    """A stopped dispatcher's queue, one of its spread due sets, and some people."""
    queue = line.queue
    if not queue.spread_dues:
        pytest.skip("one Redis: due entries stay in the shards' due sets (the _SWEEP Lua)")
    line.dispatcher.stop()      # no background sweep: the test's own sweeps only
    pids = [line.conversations.pseudonym("line", f"U{i:031x}s") for i in range(5)]
    return queue, queue.spread_dues[0], pids


def test_two_sweeps_over_the_same_overdue_entries_write_one_ticket_per_person(
        line_app, redis_client, monkeypatch):
    """Another process sweeps the same spread due set between this one's read of its overdue
    entries and its ticket writes. Before the lease, both wrote a ticket per person."""
    app, _ = line_app
    queue, key, pids = _spread(app.extensions["tsunagu_line"])
    dispatcher = app.extensions["tsunagu_line"].dispatcher
    entries = {due_member(pid, f"E{i}"): 1 for i, pid in enumerate(pids)}
    entries[due_member(pids[0], "E-second")] = 2          # one person, two events
    redis_client.zadd(key, entries)
    now = int(time.time() * 1000)
    real = queue.shards.for_writing
    raced: list[int] = []
    racing: list[bool] = []

    def other_process_sweeps(owner: str) -> list[str]:
        if not racing:                                    # once, when the first ticket goes
            racing.append(True)
            raced.append(dispatcher._sweep_spread(key, now))
        return real(owner)

    monkeypatch.setattr(queue.shards, "for_writing", other_process_sweeps)
    swept = dispatcher._sweep_spread(key, now)
    monkeypatch.undo()
    assert raced == [0]                                   # the entries were this sweep's
    assert swept == len(entries)
    assert _tickets(redis_client, queue) == Counter(pids)  # one ticket per person
    assert redis_client.zcard(key) == 0


class _NoTicket:
    """A pipeline whose XADDs fail as a node that is down does; anything else goes through."""

    def __init__(self, real: Any, tries: list[str]) -> None:
        self.pipe = real(transaction=False)
        self.tries = tries
        self.streams: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def xadd(self, name: str, fields: dict, *args: Any, **kwargs: Any) -> Any:
        self.streams.append(name)
        return self.pipe.xadd(name, fields, *args, **kwargs)

    def execute(self, raise_on_error: bool = True) -> Any:
        if self.streams:
            self.tries.extend(dict.fromkeys(self.streams))  # one try per stream
            raise redis.ConnectionError("the ticket shard's node is down")
        return self.pipe.execute(raise_on_error=raise_on_error)


def test_a_ticket_no_shard_takes_leaves_its_entry_for_after_the_lease(line_app, redis_client,
                                                                      monkeypatch):
    """No shard takes tickets: the entries stay (leased, not lost) and come back once the
    lease is over; the sweep stops at the first person no shard took instead of trying
    every shard for each person of the batch, and marks the shards that failed."""
    app, _ = line_app
    queue, key, pids = _spread(app.extensions["tsunagu_line"])
    dispatcher = app.extensions["tsunagu_line"].dispatcher
    entries = {due_member(pid, f"E{i}"): 1 for i, pid in enumerate(pids)}
    redis_client.zadd(key, entries)
    now = int(time.time() * 1000)
    tries: list[str] = []
    real = queue.redis.pipeline

    def xadd_down(name: str, *args: Any, **kwargs: Any) -> Any:
        tries.append(name)
        raise redis.ConnectionError("the ticket shard's node is down")

    monkeypatch.setattr(queue.redis, "pipeline",
                        lambda transaction=None: _NoTicket(real, tries))
    monkeypatch.setattr(queue.redis, "xadd", xadd_down)
    assert dispatcher._sweep_spread(key, now) == 0
    assert sorted(set(tries)) == sorted(queue.shards)     # each shard tried …
    assert len(tries) == len(queue.shards)                # … once: then the batch waits
    assert all(queue.shards.is_down(name) for name in queue.shards)
    left = dict(redis_client.zrange(key, 0, -1, withscores=True))
    assert {m.decode() for m in left} == set(entries)     # nothing lost
    assert min(left.values()) >= now + line_queue.SWEEP_LEASE_MS   # leased
    tries.clear()
    assert dispatcher._sweep_spread(key, now + 1000) == 0  # not again before the lease ends
    assert tries == []
    monkeypatch.undo()
    later = now + line_queue.SWEEP_LEASE_MS + 1
    assert dispatcher._sweep_spread(key, later) == len(entries)   # the shards are back
    assert _tickets(redis_client, queue) == Counter(pids)
    assert redis_client.zcard(key) == 0


def test_due_entries_whose_due_set_is_down_go_to_the_persons_shard_first(line_app,
                                                                          redis_client):
    """On a cluster the person's due set is a spread one on their node; when its write fails
    the entries go to their own shard's due set (usually another node) before any other
    shard's — and, on one Redis, where that due set is the one that failed, to the next."""
    app, _ = line_app
    line = app.extensions["tsunagu_line"]
    line.dispatcher.stop()
    queue = line.queue
    pid = line.conversations.pseudonym("line", USER)
    own = queue.shards.of(pid)
    failed = queue.due(pid)
    if queue.spread_dues:
        assert failed in queue.spread_dues
        expected = own
    else:
        assert failed == due_key(own)
        expected = queue.shards.others(own)[0]
    member = due_member(pid, "E1")
    queue._due_elsewhere(pid, {member: 123})
    held = {name: redis_client.zscore(due_key(name), member) for name in queue.shards}
    assert held == {name: 123.0 if name == expected else None for name in queue.shards}
    # That shard found down lately: tried last, the next one takes the entries.
    redis_client.zrem(due_key(expected), member)
    queue.shards.failed(expected)
    queue._due_elsewhere(pid, {member: 124})
    then = next(n for n in queue.shards.for_writing(pid) if due_key(n) != failed)
    assert then != expected
    assert redis_client.zscore(due_key(then), member) == 124.0
    assert redis_client.zscore(due_key(expected), member) is None


def _owner(shards: Shards, index: int) -> str:
    return next(o for o in (f"owner-{i}" for i in range(1000))
                if shards.of(o) == shards.names[index])


def test_write_first_takes_the_writing_order_and_marks_a_failing_shard():
    """The one "first shard that takes it" loop: the owner's shard, then the others, those
    that failed lately last; a shard whose write finds its primary unreachable is marked
    failed (tried last by the next writes); when none takes it, the first error is raised."""
    shards = Shards("q", 4)
    owner = _owner(shards, 1)
    own = shards.names[1]
    shards.failed(shards.names[2])                        # found down a moment ago
    tried: list[str] = []
    down = {own, shards.names[3]}

    def write(name: str) -> str:
        tried.append(name)
        if name in down:
            raise redis.ConnectionError(name)
        return f"id-in-{name}"

    assert shards.write_first(owner, write) == (shards.names[0], f"id-in-{shards.names[0]}")
    assert tried == [own, shards.names[3], shards.names[0]]
    assert shards.is_down(own) and shards.is_down(shards.names[3])
    assert not shards.is_down(shards.names[0])
    # The next write of that owner starts with the shard that took it; the failed ones last,
    # in their order.
    tried.clear()
    down.add(shards.names[0])
    down.add(shards.names[2])
    with pytest.raises(redis.ConnectionError) as raised:
        shards.write_first(owner, write)
    assert tried == [shards.names[0], own, shards.names[2], shards.names[3]]
    assert str(raised.value) == shards.names[0]           # the first error
    # `skip`: a shard the caller just found down is not tried again.
    tried.clear()
    down.clear()
    assert shards.write_first(owner, write, skip={shards.names[0]})[0] == own
    assert tried == [own]


def test_write_first_lets_other_errors_through_unless_told():
    """Only "unavailable" moves on by default (a staff-queue entry refused for another reason
    must surface); the LINE writers also move on after any Redis error, as before; only an
    unreachable primary marks a shard failed."""
    shards = Shards("q", 3)
    owner = _owner(shards, 0)
    tried: list[str] = []

    def refused(name: str) -> str:
        tried.append(name)
        if name == shards.names[0]:
            raise redis.ResponseError("OOM command not allowed")
        return name

    with pytest.raises(redis.ResponseError):
        shards.write_first(owner, refused)
    assert tried == [shards.names[0]]
    tried.clear()
    assert shards.write_first(owner, refused, errors=(redis.RedisError,))[0] == shards.names[1]
    assert not shards.is_down(shards.names[0])
