"""The LINE dispatcher on a Redis Cluster while one ticket shard has no primary: tickets in
the other shards are answered as usual, the down shard is asked only now and then (a pause
that grows to a few seconds, bot.streams.Shards.due) instead of at every pass of every
thread, and once its replica takes over, the tickets it held are answered — once."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import redis.connection

from bot.redisconn import connect
from tests import line_helpers as lh
from tests.fakes import net
from tests.fakes.net import line_users
from tests.test_line import post

WINDOW_S = 8.0


def test_a_shard_without_primary_is_left_alone_and_read_once_back(own_cluster, fake_line,
                                                                 monkeypatch):
    fake, line_url = fake_line
    client = connect(own_cluster.url, cluster=True)  # a 2 s socket timeout, as in production

    # A prefix whose shard D is alone on its node, which holds none of the keys every
    # answer writes.
    prefix, down, victim = net.lonely_shard(client, "tsunagu-test")
    # Every event through a ticket; follow-ups (their own 16 shards) off: not this test's.
    app = net.ticket_app(own_cluster.url, client, prefix, line_url)
    line = app.extensions["tsunagu_line"]

    def people(in_down: bool, n: int, tag: str) -> list[str]:
        return line_users(client, line, down, victim, in_down, n, tag)

    asked = Counter()  # connections tried to the stopped node (each command needs one)
    connect_once = redis.connection.AbstractConnection.connect

    def counted(self, *args, **kwargs):
        if getattr(self, "port", None) == victim:
            asked["connect"] += 1
        return connect_once(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", counted)
    web = app.test_client()
    held = [lh.text("こんにちは", user=u) for u in people(True, 3, "d")]
    for event in held:  # tickets in D, written while no dispatcher runs
        assert post(web, event).status_code == 200
    replica = next(int(v["port"]) for k, v in own_cluster.node(victim).info("replication").items()
                   if k.startswith("slave") and isinstance(v, dict))
    os.kill(own_cluster.procs[replica].pid, signal.SIGSTOP)  # no failover until SIGCONT
    try:
        own_cluster.kill(victim)
        line.dispatcher.start()
        met = time.monotonic() + 30
        while not line.queue.shards.is_down(down) and time.monotonic() < met:
            time.sleep(0.05)  # until a thread has found D down (its first try: ~4.5 s)
        assert line.queue.shards.is_down(down)
        asked.clear()
        started = time.monotonic()
        live = [lh.text("こんにちは", user=u) for u in people(False, 6, "a")]
        for n, event in enumerate(live, start=1):
            assert post(web, event).status_code == 200
            assert len(fake.wait_for(n, timeout=20)) == n, "a live shard's ticket waited"
        time.sleep(max(0.0, WINDOW_S - (time.monotonic() - started)))
        window_s, tries = time.monotonic() - started, asked["connect"]
        # D's tickets wait for D, but their events need not: their due entries sit on their
        # people's own (live) nodes, and once overdue the sweep tickets them in a live shard.
        assert len(live) <= len(fake.delivered()) <= len(live) + len(held)
    finally:
        os.kill(own_cluster.procs[replica].pid, signal.SIGCONT)  # it takes over: D is back
    print(f"\nshard down: {tries} connections tried to its node in {window_s:.1f} s")
    # Before, every thread asked D at each pass (~130 connections in 10 s, 303 in 22.5 s);
    # now at most once per pause (0.1, 0.2, 0.4 … 5 s), each command tried up to 4 times by
    # redis-py: 22–43 seen. The bound leaves room for a slow machine and still fails the old
    # way of reading (over 100 in this window).
    assert tries <= 64, tries
    assert own_cluster.wait_primaries(3, timeout=30), "the replica took over"
    got = fake.wait_for(len(live) + len(held), timeout=30)
    assert len(got) == len(live) + len(held), "D's tickets were answered once it was back"
    time.sleep(1.5)  # anything answered twice would arrive now
    tokens = Counter(r.body.get("replyToken") for r in fake.delivered())
    assert len(tokens) == len(live) + len(held) and set(tokens.values()) == {1}
    line.stop()
    client.close()


def test_a_failed_shard_is_tried_again_after_a_growing_pause_by_one_reader(monkeypatch):
    """Shards.due, on a fake clock: 0.1 s, then twice as long per failure up to 5 s; while
    one reader tries, the others leave it alone; an answer puts it back at once."""
    from bot import streams

    now = [100.0]
    monkeypatch.setattr(streams.time, "monotonic", lambda: now[0])
    shards = streams.Shards("q", 2)
    down, other = shards.names
    assert shards.due(down)
    for pause in (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0):
        shards.failed(down)
        now[0] += pause - 0.01
        assert not shards.due(down) and shards.due(other)  # left alone; the other read
        now[0] += 0.02
        assert shards.due(down)           # this reader tries it …
        assert not shards.due(down)       # … and the others wait for what it finds
    now[0] += 5.0                         # that reader never told: tried again after 5 s
    assert shards.due(down)
    shards.recovered(down)
    assert shards.due(down) and shards.due(down) and not shards.is_down(down)
    shards.failed(down)                   # down again: the pause starts from 0.1 s
    now[0] += 0.1
    assert shards.due(down)
