"""A cluster pipeline whose commands all live on one node goes to that node as a plain
pipeline.

Deliberately not redis-py's `ClusterPipeline` for that case: it routes, groups and reads each
command through general machinery (request policies, fan-out, retries) that cost ~60 µs of
client CPU per pipeline more than a plain pipeline to the same node (measured: a three-command
pipeline, 3,000 times), and every LINE event makes two such pipelines — a person's keys, the
due entry and the day's figures all sit on the person's node (`redisconn.beside`). Anything
else is left to redis-py, unchanged: a pipeline over several nodes, a command whose node we do
not know from its arguments, a transaction, and every error of the cluster kind — a MOVED or
ASK reply (the slot moved: those commands are sent again through redis-py, which follows the
redirection and learns the new slot map; a WAIT in the pipeline then reports 0, since the
commands it was to cover ran elsewhere), TRYAGAIN, CLUSTERDOWN, or a connection that fails
(the whole pipeline is handed to redis-py, as its own retry would resend it, and that node
goes the library's way for `SHAKY_S`, so an outage costs a request one timeout, not two).
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands import CoreCommands
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)

# Commands whose only key is their first argument, as the bot's pipelines use them (a DEL or
# EXISTS of one key only). Any other command sends its pipeline through redis-py.
ONE_KEY = frozenset({
    "DEL", "EXISTS", "EXPIRE", "GET", "HDEL", "HGET", "HGETALL", "HINCRBY", "HMGET", "HSET",
    "INCR", "INCRBY", "LPUSH", "LRANGE", "PEXPIRE", "PEXPIREAT", "PTTL", "RPUSH", "SADD",
    "SCARD", "SET", "SISMEMBER", "SMEMBERS", "SREM", "TTL", "UNLINK", "XACK", "XADD", "XDEL",
    "XLEN", "XRANGE", "ZADD", "ZCARD", "ZRANGE", "ZRANGEBYSCORE", "ZREM", "ZREMRANGEBYSCORE",
    "ZSCORE"})
MULTI_KEY = frozenset({"DEL", "EXISTS", "UNLINK"})  # routed only with one key

# Replies that say "not here, not now": sent again through redis-py, which knows what to do.
REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)

SHAKY_S = 30.0

_shaky: dict[str, float] = {}  # node name → until when its pipelines go through redis-py
_shaky_lock = threading.Lock()


def _is_shaky(name: str) -> bool:
    until = _shaky.get(name)
    if until is None:
        return False
    if time.monotonic() < until:
        return True
    with _shaky_lock:
        if _shaky.get(name) == until:  # not a mark another thread has just renewed
            del _shaky[name]
    return False


def _mark_shaky(name: str) -> None:
    with _shaky_lock:
        _shaky[name] = time.monotonic() + SHAKY_S


class NodePipeline(CoreCommands):
    """Queues commands like a pipeline (`transaction=False`); `execute` sends them to their one
    node, or through redis-py's cluster pipeline (see the module's docstring)."""

    def __init__(self, cluster: RedisCluster):
        self.cluster = cluster
        self._stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def execute_command(self, *args: Any, **options: Any) -> NodePipeline:
        self._stack.append((args, options))
        return self

    def __len__(self) -> int:
        return len(self._stack)

    def __enter__(self) -> NodePipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reset()

    def reset(self) -> None:
        self._stack = []

    def get_node_from_key(self, key: Any, replica: bool = False) -> ClusterNode | None:
        return self.cluster.get_node_from_key(key, replica)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, self._stack = self._stack, []
        if not stack:
            return []
        node = self._one_node(stack)
        if node is None:
            return self._library(stack, raise_on_error)
        pipe = node.redis_connection.pipeline(transaction=False)
        for args, options in stack:
            pipe.execute_command(*args, **{k: v for k, v in options.items()
                                           if k != "target_nodes"})
        try:
            results = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            _mark_shaky(node.name)
            return self._library(stack, raise_on_error)
        again = [i for i, r in enumerate(results) if isinstance(r, REDIRECTED)]
        if again:
            try:
                resent = self._library([stack[i] for i in again], False)
            except (redis.RedisError, RedisClusterException) as exc:
                # redis-py raises for the whole re-send (its target unreachable, a slot no
                # node covers): those commands failed, the rest ran — each keeps its result.
                resent = [exc] * len(again)
            for i, result in zip(again, resent, strict=True):
                results[i] = result
            for i, (args, _) in enumerate(stack):
                if str(args[0]).upper() == "WAIT" and isinstance(results[i], int):
                    # A WAIT counts the writes of its own node: what was re-sent ran on
                    # another one, not waited for — so no replica is known to have it.
                    results[i] = 0
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def _one_node(self, stack: list[tuple[tuple[Any, ...], dict[str, Any]]]
                  ) -> ClusterNode | None:
        """The node of every command, if it is one node we may send to; else None."""
        node: ClusterNode | None = None
        for args, options in stack:
            target = options.get("target_nodes")
            if target is not None:
                if isinstance(target, list):
                    target = target[0] if len(target) == 1 else None
                if not isinstance(target, ClusterNode):
                    return None
            else:
                command = str(args[0]).upper()
                if command not in ONE_KEY or len(args) < 2 or (
                        command in MULTI_KEY and len(args) != 2):
                    return None
                try:
                    target = self.cluster.get_node_from_key(args[1])
                except (redis.RedisError, RedisClusterException):  # no primary for the slot
                    return None
                if target is None:
                    return None
            if node is None:
                node = target
            elif target.name != node.name:
                return None
        if node is None or node.redis_connection is None or _is_shaky(node.name):
            return None
        return node

    def _library(self, stack: list[tuple[tuple[Any, ...], dict[str, Any]]],
                 raise_on_error: bool) -> list[Any]:
        pipe = self.cluster.library_pipeline()
        for args, options in stack:
            pipe.execute_command(*args, **options)
        return pipe.execute(raise_on_error=raise_on_error)


@lru_cache(maxsize=16384)
def _slot_of(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


class Cluster(RedisCluster):
    """redis-py's cluster client whose non-transactional pipelines are `NodePipeline`s, and
    whose key → slot is remembered: a key's slot never changes (only the slot's node does,
    which is still looked up each time), and an event asks for the node of the same few keys
    ~17 times (routing, `redisconn.beside`, WAIT targets) at ~2 µs of encoding and CRC each."""

    def keyslot(self, key: Any) -> int:
        if isinstance(key, (str, bytes)) and self.encoder.encoding == "utf-8":
            return _slot_of(key)
        return super().keyslot(key)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)
        return NodePipeline(self)

    def library_pipeline(self) -> Any:
        return super().pipeline()
