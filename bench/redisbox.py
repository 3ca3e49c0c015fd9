"""The Redis the benchmark runs against, and what it tells about the server's use of it.

Which Redis: REDIS_URL if set, else 127.0.0.1:6379 if it answers, else a throwaway
`redis-server --save ''` on a free port (the same order as the tests); `--own-redis` forces
the throwaway one. The server gets a key prefix of its own, and every key under it is deleted
at the end.

Counting (deltas of one `INFO all` before and one after a level):
  commands    sum of `calls` over INFO commandstats. Commands that a Lua script runs count
              too (EVAL counts once, and so does each SET/ZADD inside it).
  round trips `total_reads_processed` of INFO stats: Redis counts one read event per batch
              of bytes it takes from a client socket, so a pipeline sent in one write is one,
              as is a blocking XREADGROUP. `calibrate()` checks this on the running Redis.
Both are server-wide, so the bench subtracts its own calls and watches CLIENT LIST for other
clients; when anyone else used the Redis during a level the figures are flagged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.procs import free_port

LOCAL = "redis://127.0.0.1:6379/0"
# Commands only the bench issues between two snapshots (never the server).
OWN_COMMANDS = {"info", "client|list", "client|id"}


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class RedisTarget:
    url: str
    source: str
    proc: subprocess.Popen | None = None
    workdir: str | None = None
    cluster: LocalCluster | None = None
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        from bot.redisconn import connect

        self.client = connect(self.url, cluster=self.cluster is not None, socket_timeout=10)
        self.own_id = -1 if self.cluster else int(self.client.client_id())

    def nodes(self) -> list[redis.Redis]:
        """Every live server: the one Redis, or each node of the local cluster."""
        if self.cluster is None:
            return [self.client]
        return [self.cluster.node(p) for p, proc in self.cluster.procs.items()
                if proc.poll() is None]

    @property
    def version(self) -> str:
        return str(self.nodes()[0].info("server").get("redis_version", "?"))

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.client.delete(*batch))
                batch = []
        if batch:
            deleted += int(self.client.delete(*batch))
        return deleted

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def choose(own: bool = False, cluster: bool = False) -> RedisTarget:
    if cluster:
        try:
            local = start_cluster()
        except ClusterFailed as exc:
            raise SystemExit(f"bench: {exc}") from None
        return RedisTarget(local.url, "local 3+3 Redis Cluster (throwaway)", cluster=local)
    env = os.environ.get("REDIS_URL")
    if env and not own:
        if not _answers(env):
            raise SystemExit(f"bench: REDIS_URL={env} does not answer")
        return RedisTarget(env, "REDIS_URL")
    if not own and _answers(LOCAL):
        return RedisTarget(LOCAL, "127.0.0.1:6379 (shared)")
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("bench: no Redis: set REDIS_URL or install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tsunagu-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        if _answers(url):
            return RedisTarget(url, "throwaway redis-server", proc=proc, workdir=workdir)
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("bench: the throwaway redis-server did not start")


@dataclass
class Snapshot:
    at: float
    calls: dict[str, int]
    reads: int
    connections: int
    cpu: float
    clients: list[dict]
    replica_cpu: float = 0.0  # the part of `cpu` spent by replicas (a cluster's)


def snapshot(target: RedisTarget) -> Snapshot:
    """INFO and CLIENT LIST of the Redis, summed over the nodes of a cluster."""
    calls: dict[str, int] = {}
    reads = connections = 0
    cpu = replica_cpu = 0.0
    clients: list[dict] = []
    at = 0.0
    for node in target.nodes():
        info = node.info("all")
        at = time.perf_counter()
        if target.cluster is None:
            clients += node.client_list()
        for k, v in info.items():
            if k.startswith("cmdstat_"):
                name = k.removeprefix("cmdstat_")
                calls[name] = calls.get(name, 0) + int(v["calls"])
        reads += int(info["total_reads_processed"])
        connections += int(info["total_connections_received"])
        spent = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        cpu += spent
        if info.get("role") == "slave":
            replica_cpu += spent
    return Snapshot(at=at, calls=calls, reads=reads, connections=connections, cpu=cpu,
                    clients=clients, replica_cpu=replica_cpu)


@dataclass
class Usage:
    """What the server asked of Redis between two snapshots."""

    calls: dict[str, int]
    round_trips: int
    cpu_s: float
    foreign: str  # why the figures may include other clients' work; "" when clean
    replica_cpu_s: float = 0.0  # the part of `cpu_s` spent by replicas

    @property
    def commands(self) -> int:
        return sum(self.calls.values())


def combined(uses: list[Usage]) -> Usage:
    """Several windows' usage as one (a level's rounds)."""
    calls: dict[str, int] = {}
    for use in uses:
        for name, n in use.calls.items():
            calls[name] = calls.get(name, 0) + n
    return Usage(calls=calls, round_trips=sum(u.round_trips for u in uses),
                 cpu_s=sum(u.cpu_s for u in uses),
                 foreign=", ".join(dict.fromkeys(u.foreign for u in uses if u.foreign)),
                 replica_cpu_s=sum(u.replica_cpu_s for u in uses))


def _port(client: dict) -> int:
    try:
        return int(str(client.get("addr", "")).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def usage(target: RedisTarget, before: Snapshot, after: Snapshot,
          our_ports: Iterable[int]) -> Usage:
    """Deltas, less the bench's own INFO and CLIENT LIST (one of each in the window)."""
    calls = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()
             if k not in OWN_COMMANDS and v - before.calls.get(k, 0) > 0}
    # The window holds the CLIENT LIST of `before` and the INFO of `after`: two reads.
    # The window holds one INFO per node (and one CLIENT LIST on one Redis).
    own_reads = 2 if target.cluster is None else len(target.nodes())
    round_trips = after.reads - before.reads - own_reads
    ours = set(our_ports)
    window = after.at - before.at
    others = [c for c in after.clients
              if int(c.get("id", -1)) != target.own_id and _port(c) not in ours]
    busy = [c for c in others if float(c.get("idle", 1e9)) < window
            or float(c.get("age", 1e9)) < window]
    ours_before = sum(1 for c in before.clients if _port(c) in ours)
    ours_after = sum(1 for c in after.clients if _port(c) in ours)
    new_foreign = (after.connections - before.connections) - max(0, ours_after - ours_before)
    notes = []
    if target.cluster is not None:
        notes.append("cluster: other clients not checked")
    elif busy:
        notes.append(f"{len(busy)} other client(s) active")
    if new_foreign > 0 and target.cluster is None:
        notes.append(f"{new_foreign} other connection(s) opened")
    return Usage(calls=calls, round_trips=round_trips, cpu_s=after.cpu - before.cpu,
                 foreign=", ".join(notes), replica_cpu_s=after.replica_cpu - before.replica_cpu)


