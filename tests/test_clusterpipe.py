"""A cluster pipeline whose commands share one node goes straight to it (bot.clusterpipe);
everything else — several nodes, an unknown command, a redirection, a node that fails — is
redis-py's, with the same results. On the local 3+3 cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.cluster import ClusterPipeline

from bot import clusterpipe
from bot.redisconn import connect, script

SET_AND_GET = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"


@pytest.fixture
def cluster(redis_cluster) -> Iterator[Any]:
    client = connect(redis_cluster.url, cluster=True)
    assert isinstance(client, clusterpipe.Cluster)
    yield client
    client.close()


@pytest.fixture
def library(cluster, monkeypatch) -> list[int]:
    """How many commands each pipeline handed to redis-py's own pipeline carried."""
    handed: list[int] = []
    real = clusterpipe.Cluster.library_pipeline

    def counted(self):
        pipe = real(self)
        original = pipe.execute

        def execute(raise_on_error: bool = True):
            handed.append(len(pipe))
            return original(raise_on_error=raise_on_error)
        pipe.execute = execute
        return pipe
    monkeypatch.setattr(clusterpipe.Cluster, "library_pipeline", counted)
    return handed


def keys_on(client: Any, node_of: str, same: bool, n: int = 1) -> list[str]:
    """`n` fresh keys on the node of `node_of` (`same`) or on another node."""
    home = client.get_node_from_key(node_of).name
    out = []
    while len(out) < n:
        key = f"cp-test:{{{uuid.uuid4().hex}}}:k"
        if (client.get_node_from_key(key).name == home) == same:
            out.append(key)
    return out


@contextmanager
def stale_slot(client: Any) -> Iterator[tuple[str, str, Any]]:
    """Keys a and b on different nodes, and the client's slot map made to believe that a's
    slot is held by b's node (a resharding or failover it has not heard of) — until it learns
    the map again or the block ends. Yields (a, b, b's node)."""
    a = f"cp-test:{{{uuid.uuid4().hex}}}:a"
    (b,) = keys_on(client, a, same=False)
    wrong = client.get_node_from_key(b)
    slot = client.keyslot(a)
    cache = client.nodes_manager.slots_cache
    saved = cache[slot]
    try:
        cache[slot] = [wrong]
        yield a, b, wrong
    finally:
        cache[slot] = saved
        client.delete(a)
        client.delete(b)


def test_a_one_node_pipeline_goes_straight_to_its_node(cluster, library):
    a = f"cp-test:{{{uuid.uuid4().hex}}}:a"
    (b,) = keys_on(cluster, a, same=True)
    node = cluster.get_node_from_key(a)
    pipe = cluster.pipeline(transaction=False)
    script(pipe, SET_AND_GET, [a], "one")
    pipe.zadd(b, {"m": 2})
    pipe.zscore(b, "m")
    pipe.execute_command("WAIT", 0, 10, target_nodes=node)
    pipe.delete(a)
    pipe.delete(b)
    assert len(pipe) == 6
    assert pipe.execute() == [b"one", 1, 2.0, 0, 1, 1]
    assert library == []                              # redis-py's pipeline never used
    assert len(pipe) == 0 and pipe.execute() == []    # emptied, as redis-py's is


def test_several_nodes_or_an_unknown_command_go_through_redis_py(cluster, library):
    a = f"cp-test:{{{uuid.uuid4().hex}}}:a"
    (b,) = keys_on(cluster, a, same=False)
    pipe = cluster.pipeline(transaction=False)
    pipe.set(a, "1")
    pipe.set(b, "2")
    pipe.delete(a)
    pipe.delete(b)
    assert pipe.execute() == [True, True, 1, 1]
    assert library == [4]
    pipe = cluster.pipeline(transaction=False)
    pipe.set(a, "text")
    pipe.execute_command("OBJECT", "ENCODING", a)     # not one we know the key of
    pipe.delete(a)
    assert pipe.execute() == [True, b"embstr", 1]
    assert library == [4, 3]
    assert isinstance(cluster.pipeline(transaction=True), ClusterPipeline)


def test_a_moved_slot_is_sent_again_through_redis_py_which_learns_the_map(cluster, library):
    """A slot map gone stale (a resharding, a failover): the node answers MOVED, the command
    goes again through redis-py, and the client routes by the right map afterwards."""
    with stale_slot(cluster) as (a, _, wrong):
        assert cluster.get_node_from_key(a).name == wrong.name   # believed elsewhere
        pipe = cluster.pipeline(transaction=False)
        pipe.set(a, "x")
        pipe.get(a)
        assert pipe.execute() == [True, b"x"]
        assert library == [2]                           # both sent again, MOVED both
        assert cluster.get_node_from_key(a).name != wrong.name   # the map is right again


