"""`python -m bench.waitcost`: what the durable accept costs — LineQueue.accept of one event
with WAIT off and with WAIT 1 (auto), on 127.0.0.1:6379 and on a local 3+3 cluster. Figures
on a shared machine are noisy: compare the two lines of one run, not runs."""

from __future__ import annotations

import statistics
import time
import uuid

from bench.redisbox import LOCAL, start_cluster
from bot.channels.line_events import Job
from bot.channels.line_queue import LineQueue
from bot.crypto import Sealer
from bot.redisconn import ReplicaWait, connect
from bot.store import SessionStore


def _job() -> tuple[str, Job]:
    return uuid.uuid4().hex, Job(event_id=uuid.uuid4().hex[:26], kind="text", value="hi",
                                 state=None, reply_token="t",
                                 timestamp_ms=int(time.time() * 1000), sealed_user="s")


def main(calls: int = 400, warmup: int = 100) -> None:
    cluster = start_cluster()
    try:
        for label, url in (("one Redis", LOCAL), ("cluster", cluster.url)):
            client = connect(url)
            prefix = f"tsunagu-waitcost-{uuid.uuid4().hex[:8]}"
            store = SessionStore(client, 3600, prefix)
            for wait in (None, ReplicaWait(client, None, 200)):
                queue = LineQueue(client, store, Sealer(("x" * 40,), "line-job"), wait=wait)
                for _ in range(warmup):
                    queue.accept([_job()])
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    queue.accept([_job()])
                    times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                mode = f"WAIT {wait.wanted()}" if wait else "WAIT off"
                print(f"{label:10} {mode:9} p50 {statistics.median(times):.2f} ms  "
                      f"p99 {times[int(len(times) * 0.99)]:.2f} ms  ({calls} calls)")
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=f"{prefix}:*"):
                pipe.delete(key)
            pipe.execute()
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
