"""One way to reach Redis — one server or a Redis Cluster — for the web process, the worker,
the tests and the bench.

`REDIS_CLUSTER=1` makes the client a `redis.cluster.RedisCluster` (it follows MOVED/ASK
redirections and learns the new primary after a failover); `0` a plain `redis.Redis`; unset,
the server is asked once on connect (`INFO cluster`). Everything the bot writes keeps
multi-key commands and Lua scripts inside one hash slot (a person's `{pid}`, a case's
`{case:N}`, a stream shard's own tag), so the same code runs on both.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import redis
from redis.cluster import RedisCluster

from bot import logs

log = logs.get("redis")

Client = redis.Redis | RedisCluster


def discover(url: str, timeout: float = 2.0) -> bool:
    """Whether the server at `url` runs in cluster mode. An unreachable server counts as a
    single one (the bot starts in degraded mode); set REDIS_CLUSTER=1 to be sure."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    except redis.RedisError:
        return False
    finally:
        probe.close()


def connect(url: str, cluster: bool | None = None, socket_timeout: float = 2.0) -> Client:
    """A client for `url`; `cluster` None asks the server (see `discover`)."""
    if cluster is None:
        cluster = discover(url)
    if cluster:
        # require_full_coverage=False: while one primary fails over, the slots of the others
        # keep answering (people there are served as usual; the rest in degraded mode).
        return RedisCluster.from_url(url, socket_timeout=socket_timeout,
                                     socket_connect_timeout=2.0, require_full_coverage=False)
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                                health_check_interval=30)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def shard_of(name: str, shards: int) -> int:
    """A stable shard number for a person or a case (the same one in every process)."""
    return zlib.crc32(name.encode()) % shards if shards > 1 else 0


def _in_sync(info: dict) -> int:
    """Replicas in sync (`slaveN` state online): one still loading acknowledges nothing."""
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


class ReplicaWait:
    """Durable writes: after a write, `WAIT <replicas> <ms>` on every primary it touched, in the
    same pipeline (WAIT counts the writes of its own connection, and a cluster pipeline sends
    each node's commands on one connection, in order).

    `replicas` None means "1 if the primaries have replicas": asked with INFO replication and
    remembered for `refresh_s`, so a Redis without replicas never waits for nothing.
    """

    def __init__(self, client: Any, replicas: int | None, timeout_ms: int,
                 refresh_s: float = 30.0):
        self.client = client
        self.fixed = replicas
        self.timeout_ms = timeout_ms
        self.refresh_s = refresh_s
        self._auto = 0
        self._asked = float("-inf")

    def wanted(self) -> int:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if now - self._asked > self.refresh_s:
            self._asked = now
            try:
                self._auto = min(1, self._replicas())
            except redis.RedisError:
                self._auto = 0
        return self._auto

    def _replicas(self) -> int:
        if is_cluster(self.client):
            infos = self.client.info("replication", target_nodes=RedisCluster.PRIMARIES)
            counts = [_in_sync(i) for i in infos.values() if isinstance(i, dict)]
            return min(counts) if counts else 0
        return _in_sync(self.client.info("replication"))

    def add(self, pipe: Any, keys: list[str]) -> int:
        """Queue the WAITs for writes to `keys`; returns how many were queued (0: none wanted).
        Their results are the last ones of the pipeline."""
        want = self.wanted()
        if not want:
            return 0
        if not is_cluster(self.client):
            pipe.execute_command("WAIT", want, self.timeout_ms)
            return 1
        nodes = {}
        for key in keys:
            node = self.client.get_node_from_key(key)
            if node is not None:
                nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command("WAIT", want, self.timeout_ms, target_nodes=node)
        return len(nodes)

    def acknowledged(self, results: list[Any]) -> bool:
        """Whether every WAIT (the pipeline's last results) saw enough replicas."""
        want = self.wanted()
        return all(isinstance(r, int) and r >= want for r in results)


# What "Redis is unavailable" looks like: a server gone, or (on a cluster) a primary failing
# over — the slot is down or being moved. The caller answers in degraded mode or retries later.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError, redis.exceptions.RedisClusterException)


def node_of(client: Any, key: str) -> dict[str, Any]:
    """On a cluster, `target_nodes=` for a command on `key` whose keys redis-py cannot read
    itself (EVAL in a pipeline, XREADGROUP: "movablekeys"), which would otherwise cost a
    COMMAND GETKEYS round trip each time; on one Redis, nothing."""
    if not isinstance(client, RedisCluster):
        return {}
    return {"target_nodes": client.get_node_from_key(key)}


def script(pipe: Any, source: str, keys: list[str], *args: Any) -> Any:
    """Queue a Lua script in a pipeline, on one Redis or a cluster (whose pipeline has no
    `eval`; the first key's slot routes it). EVAL rather than EVALSHA: a registered Script
    costs an extra SCRIPT EXISTS round trip per pipeline."""
    return pipe.execute_command("EVAL", source, len(keys), *keys, *args,
                                **node_of(pipe, keys[0]))
