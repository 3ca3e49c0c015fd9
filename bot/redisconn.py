"""One way to reach Redis — one server or a Redis Cluster — for the web process, the worker,
the tests and the bench.

`REDIS_CLUSTER=1` makes the client a `redis.cluster.RedisCluster` (ours, `bot.clusterpipe.Cluster`,
sends a pipeline whose commands share one node straight to it; it follows MOVED/ASK
redirections and learns the new primary after a failover); `0` a plain `redis.Redis`; unset,
the server is asked once on connect (`INFO cluster`). Everything the bot writes keeps
multi-key commands and Lua scripts inside one hash slot (a person's `{pid}`, a case's
`{case:N}`, a stream shard's own tag), so the same code runs on both.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from bot import logs
from bot.clusterpipe import Cluster, NodePipeline
from bot.redispack import PACKER, packed

log = logs.get("redis")


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
    """A client for `url`; `cluster` None asks the server (see `discover`). With no cluster
    node answering, a `LazyCluster`: the process starts even then."""
    if cluster is None:
        cluster = discover(url)
    if cluster:
        # require_full_coverage=False: while one primary fails over, the slots of the others
        # keep answering (people there are served as usual; the rest in degraded mode).
        # The cluster client takes no `command_packer`: its connections get it through their
        # class. Not over TLS: for rediss:// RedisCluster puts back its own SSLConnection
        # class from the URL, so those keep redis-py's packer (same bytes, more CPU).
        packer = {} if url.startswith("rediss:") else {"connection_class": packed(
            redis.Connection)}
        lazy = LazyCluster(url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                           require_full_coverage=False, **packer)
        # A node answers: the cluster client itself, as before. Else one built later, the
        # process answering in degraded mode meanwhile.
        try:
            return lazy.cluster()
        except redis.ConnectionError:
            return lazy
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                                health_check_interval=30, command_packer=PACKER)


class LazyCluster:
    """A `RedisCluster` built on first use, so a process starts in degraded mode while no
    node answers (redis-py's constructor asks the nodes for the slot map and raises) and
    serves normally once one does.

    Until then every command raises `redis.ConnectionError` — the error the degraded mode
    already handles — and the nodes are asked again at most every `retry_s`, by one thread
    at a time (the others wait for its answer rather than fail while it may succeed). Once
    built, it only forwards to the real client, which follows the cluster as before (MOVED,
    failovers).
    """

    def __init__(self, url: str, retry_s: float = 1.0, **options: Any):
        self.url = url
        self.options = options
        self.retry_s = retry_s
        # One try asks each start-up node in turn: wait for it rather than fail meanwhile.
        self.wait_s = 2 * float(options.get("socket_connect_timeout") or 2.0) + 1.0
        self._client: Cluster | None = None
        self._next_try = float("-inf")
        self._building = threading.Lock()
        self._outage = logs.Throttle(60.0)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def cluster(self) -> Cluster:
        """The real client; redis.ConnectionError while no node has answered yet."""
        client = self._client
        if client is not None:
            return client
        if time.monotonic() < self._next_try:
            raise redis.ConnectionError("Redis Cluster: no node has answered yet")
        if not self._building.acquire(timeout=self.wait_s):
            raise redis.ConnectionError("Redis Cluster: still asking the nodes")
        try:
            if self._client is None and time.monotonic() >= self._next_try:
                try:
                    self._client = Cluster.from_url(self.url, **self.options)
                except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                    self._next_try = time.monotonic() + self.retry_s
                    if self._outage.ready():
                        logs.event(log, "cluster_unreachable", logging.WARNING,
                                   error=type(exc).__name__)
                    raise redis.ConnectionError("Redis Cluster: no node answers") from exc
                logs.event(log, "cluster_connected")
            if self._client is None:  # another thread's try just failed
                raise redis.ConnectionError("Redis Cluster: no node has answered yet")
            return self._client
        finally:
            self._building.release()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe these: not Redis calls
            raise AttributeError(name)
        return getattr(self.cluster(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


Client = redis.Redis | RedisCluster | LazyCluster


def is_cluster(client: Any) -> bool:
    return _cluster_class(type(client))


@lru_cache(maxsize=64)
def _cluster_class(cls: type) -> bool:
    """Memoised per class: redis-py's client classes have a typing.Protocol among their bases,
    whose isinstance check runs Python code, and this is asked for every script queued."""
    return issubclass(cls, RedisCluster | LazyCluster | NodePipeline)


@lru_cache(maxsize=4096)
def shard_of(name: str, shards: int) -> int:
    """A stable shard number for a person or a case (the same one in every process).
    Memoised (bounded): each event asks it for its person several times."""
    return zlib.crc32(name.encode()) % shards if shards > 1 else 0


# What names a server and lets us in, from a client's connection settings (for `ReplicaWait`).
_ADDRESS = {"host", "port", "db", "username", "password", "credential_provider",
            "unix_socket_path", "path"}


def _in_sync(info: dict) -> int:
    """Replicas in sync (`slaveN` state online): one still loading acknowledges nothing."""
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


class ReplicaWait:
    """Durable writes: after a write, `WAIT <replicas> <ms>` on every primary it touched, in the
    same pipeline (WAIT counts the writes of its own connection, and a cluster pipeline sends
    each node's commands on one connection, in order).

    `replicas` None means "1 if the primaries have replicas", so a Redis without replicas never
    waits for nothing: asked with INFO replication of each primary on a connection of our own
    with a short timeout (`ask_s`, no retries), and remembered for `refresh_s`. Only the first
    ask runs inline (a write must know whether to wait); after that the answer is renewed on
    a background thread, one at a time, and writes go on meanwhile with the last answer — a
    primary that is down or hanging costs no request its timeout. A primary that does not
    answer is left out (its writes fail anyway, and its replica, once it has taken over, is
    asked at the next renewal); when none answers, the last answer stays.

    While a node is down a write therefore still queues `WAIT 1` on each live primary it wrote
    (when they have replicas): the durability promise holds there. When no replica
    acknowledges in time the caller decides as before (README, "Durable 200"): accepted and
    counted (`line_wait`), or refused with `REDIS_WAIT_TIMEOUT=refuse`.
    """

    def __init__(self, client: Any, replicas: int | None, timeout_ms: int,
                 refresh_s: float = 30.0, ask_s: float = 0.5):
        self.client = client
        self.fixed = replicas
        self.timeout_ms = timeout_ms
        self.refresh_s = refresh_s
        self.ask_s = ask_s
        self._auto = 0
        self._asked: float | None = None  # when the last ask began (None: never)
        self._asking = threading.Lock()   # one ask at a time
        self._probes: dict[str, redis.Redis] = {}  # touched only while `_asking` is held
        self._closed = False

    def wanted(self) -> int:
        if self.fixed is not None:
            return self.fixed
        asked = self._asked
        if asked is None:
            with self._asking:
                if self._asked is None:
                    self._ask()
        elif time.monotonic() - asked > self.refresh_s and self._asking.acquire(blocking=False):
            # Renewed off the request path; this write keeps the last answer.
            try:
                threading.Thread(target=self._ask, args=(True,), daemon=True,
                                 name="replica-wait").start()
            except Exception as exc:  # no thread (a limit, the interpreter exiting): the
                self._asked = time.monotonic()  # write goes on, renewed again in refresh_s
                self._asking.release()
                logs.failure("redis.replicas_thread", exc, logging.WARNING)
        return self._auto

    def _ask(self, held: bool = False) -> None:
        """Ask every primary (`held`: the caller took `_asking` for this thread to release)."""
        self._asked = time.monotonic()
        try:
            counts = []
            for probe in self._primaries():
                try:
                    counts.append(_in_sync(probe.info("replication")))
                except redis.RedisError:  # down or hanging: left out this time
                    continue
            if counts:
                self._auto = min(1, min(counts))
        except Exception as exc:  # no slot map yet (a LazyCluster before any node answered)
            if not isinstance(exc, UNAVAILABLE):
                logs.failure("redis.replicas", exc)
        finally:
            if held:
                self._asking.release()

    def _primaries(self) -> list[redis.Redis]:
        """A client of our own per primary: short timeouts, no retries (`ask_s`). The probe of
        a node that is no longer a primary (failed over, removed) is closed here: otherwise
        every primary ever seen would keep its socket for the life of the process."""
        if self._closed:
            return []
        if is_cluster(self.client):
            pools = [node.redis_connection.connection_pool
                     for node in self.client.get_primaries() if node.redis_connection]
        else:
            pools = [self.client.connection_pool]
        out: dict[str, redis.Redis] = {}
        for pool in pools:
            kwargs = pool.connection_kwargs
            name = f"{kwargs.get('host')}:{kwargs.get('port')}"
            probe = self._probes.get(name)
            if probe is None:
                picked = {k: v for k, v in kwargs.items() if k in _ADDRESS or k.startswith("ssl")}
                # from_pool: the probe owns its pool, so closing the probe closes its sockets.
                probe = self._probes[name] = redis.Redis.from_pool(redis.ConnectionPool(
                    connection_class=pool.connection_class, socket_timeout=self.ask_s,
                    socket_connect_timeout=self.ask_s, retry=Retry(NoBackoff(), 0), **picked))
            out[name] = probe
        for name in [n for n in self._probes if n not in out]:
            self._probes.pop(name).close()
        return list(out.values())

    def close(self) -> None:
        """Close the probes (at shutdown). Waits for an ask under way (at most `ask_s` per
        primary), so that it cannot open a probe after this; later asks open none."""
        with self._asking:
            self._closed = True
            for probe in self._probes.values():
                probe.close()
            self._probes.clear()

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
# Any failure of a Redis call: redis-py's cluster client raises some (no node for a slot, a
# cluster it cannot reach) as RedisClusterException, which is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError,
                                             redis.exceptions.RedisClusterException)


@lru_cache(maxsize=512)
def spread_tags(stem: str, count: int) -> tuple[tuple[int, str], ...]:
    """(slot, hash tag) of `count` keys spread over a cluster's slot space, by slot: for each
    of `count` equal slot ranges the first `<stem>:<n>` that falls in it. The same in every
    process; a balanced cluster of up to `count` / 2 primaries holds one on each of them."""
    width = REDIS_CLUSTER_HASH_SLOTS // count
    found: dict[int, tuple[int, str]] = {}
    n = 0
    while len(found) < count:
        tag = f"{stem}:{n}"
        slot = key_slot(tag.encode())
        found.setdefault(slot // width, (slot, tag))
        n += 1
    return tuple(found[i] for i in range(count))


def node_name(client: Any, key: str) -> str | None:
    """The name of the cluster node holding `key`; None on one Redis, or while its slot has
    no primary known."""
    if not is_cluster(client):
        return None
    try:
        node = client.get_node_from_key(key)
    except UNAVAILABLE:
        return None
    return getattr(node, "name", None)


def place(client: Any, key: str) -> str:
    """What an outage of `key` is counted by (`bot.streams.Outages`): its node, so a node
    that is down costs one timeout per pause whichever of its keys is tried; `key` itself
    while no node is known for its slot (a dead primary forgotten, no slot map yet)."""
    return node_name(client, key) or key


def beside(client: Any, near: str, keys: Sequence[str], first: int = 0) -> str | None:
    """The first of `keys` (from index `first`, wrapping) held by the node that holds `near`.

    On a cluster a write that rides in the pipeline of a person's keys then touches no other
    node: a node that is down fails the answers of its own people only. None on one Redis,
    when no key of `keys` is on that node, or while the slot map is not known."""
    home = node_name(client, near)
    if home is None:
        return None
    for i in range(len(keys)):
        key = keys[(first + i) % len(keys)]
        if node_name(client, key) == home:
            return key
    return None


def node_of(client: Any, key: str) -> dict[str, Any]:
    """On a cluster, `target_nodes=` for a command on `key` whose keys redis-py cannot read
    itself (EVAL in a pipeline, XREADGROUP: "movablekeys"), which would otherwise cost a
    COMMAND GETKEYS round trip each time; on one Redis, nothing."""
    if not is_cluster(client):
        return {}
    return {"target_nodes": client.get_node_from_key(key)}


def script(pipe: Any, source: str, keys: list[str], *args: Any) -> Any:
    """Queue a Lua script in a pipeline, on one Redis or a cluster (whose pipeline has no
    `eval`; the first key's slot routes it). EVAL rather than EVALSHA: a registered Script
    costs an extra SCRIPT EXISTS round trip per pipeline."""
    return pipe.execute_command("EVAL", source, len(keys), *keys, *args,
                                **node_of(pipe, keys[0]))
