"""The webhook's 200 and the replicas: with WAIT, a write no replica acknowledged in time is
accepted (counted) or refused with 500 so LINE redelivers (REDIS_WAIT_TIMEOUT=refuse).

A single Redis without replicas stands in for "the replica did not answer in time": asking it
to WAIT for one replica always times out. On the cluster fixture the replicas acknowledge."""

from __future__ import annotations

import pytest
import redis

from bot.config import Settings
from bot.redisconn import ReplicaWait, connect
from tests import line_helpers as lh
from tests.conftest import SECRET


def line_server(redis_url, key_prefix, redis_client, fake_line, **wait):
    from bot.wiring import build
    from server import create_app

    fake, url = fake_line
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_api_base_url=url, line_reclaim_idle_ms=500, lock_ms=5000, **wait)
    app = create_app(settings, services=build(settings, client=redis_client))
    return app, fake


def send(app, event: dict) -> int:
    body = lh.body(event)
    return app.test_client().post("/callback", data=body.encode(),
                                  headers={"X-Line-Signature": lh.sign(body)},
                                  content_type="application/json").status_code


@pytest.mark.parametrize(("policy", "status"), [(False, 200), (True, 500)])
def test_no_replica_in_time_accepts_or_refuses(redis_url, key_prefix, redis_client, fake_line,
                                               policy, status):
    if redis_url is None or ReplicaWait(connect(redis_url), None, 50).wanted():
        pytest.skip("needs a Redis without replicas")
    app, fake = line_server(redis_url, key_prefix, redis_client, fake_line,
                            redis_wait_replicas=1, redis_wait_ms=20, redis_wait_refuse=policy)
    try:
        event = lh.text("こんにちは", user="U" + "5" * 32)
        assert send(app, event) == status
        if status == 200:  # accepted: answered from the queue as usual
            assert len(fake.wait_for(1, timeout=20)) == 1
        else:              # refused: LINE redelivers; once replicas answer again, it is taken
            line = app.extensions["tsunagu_line"]
            line.queue.wait.fixed = 0
            assert send(app, dict(event, deliveryContext={"isRedelivery": True})) == 200
            got = fake.wait_for(1, timeout=20)
            assert len(got) == 1
    finally:
        app.extensions["tsunagu_line"].stop()


def test_on_the_cluster_the_replicas_acknowledge(redis_cluster, key_prefix, fake_line):
    client = connect(redis_cluster.url)
    wait = ReplicaWait(client, None, 500)
    assert wait.wanted() == 1      # found: every primary has its replica
    app, fake = line_server(redis_cluster.url, key_prefix, client, fake_line,
                            redis_wait_refuse=True)
    try:
        assert send(app, lh.text("こんにちは", user="U" + "6" * 32)) == 200
        assert len(fake.wait_for(1, timeout=20)) == 1
    finally:
        app.extensions["tsunagu_line"].stop()


