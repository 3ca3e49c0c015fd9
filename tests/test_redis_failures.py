"""How our Redis clients fail when a server hangs or a cluster node dies: within seconds, as
the degraded mode needs (bot.redisconn.connect's settings). Guards for any change to how the
clients use their sockets (README, "Where the rest went: context switches": two such changes
were tried and dropped)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bot.redisconn import connect


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()



def test_a_redis_that_never_answers_fails_within_the_timeout(silent_server: int) -> None:
    client = connect(f"redis://127.0.0.1:{silent_server}/0", cluster=False, socket_timeout=0.3)
    started = time.monotonic()
    try:
        # A timeout: the cluster client tells a hanging node from a refusing one.
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 3.0  # connect + handshake reads time out at 0.3 s
    finally:
        client.close()


def test_a_pipeline_on_a_cluster_whose_node_died_fails_fast(own_cluster) -> None:
    """The node of some keys SIGKILLed, its replica SIGSTOPped (no failover): a pipeline over
    them fails in seconds, not after redis-py's cluster pipeline retried command by command
    over dead connections (68 s when the pool skipped its check of a warm connection;
    README, "Where the rest went")."""
    import os
    import signal

    client = connect(own_cluster.url, cluster=True, socket_timeout=2.0)
    keys = [f"tsunagu-test:{{dead{i}}}" for i in range(30)]
    try:
        for key in keys:
            client.set(key, "1")
        pipe = client.pipeline()
        for key in keys:
            pipe.get(key)
        assert pipe.execute() == [b"1"] * len(keys)  # every connection warm
        victim = int(client.get_primaries()[0].port)
        replica = next(int(v["port"]) for k, v in own_cluster.node(victim).info(
            "replication").items() if k.startswith("slave") and isinstance(v, dict))
        os.kill(own_cluster.procs[replica].pid, signal.SIGSTOP)
        try:
            own_cluster.kill(victim)
            started = time.monotonic()
            pipe = client.pipeline()
            for key in keys:
                pipe.get(key)
            with pytest.raises(redis.RedisError):
                pipe.execute()
            assert time.monotonic() - started < 20
        finally:
            os.kill(own_cluster.procs[replica].pid, signal.SIGCONT)
    finally:
        client.close()


