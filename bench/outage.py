"""`python -m bench.outage`: what one outage costs, measured rather than asserted.

- deadline: `LineApi.deliver` against a deadline (the person lock's expiry) while LINE is
  unreachable (every connect blackholed: a loopback listener whose backlog is full), default
  timeouts (2 s connect, 5 s read): how long it took, and by how much it overran.
- shard: a local 3+3 Redis Cluster; one LINE ticket shard alone on its node, which is killed
  (`--stop`: SIGSTOPped) while its replica is SIGSTOPped (no failover); the dispatcher started
  then. Tickets of people on the live shards are sent one by one: the webhook's time, the time
  to their answer, and the connections tried to the down node (by caller). Then the replica
  gets SIGCONT and takes over: the tickets the shard held are answered, each once.

Not a test: timing belongs here. Needs redis-server and redis-cli for `shard` (~1 min).
Run it from an older checkout with `PYTHONPATH=<that checkout>` to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import traceback
from collections import Counter
from typing import Any

USER = "U" + "d" * 32


def deadline() -> None:
    from bot.channels.line_api import DeliveryPending, LineApi
    from tests.fakes.net import blackhole

    with blackhole() as port:
        _deadline_runs(LineApi(f"http://127.0.0.1:{port}", "tok"), DeliveryPending)


def _deadline_runs(api: Any, pending: type[Exception]) -> None:
    for token in ("rt", None):
        for left in (0.5, 1.0, 3.0):
            started = time.monotonic()
            with contextlib.suppress(pending):
                api.deliver(USER, "ev", token, 0.0, [{"type": "text", "text": "x"}],
                            deadline=started + left)
            took = time.monotonic() - started
            print(f"{'reply' if token else 'push '} left {left:.1f} s: took {took:.2f} s, "
                  f"overran by {max(0.0, took - left):.2f} s")


def shard(stop: bool, down_s: float) -> None:
    import redis.connection

    from bench.redisbox import start_cluster
    from bot.redisconn import connect
    from tests import line_helpers as lh
    from tests.fakes.line_api import FakeLine, serve
    from tests.fakes.net import line_users, lonely_shard, ticket_app
    from tests.test_line import post

    cluster = start_cluster()
    fake = FakeLine()
    line_server, line_url = serve(fake)
    client = connect(cluster.url, cluster=True)  # 2 s socket timeout, as in production

    prefix, down, victim = lonely_shard(client, "tsunagu-bench")
    app = ticket_app(cluster.url, client, prefix, line_url)  # every event through a ticket
    line = app.extensions["tsunagu_line"]

    asked: Counter = Counter()
    connect_once = redis.connection.AbstractConnection.connect

    def counted(self, *args, **kwargs):
        if getattr(self, "port", None) == victim:
            ours = [f for f in traceback.extract_stack() if "/bot/" in f.filename]
            asked[ours[-1].name if ours else "redis-py"] += 1
        return connect_once(self, *args, **kwargs)

    redis.connection.AbstractConnection.connect = counted

    def people(in_down: bool, n: int, tag: str) -> list[str]:
        return line_users(client, line, down, victim, in_down, n, tag)

    web = app.test_client()
    held = [lh.text("こんにちは", user=u) for u in people(True, 3, "d")]
    for event in held:
        post(web, event)
    replica = next(int(v["port"]) for k, v in cluster.node(victim).info("replication").items()
                   if k.startswith("slave") and isinstance(v, dict))
    os.kill(cluster.procs[replica].pid, signal.SIGSTOP)
    if stop:
        os.kill(cluster.procs[victim].pid, signal.SIGSTOP)
    else:
        cluster.kill(victim)
    went = time.monotonic()
    line.dispatcher.start()
    time.sleep(3)
    asked.clear()
    started, accepts, answers = time.monotonic(), [], []
    for user in people(False, 10, "a"):
        before, t = len(fake.delivered()), time.monotonic()
        post(web, lh.text("こんにちは", user=user))
        accepts.append(time.monotonic() - t)
        t = time.monotonic()
        got = fake.wait_for(before + 1, timeout=15)
        answers.append(time.monotonic() - t if len(got) > before else float("inf"))
        time.sleep(0.3)
    window = time.monotonic() - started

    def ms(values: list[float]) -> str:
        return f"median {sorted(values)[len(values) // 2] * 1000:.0f} ms, " \
               f"max {max(values) * 1000:.0f} ms"

    how = "SIGSTOPped" if stop else "killed"
    print(f"shard {down.rsplit(':', 1)[-1]}: its primary {how}, its replica SIGSTOPped")
    print(f"webhook (accept) for live-shard people: {ms(accepts)}")
    print(f"their answer after the webhook's 200: {ms(answers)}")
    print(f"connections tried to the down node in {window:.1f} s: {sum(asked.values())} "
          f"{dict(asked)}")
    time.sleep(max(0.0, down_s - (time.monotonic() - went)))
    os.kill(cluster.procs[replica].pid, signal.SIGCONT)
    if stop:
        os.kill(cluster.procs[victim].pid, signal.SIGCONT)
    back, total = time.monotonic(), len(held) + len(answers)
    got = fake.wait_for(total, timeout=30)
    print(f"after SIGCONT: {len(got)}/{total} answered in {time.monotonic() - back:.1f} s")
    time.sleep(2)
    twice = Counter(r.body.get("replyToken") or r.headers.get("x-line-retry-key")
                    for r in fake.delivered())  # a reply's token, a push's retry key
    print(f"answered twice: {sum(1 for n in twice.values() if n > 1)}")
    line.stop()
    line_server.shutdown()
    cluster.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.outage",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("deadline", help="LineApi.deliver against a deadline, LINE unreachable")
    s = sub.add_parser("shard", help="the LINE dispatcher with one ticket shard down")
    s.add_argument("--stop", action="store_true", help="SIGSTOP the primary, not SIGKILL")
    s.add_argument("--down-s", type=float, default=12.0, help="how long the shard stays down")
    args = p.parse_args(argv)
    if args.what == "deadline":
        deadline()
    else:
        shard(args.stop, args.down_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