def test_a_node_that_fails_hands_its_pipelines_to_redis_py_for_a_while(cluster, library,
                                                                       monkeypatch):
    a = f"cp-test:{{{uuid.uuid4().hex}}}:a"
    node = cluster.get_node_from_key(a)
    monkeypatch.setattr(clusterpipe, "_shaky", {})
    real = redis.client.Pipeline.execute
    calls = []

    def cut(self, raise_on_error: bool = True):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset")
        return real(self, raise_on_error)
    monkeypatch.setattr(redis.client.Pipeline, "execute", cut)
    pipe = cluster.pipeline(transaction=False)
    pipe.set(a, "1")
    pipe.incr(a)
    assert pipe.execute() == [True, 2]                 # the whole pipeline, once, by redis-py
    assert library == [2]
    assert node.name in clusterpipe._shaky
    pipe = cluster.pipeline(transaction=False)         # that node: redis-py's way meanwhile
    pipe.get(a)
    assert pipe.execute() == [b"2"]
    assert library == [2, 1]
    monkeypatch.setattr(clusterpipe, "_shaky", {node.name: 0.0})   # its time is over
    pipe = cluster.pipeline(transaction=False)
    pipe.delete(a)
    assert pipe.execute() == [1]
    assert library == [2, 1]


def test_errors_are_raised_or_returned_in_place_as_redis_py_does(cluster, library):
    a = f"cp-test:{{{uuid.uuid4().hex}}}:a"
    pipe = cluster.pipeline(transaction=False)
    pipe.set(a, "text")
    pipe.incr(a)                                       # not an integer
    pipe.delete(a)
    got = pipe.execute(raise_on_error=False)
    assert got[0] is True and isinstance(got[1], redis.ResponseError) and got[2] == 1
    pipe.set(a, "text")
    pipe.incr(a)
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert library == []
    cluster.delete(a)


def test_a_wait_does_not_vouch_for_commands_sent_again_elsewhere(cluster, library):
    """A WAIT counts its own node's writes: when a command of the pipeline was redirected it
    ran on another node, unwaited — the WAIT reports 0 rather than the replica it did see."""
    with stale_slot(cluster) as (a, b, wrong):
        pipe = cluster.pipeline(transaction=False)
        pipe.set(b, "1")
        pipe.execute_command("WAIT", 1, 2000, target_nodes=wrong)
        assert pipe.execute() == [True, 1]              # a replica has it: WAIT says so
        pipe.set(a, "x")                                # MOVED, sent again to its node
        pipe.set(b, "2")
        pipe.execute_command("WAIT", 1, 2000, target_nodes=wrong)
        assert pipe.execute() == [True, True, 0]
        assert library == [1]


def test_a_failed_resend_keeps_the_results_of_what_ran(cluster, library, monkeypatch):
    """redis-py raises for a whole re-send it cannot deliver; the commands that ran on the
    node keep their results, the redirected ones get the error — in place, not raised."""
    def down(self, stack, raise_on_error):
        raise redis.exceptions.ClusterDownError("CLUSTERDOWN the cluster is down")
    monkeypatch.setattr(clusterpipe.NodePipeline, "_library", down)
    with stale_slot(cluster) as (a, b, _):
        pipe = cluster.pipeline(transaction=False)
        pipe.set(a, "x")
        pipe.set(b, "2")
        got = pipe.execute(raise_on_error=False)
        assert isinstance(got[0], redis.exceptions.ClusterDownError) and got[1] is True
        pipe.set(a, "x")
        pipe.set(b, "3")
        with pytest.raises(redis.exceptions.ClusterDownError):
            pipe.execute()
        assert cluster.get(b) == b"3"                   # it ran all the same


def test_a_keys_slot_is_remembered_and_the_same_as_redis_pys(cluster):
    from redis.cluster import RedisCluster

    for key in ("tsunagu:{abc}:session", b"tsunagu:{abc}:lock", "人:{相談}:x", 42, "{}x"):
        assert cluster.keyslot(key) == RedisCluster.keyslot(cluster, key)
    clusterpipe._slot_of.cache_clear()
    cluster.get_node_from_key("tsunagu:{abc}:session")
    cluster.get_node_from_key("tsunagu:{abc}:session")
    assert clusterpipe._slot_of.cache_info().hits == 1
