"""Network conditions for tests and benches: an address that never answers a connect, and a
stream shard alone on one cluster node (to take that node down and nothing else)."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose connections are never made: a listening socket whose backlog is
    full drops every new SYN, so each connect waits its whole timeout (as to a host that is
    down), unlike a refused port (which fails at once)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = []
    try:
        while True:  # fill the backlog (one connection on Linux)
            client = socket.socket()
            client.settimeout(0.2)
            try:
                client.connect(("127.0.0.1", port))
            except TimeoutError:
                client.close()
                break
            held.append(client)
            if len(held) >= 64:
                raise RuntimeError("the backlog never filled")
        yield port
    finally:
        for client in held:
            client.close()
        server.close()


def lonely_shard(client: Any, base: str, shards: int = 4) -> tuple[str, str, int]:
    """(key prefix, LINE ticket shard, its node's port) for a prefix whose shard is alone on its
    node, and that node holds no key every answer writes (the day's figures: Tokyo's day, whose
    slot no prefix changes) — so that node can go down without touching anyone else."""
    from bot.streams import shard_names

    def port(key: str) -> int:
        return int(client.get_node_from_key(key).port)

    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 9 * 3600))
    for _ in range(500):
        prefix = f"{base}-{uuid.uuid4().hex[:10]}"
        names = shard_names(f"{prefix}:line:work", shards)
        by_node = Counter(port(n) for n in names)
        alone = [n for n in names if by_node[port(n)] == 1
                 and port(n) != port(f"{prefix}:{{fig:{day}}}:counts")]
        if alone:
            return prefix, alone[0], port(alone[0])
    raise RuntimeError("no prefix puts a shard alone on a node")


def line_users(client: Any, line: Any, down: str, victim: int, in_down: bool, n: int,
               tag: str) -> list[str]:
    """`n` LINE user ids whose own keys are on a live node (not `victim`), their tickets in
    shard `down` (`in_down`) or in another shard."""
    out, i = [], 0
    while len(out) < n:
        user = f"U{tag}{i:031x}"
        i += 1
        pid = line.conversations.pseudonym("line", user)
        own = int(client.get_node_from_key(f"{{{pid}}}").port)
        if own != victim and (line.queue.shards.of(pid) == down) == in_down:
            out.append(user)
    return out


def ticket_app(cluster_url: str, client: Any, prefix: str, line_url: str) -> Any:
    """The app on a cluster with LINE (fake at `line_url`), no worker started, every event
    answered through a ticket (no claim on the webhook) and follow-ups off (they keep 16
    shards of their own, some on the node an outage test stops)."""
    from bot.config import Settings
    from bot.wiring import build
    from server import create_app
    from tests import line_helpers as lh
    from tests.conftest import SECRET

    settings = Settings(redis_url=cluster_url, redis_cluster=True, bot_secret_key=SECRET,
                        key_prefix=prefix, line_channel_secret=lh.LINE_SECRET,
                        line_channel_access_token="tok", line_api_base_url=line_url,
                        line_reclaim_idle_ms=2000, lock_ms=5000)
    app = create_app(settings, services=build(settings, client=client), start_workers=False)
    dispatcher = app.extensions["tsunagu_line"].dispatcher
    dispatcher.can_claim = lambda: False
    dispatcher.send_followups = lambda now=None: 0
    return app


@contextlib.contextmanager
def node_down(cluster: Any, port: int) -> Iterator[int]:
    """Cluster node `port` (a primary) SIGKILLed and its replica SIGSTOPped, so no failover
    happens inside the block: its slots have no primary. On leaving, the replica goes on and
    takes over (`cluster.wait_primaries`). Yields the replica's port."""
    import os
    import signal

    replica = next(int(v["port"]) for k, v in cluster.node(port).info("replication").items()
                   if k.startswith("slave") and isinstance(v, dict))
    os.kill(cluster.procs[replica].pid, signal.SIGSTOP)
    try:
        cluster.kill(port)
        yield replica
    finally:
        os.kill(cluster.procs[replica].pid, signal.SIGCONT)