def calibrate(target: RedisTarget, pipelines: int = 50, size: int = 5) -> tuple[int, int]:
    """Check the round-trip method: `pipelines` pipelines of `size` commands from the bench
    should count as `pipelines` reads. Returns (expected, counted); (0, 0) on a cluster,
    where a pipeline is one read per node it touches."""
    if target.cluster is not None:
        return 0, 0
    key = "tsunagu-bench-calibration"

    def reads() -> int:
        return int(target.client.info("stats")["total_reads_processed"])

    start = reads()
    for _ in range(pipelines):
        pipe = target.client.pipeline(transaction=False)
        for _ in range(size):
            pipe.incr(key)
        pipe.execute()
    counted = reads() - start - 1  # the second INFO's own read
    target.client.delete(key)
    return pipelines, counted


def memory_usage(target: RedisTarget, keys: list[str], chunk: int = 500) -> list[int | None]:
    """MEMORY USAGE of each key (None for a key that does not exist), pipelined."""
    out: list[int | None] = []
    for i in range(0, len(keys), chunk):
        pipe = target.client.pipeline(transaction=False)
        for key in keys[i:i + chunk]:
            pipe.memory_usage(key)
        out += [None if v is None else int(v) for v in pipe.execute()]
    return out


# -- a local Redis Cluster (tests, `make bench BENCH_CLUSTER=1`) ----------------------------


