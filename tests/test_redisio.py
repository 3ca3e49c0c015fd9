"""bot.redisio: blocking sockets with the timeout in the kernel, no pool poll while warm —
and a Redis that hangs or closes a connection is still noticed as before."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bot.redisconn import connect
from bot.redisio import QuietConnection


def _kernel_timeout(sock: socket.socket, option: int) -> float:
    seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
    return seconds + micros / 1_000_000


def _pooled(pool: redis.ConnectionPool) -> tuple[QuietConnection, int]:
    """The connection the pool hands out next (put back: it comes out again first) and its
    server-side id."""
    conn = pool.get_connection()
    try:
        conn.send_command("CLIENT", "ID")
        return conn, int(conn.read_response())
    finally:
        pool.release(conn)


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


def test_connections_are_blocking_with_the_timeout_in_the_kernel(redis_url) -> None:
    if not redis_url:
        pytest.skip("needs a Redis server")
    client = connect(redis_url, cluster=False, socket_timeout=1.5)
    try:
        assert client.ping()
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            assert isinstance(conn, QuietConnection)
            assert conn._sock.gettimeout() is None  # no poll before each send and recv
            assert _kernel_timeout(conn._sock, socket.SO_RCVTIMEO) == pytest.approx(1.5)
            assert _kernel_timeout(conn._sock, socket.SO_SNDTIMEO) == pytest.approx(1.5)
        finally:
            pool.release(conn)
    finally:
        client.close()


def test_a_redis_that_never_answers_fails_within_the_timeout(silent_server: int) -> None:
    client = connect(f"redis://127.0.0.1:{silent_server}/0", cluster=False, socket_timeout=0.3)
    started = time.monotonic()
    try:
        # A timeout, as with redis-py's own sockets (the cluster client tells the two apart).
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 3.0  # connect + handshake reads time out at 0.3 s
    finally:
        client.close()


def test_a_connection_the_server_closed_is_replaced_before_use(redis_url) -> None:
    if not redis_url:
        pytest.skip("needs a Redis server")
    client = connect(redis_url, cluster=False)
    other = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        pool = client.connection_pool
        conn, own_id = _pooled(pool)
        other.client_kill_filter(_id=own_id)
        time.sleep(0.05)
        assert client.ping()  # the pool's check noticed the closed connection and replaced it
        assert pool.get_connection() is conn  # the same object, connected again
        try:
            assert conn._sock.gettimeout() is None  # blocking again after redis-py's check
        finally:
            pool.release(conn)
    finally:
        client.close()
        other.close()


def test_a_pipeline_on_a_cluster_whose_node_died_fails_fast(own_cluster) -> None:
    """The node of some keys SIGKILLed, its replica SIGSTOPped (no failover): a pipeline over
    them fails in seconds, not after redis-py's cluster pipeline retried command by command
    over dead connections (68 s with the pool's check skipped; see bot.redisio)."""
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


def test_a_cluster_client_uses_quiet_connections_on_every_node(redis_cluster) -> None:
    client = connect(redis_cluster.url, cluster=True, socket_timeout=2.0)
    try:
        keys = [f"tsunagu-test:{{quiet{i}}}" for i in range(12)]  # slots on every primary
        for key in keys:
            client.set(key, "1")
        for node in client.get_primaries():
            pool = node.redis_connection.connection_pool
            conn = pool.get_connection()
            try:
                assert isinstance(conn, QuietConnection)
                assert conn._sock.gettimeout() is None
                assert _kernel_timeout(conn._sock, socket.SO_RCVTIMEO) == pytest.approx(2.0)
            finally:
                pool.release(conn)
        for key in keys:
            client.delete(key)
    finally:
        client.close()
