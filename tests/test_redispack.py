"""bot.redispack: the same bytes and the same errors as redis-py's own serializer."""

from __future__ import annotations

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from bot.redisconn import connect
from bot.redispack import PACKER, packed

_ENC = Encoder("utf-8", "strict", False)
LIBRARY = PythonRespSerializer(6000, _ENC.encode)  # redis-py's own, as without hiredis

COMMANDS = [
    ("SET", "key", "value"),
    ("SET", "tsunagu:{pid}:session", "寂しい 夜 😢"),        # UTF-8, outside the BMP too
    ("SET", b"k", b"\x00\xff\r\n binary"),
    ("EVAL", "return redis.call('get', KEYS[1])", 1, "k"),
    ("ZADD", "k", 1.5, "m", 0.1, "n", 1e20, "o", -0.0, "p"),
    ("ZADD", "k", float("inf"), "m", float("-inf"), "n"),
    ("PEXPIRE", "k", 86_400_000), ("SET", "k", -5), ("SET", "k", 10**30),
    ("SET", "k", memoryview(b"view")), ("SET", "k", bytearray(b"array")),
    ("SET", "k", ""), ("XADD", "s", "*", "p", "x" * 10_000),  # past the buffer cut-off
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),                 # a two-word command name
    (b"CLUSTER SLOTS",),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_same_bytes_as_redis_py(args: tuple) -> None:
    ours = b"".join(bytes(chunk) for chunk in PACKER.pack(*args))
    assert ours == b"".join(bytes(chunk) for chunk in LIBRARY.pack(*args))
    connection = redis.Connection()  # the serializer redis-py picks itself (hiredis's here)
    assert ours == b"".join(bytes(chunk) for chunk in connection.pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_it_refuses_the_same_way(bad: object) -> None:
    with pytest.raises(redis.DataError):
        LIBRARY.pack("SET", "k", bad)
    with pytest.raises(redis.DataError):
        PACKER.pack("SET", "k", bad)


def test_a_lone_surrogate_fails_as_with_redis_py() -> None:
    with pytest.raises(UnicodeEncodeError):
        LIBRARY.pack("SET", "k", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        PACKER.pack("SET", "k", "\ud800")


def test_the_bot_clients_use_it_and_round_trip(redis_url: str) -> None:
    client = connect(redis_url, cluster=False)
    try:
        conn = client.connection_pool.get_connection()
        assert conn._command_packer is PACKER
        client.connection_pool.release(conn)
        pipe = client.pipeline(transaction=False)
        pipe.set("tsunagu-test:pack", "寂しい")
        pipe.get("tsunagu-test:pack")
        pipe.zadd("tsunagu-test:packz", {"a": 1.5})
        pipe.zscore("tsunagu-test:packz", "a")
        pipe.delete("tsunagu-test:pack", "tsunagu-test:packz")
        assert pipe.execute() == [True, "寂しい".encode(), 1, 1.5, 2]
    finally:
        client.close()


def test_the_cluster_connection_class_keeps_its_base_and_uses_it() -> None:
    for base in (redis.Connection, redis.SSLConnection):
        cls = packed(base)
        assert issubclass(cls, base)
        assert cls(host="127.0.0.1", port=1)._command_packer is PACKER


def test_a_cluster_client_from_connect_packs_with_it_on_every_node(redis_cluster) -> None:
    client = connect(redis_cluster.url, cluster=True)
    try:
        keys = [f"tsunagu-test:{{pack{i}}}" for i in range(12)]  # slots on every primary
        pipe = client.pipeline()
        for key in keys:
            pipe.set(key, "寂しい")
        pipe.execute()
        assert [client.get(key) for key in keys] == ["寂しい".encode()] * len(keys)
        nodes = client.get_primaries()
        assert len(nodes) == 3
        for node in nodes:
            pool = node.redis_connection.connection_pool
            conn = pool.get_connection()
            try:
                assert conn._command_packer is PACKER
            finally:
                pool.release(conn)
        client.delete(*keys[:1])
        for key in keys[1:]:
            client.delete(key)
    finally:
        client.close()