class ClusterFailed(RuntimeError):
    """The local cluster did not come up; the message says where it stopped."""


def _cluster_ports(count: int, low: int = 30000, high: int = 44990) -> list[int]:
    """`count` loopback ports below 55000 whose bus port (port + 10000) is free too."""
    import random
    import socket

    ports: list[int] = []
    tries = 0
    while len(ports) < count:
        tries += 1
        if tries > 2000:
            raise ClusterFailed("no free ports for a local cluster")
        port = random.randint(low, high)
        if port in ports or port + 10000 in ports:
            continue
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    """3 primaries + 3 replicas on loopback, no disk: `redis-server --cluster-enabled yes`
    created with `redis-cli --cluster create ... --cluster-replicas 1`."""

    ports: list[int]
    procs: dict[int, subprocess.Popen]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2,
                           socket_connect_timeout=1)

    def primaries(self) -> list[int]:
        out = []
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            try:
                if self.node(port).info("replication").get("role") == "master":
                    out.append(port)
            except redis.RedisError:
                continue
        return sorted(out)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to the others, as a machine dying."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def healthy(self) -> bool:
        """cluster_state ok on every live node, each slot with a live primary."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            try:
                if self.node(port).info("cluster").get("cluster_enabled") != 1:
                    return False
                state = self.node(port).execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = state.decode() if isinstance(state, bytes) else str(state)
            if "cluster_state:ok" not in text:
                return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.2)
        raise ClusterFailed(f"the cluster was not healthy within {timeout:.0f} s")

    def wait_primaries(self, count: int = 3, timeout: float = 30.0) -> bool:
        """Wait until `count` live nodes are primaries (a replica took over) and all agree
        the cluster is ok; False if that did not happen in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.primaries()) >= count and self.healthy():
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def online_replicas(info: dict) -> int:
    """Replicas of a primary that are in sync (INFO replication `slaveN` state online)."""
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


def start_cluster(node_timeout_ms: int = 1000, ports: list[int] | None = None) -> LocalCluster:
    """Start 6 nodes (on `ports` if given, else free ones) and create the cluster; raises
    ClusterFailed (redis-server missing, ports, creation) so CI can treat it as an error."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        raise ClusterFailed("redis-server and redis-cli are needed for a local cluster")
    ports = list(ports) if ports else _cluster_ports(6)
    workdir = tempfile.mkdtemp(prefix="tsunagu-cluster-")
    procs: dict[int, subprocess.Popen] = {}
    cluster = LocalCluster(ports=ports, procs=procs, workdir=workdir)
    try:
        for port in ports:
            node_dir = os.path.join(workdir, str(port))
            os.makedirs(node_dir)
            procs[port] = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
                 str(node_timeout_ms), "--cluster-require-full-coverage", "no",
                 "--repl-diskless-sync-delay", "0",
                 "--save", "", "--appendonly", "no", "--dir", node_dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(200):
                if _answers(url):
                    break
                time.sleep(0.05)
            else:
                raise ClusterFailed(f"node :{port} did not start")
        create = subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise ClusterFailed(f"redis-cli --cluster create: {create.stdout[-300:]}"
                                f"{create.stderr[-300:]}")
        cluster.wait_healthy()
        # Replicas attached and in sync, so WAIT and failover have someone to count on.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [cluster.node(p).info("replication") for p in cluster.primaries()]
            if len(infos) == 3 and all(online_replicas(i) >= 1 for i in infos):
                break
            time.sleep(0.2)
        else:
            raise ClusterFailed("the replicas did not come in sync")
        return cluster
    except BaseException:
        cluster.close()
        raise