def test_a_down_primary_holds_no_webhook_while_the_replicas_are_asked_again(own_cluster,
                                                                           fake_line):
    """The replica count is renewed off the request path: with a primary down, a webhook
    whose turn it is to renew it neither waits for the dead node (before: ~4.5 s, the
    client's retries, every 30 s) nor drops WAIT (before: an ask that failed meant 0 replicas,
    so no write waited for a replica until the next ask)."""
    import time

    from tests.fakes import net
    from tests.test_line import post

    _, line_url = fake_line
    client = connect(own_cluster.url, cluster=True)  # a 2 s socket timeout, as in production
    prefix, down, victim = net.lonely_shard(client, "tsunagu-test")
    app = net.ticket_app(own_cluster.url, client, prefix, line_url)
    line = app.extensions["tsunagu_line"]
    wait = line.queue.wait
    wait.refresh_s = 0.5                             # production: 30 s
    web = app.test_client()
    users = net.line_users(client, line, down, victim, False, 7, "w")
    assert post(web, lh.text("こんにちは", user=users[0])).status_code == 200  # the first ask
    assert wait.wanted() == 1
    first_ask = wait._asked
    took, wanted = [], []
    with net.node_down(own_cluster, victim):
        line.queue.shards.failed(down)               # as the dispatcher finds it
        for user in users[1:]:
            time.sleep(0.6)                          # the answer is old: this write renews it
            started = time.monotonic()
            assert post(web, lh.text("こんにちは", user=user)).status_code == 200
            took.append(time.monotonic() - started)
            wanted.append(wait.wanted())
        renewed = wait._asked                        # asked again while the node was down
    print(f"\nprimary down: webhooks renewing the replica count took "
          f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms; WAIT for {wanted}")
    assert max(took) < 1.0, took                 # before: 3.0–8.2 s
    assert wanted == [1] * len(took), "the live primaries' writes still wait for a replica"
    assert first_ask is not None and renewed is not None and renewed > first_ask + 1.0, \
        "the count was renewed during the outage (not merely kept)"
    line.stop()
    client.close()


def test_no_thread_for_the_renewal_neither_fails_the_write_nor_stops_renewing(redis_url,
                                                                            monkeypatch):
    """A renewal whose thread does not start (a thread limit, the interpreter exiting) must
    not raise into the write that asked — a webhook, a dispatcher's save — and must not keep
    the renewal's lock: before, Thread.start's RuntimeError escaped and every renewal after it
    was skipped for good (the lock was never released)."""
    import threading
    import time

    if not redis_url:
        pytest.skip("needs the real Redis")
    wait = ReplicaWait(connect(redis_url), None, 100, refresh_s=0.05)
    first = wait.wanted()                             # the first ask, inline
    real = threading.Thread

    class NoThread(real):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading, "Thread", NoThread)
    time.sleep(0.1)
    assert wait.wanted() == first                     # the write goes on with the last answer
    monkeypatch.setattr(threading, "Thread", real)
    asked = wait._asked
    deadline = time.monotonic() + 5
    while wait._asked == asked and time.monotonic() < deadline:
        time.sleep(0.1)
        wait.wanted()                                 # a later write renews it again
    assert wait._asked != asked, "renewals go on once threads start again"


def _gone(node: redis.Redis, client_id: int, timeout: float = 3.0) -> bool:
    """Whether the server no longer lists the connection `client_id` (it sees a close on its
    next loop, so asked a few times)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.client_list(client_id=[client_id]):
            return True
        time.sleep(0.05)
    return False


def test_probes_of_former_primaries_are_closed_and_close_closes_the_rest(redis_cluster,
                                                                         monkeypatch):
    """Each primary ever seen had a probe client of its own, never closed: a node that failed
    over or left kept its socket for the life of the process, and shutdown closed none."""
    client = connect(redis_cluster.url, cluster=True)
    wait = ReplicaWait(client, None, 100)
    primaries = client.get_primaries()
    assert len(primaries) >= 2
    wait._ask()
    probes = dict(wait._probes)
    assert set(probes) == {n.name for n in primaries}
    # The connection each probe holds, as its server knows it.
    ids = {name: probe.client_id() for name, probe in probes.items()}
    nodes = {n.name: redis.Redis(host=n.host, port=n.port) for n in primaries}
    left, *kept = primaries
    monkeypatch.setattr(client, "get_primaries", lambda: kept)  # `left` is no longer a primary
    wait._ask()
    assert set(wait._probes) == {n.name for n in kept}, "the former primary's probe is dropped"
    assert _gone(nodes[left.name], ids[left.name]), "and its connection closed"
    assert all(wait._probes[n.name] is probes[n.name] for n in kept), "the others are kept"
    wait.close()
    assert not wait._probes
    for node in kept:
        assert _gone(nodes[node.name], ids[node.name]), "close() closes every probe"
    wait._ask()                                   # an ask after close opens none
    assert not wait._probes
    for node in nodes.values():
        node.close()
    client.close()


def test_stopping_the_line_channel_closes_the_replica_probes(redis_cluster, key_prefix,
                                                             fake_line):
    client = connect(redis_cluster.url, cluster=True)
    app, _ = line_server(redis_cluster.url, key_prefix, client, fake_line)
    line = app.extensions["tsunagu_line"]
    assert line.queue.wait.wanted() == 1
    assert line.queue.wait._probes
    line.stop()
    assert not line.queue.wait._probes
    client.close()
