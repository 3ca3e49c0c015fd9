"""A Redis Cluster primary dies (SIGKILL) in the middle of a LINE burst: its replica takes
over, and every event the webhook answered 200 for is answered exactly once — from the queue,
or at once in degraded mode while its slots had no primary. Events that got no 200 are
redelivered, as LINE does, and answered once too.

The real server runs under gunicorn (two workers) against its own local 3+3 cluster, since
this test breaks it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.channels.line_api import RETRY_NAMESPACE
from tests import line_helpers as lh
from tests.fakes.line_api import FakeLine, serve
from tests.test_burst import _event_of
from tests.test_line_process import GUNICORN, _free_port, post, server_env, start_server


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is installed with the package")
def test_primary_killed_during_a_burst_every_accepted_event_answered_once(own_cluster):
    cluster = own_cluster
    fake = FakeLine()
    server, line_url = serve(fake)
    port = _free_port()
    prefix = f"tsunagu-test-{uuid.uuid4().hex[:10]}"
    env = server_env(port, cluster.url, prefix, line_url, workers=2)
    events = [lh.text("こんにちは", user=f"U{n:032x}") for n in range(300)]
    token_to = {e["replyToken"]: e["webhookEventId"] for e in events}
    key_to = {str(uuid.uuid5(RETRY_NAMESPACE, e["webhookEventId"])): e["webhookEventId"]
              for e in events}
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    proc = start_server(port, env)

    def send(event: dict) -> None:
        try:
            status = post(port, lh.body(event), timeout=30)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, urllib.error.URLError):
            status = 0
        with lock:
            statuses[event["webhookEventId"]] = status

    # The victim: a primary other than the one in REDIS_URL (any would do for the server,
    # which knows every node; this one keeps the test's own bookkeeping simple).
    victim = next(p for p in cluster.primaries() if p != cluster.ports[0])
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(send, e) for e in events]
            while sum(1 for s in list(statuses.values()) if s == 200) < 100:
                time.sleep(0.01)
            cluster.kill(victim)
            for f in futures:
                f.result()
        assert cluster.wait_primaries(3, timeout=30), "the victim's replica took over"
        accepted = {eid for eid, s in statuses.items() if s == 200}
        assert len(accepted) >= 100, len(accepted)
        # LINE redelivers what did not get a 200.
        again = [dict(e, deliveryContext={"isRedelivery": True}) for e in events
                 if e["webhookEventId"] not in accepted]
        for event in again:
            send(event)
        assert all(statuses[e["webhookEventId"]] == 200 for e in events), \
            sorted(set(statuses.values()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(fake.delivered()) < len(events):
            time.sleep(0.1)
        time.sleep(1.5)  # anything answered twice would arrive now
        answered = [_event_of(r, token_to, key_to) for r in fake.delivered()]
        twice = {e for e in answered if answered.count(e) > 1}
        assert not twice, f"{len(twice)} events answered twice"
        assert accepted <= set(answered), f"{len(accepted - set(answered))} accepted, lost"
        assert set(answered) == {e["webhookEventId"] for e in events}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        server.shutdown()
