"""A card's number reported as not working ("wrong:<window>") on a Redis Cluster while the
node holding the staff queue's first shard has no primary: the person on another node gets
their real answer at once, and the report is queued for staff in a shard on their own node.

Before: the report always went to the queue's first shard, in the session's pipeline, so the
person waited for the client's retries on the down node (~4 s) and got the degraded answer."""

from __future__ import annotations

import time
import uuid

from bot.config import Settings
from bot.engine import Incoming
from bot.redisconn import beside, connect
from bot.wiring import build, wire_handoff
from tests.conftest import SECRET
from tests.fakes import net


def test_a_report_rides_on_the_persons_node_while_another_node_is_down(own_cluster):
    client = connect(own_cluster.url, cluster=True)  # a 2 s socket timeout, as in production

    def port(key: str) -> int:
        return int(client.get_node_from_key(key).port)

    for _ in range(200):  # a prefix whose staff queue has a shard off the first shard's node
        prefix = f"tsunagu-test-{uuid.uuid4().hex[:10]}"
        settings = Settings(redis_url=own_cluster.url, redis_cluster=True,
                            bot_secret_key=SECRET, key_prefix=prefix)
        services = build(settings, client=client)
        wire_handoff(services, None)  # the conversation side then queues reports for staff
        conv, store = services.conversations, services.store
        queues = conv.cases.queues.names
        if len({port(q) for q in queues}) > 1:
            break
    victim = port(queues[0])
    # People whose session is on another node, one that holds a staff-queue shard.
    visitors = [v for v in (f"visitor-{i}" for i in range(300))
                if port(store.key(conv.pseudonym("web", v), "session")) != victim
                and beside(client, store.key(conv.pseudonym("web", v), "session"), queues)][:3]
    assert visitors
    window = next(iter(conv.engine.pack.windows))
    for visitor in visitors:  # a session first, while every node is up
        conv.handle("web", visitor, Incoming("event", "first_contact"))

    took, events = [], []
    with net.node_down(own_cluster, victim):
        for visitor in visitors:
            started = time.monotonic()
            step = conv.handle("web", visitor, Incoming("tap", f"wrong:{window}"))
            took.append(time.monotonic() - started)
            events.append(step.events)
    print(f"\nstaff queue's first node down: {len(took)} reports, slowest "
          f"{max(took) * 1000:.0f} ms")
    for got in events:
        assert "degraded" not in got and f"wrong_number:{window}" in got, got
    assert max(took) < 1.0, took
    # Each report is in a shard on its person's node (not the first shard, which is down).
    homes = {port(store.key(conv.pseudonym("web", v), "session")) for v in visitors}
    queued = []
    for name in queues:
        if port(name) in homes:
            queued += [fields for _, fields in client.xrange(name)
                       if fields.get(b"k") == b"wrong_number"]
    assert len(queued) == len(visitors)
    assert all(fields[b"w"] == window.encode() for fields in queued)
    client.close()
