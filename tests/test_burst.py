"""Load-shaped fault tests: 1,000 conversations at once, and the web process killed in the
middle of a burst. No answer lost, none duplicated, each person's order kept."""

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
from tests.test_line_process import GUNICORN, _free_port, post, server_env, start_server


@pytest.fixture
def redis_url(either_redis: str | None) -> str | None:
    """Every scenario here runs on one Redis and on a local 3+3 Redis Cluster."""
    return either_redis


def _event_of(received, token_to_event: dict[str, str], key_to_event: dict[str, str]) -> str:
    if received.path.endswith("/reply"):
        return token_to_event[received.body["replyToken"]]
    return key_to_event[received.headers["x-line-retry-key"]]


def test_a_thousand_conversations_in_parallel(line_app):
    app, fake = line_app
    users = [f"U{n:032x}" for n in range(1000)]
    now = int(time.time() * 1000)
    token_to = {}

    def resident(user: str) -> int:
        client = app.test_client()
        events = [lh.event("follow", user=user, ts_ms=now, reply_token=f"{user}-0"),
                  lh.tap("welcome", "start", user=user, ts_ms=now + 1, reply_token=f"{user}-1")]
        token_to[f"{user}-0"], token_to[f"{user}-1"] = (user, 0), (user, 1)
        body = lh.body(*events)
        return client.post("/callback", data=body.encode(),
                           headers={"X-Line-Signature": lh.sign(body)},
                           content_type="application/json").status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(resident, users))
    assert statuses == [200] * len(users)
    got = fake.wait_for(2 * len(users), timeout=180)
    assert len(got) == 2 * len(users), "every event answered"
    tokens = [r.body["replyToken"] for r in got]
    assert len(set(tokens)) == len(tokens), "no event answered twice"
    first_values: dict[str, list[tuple[float, int, str]]] = {}
    for r in got:
        user, index = token_to[r.body["replyToken"]]
        first = r.body["messages"][-1]["quickReply"]["items"][0]["action"]["data"]
        first_values.setdefault(user, []).append((r.at, index, first))
    for user, answers in first_values.items():
        ordered = [index for _, index, _ in sorted(answers)]
        assert ordered == [0, 1], user
        # follow → the welcome (first choice はじめる); start → the whose question (自分のこと)
        assert '"v":"start"' in sorted(answers)[0][2] and '"v":"self"' in sorted(answers)[1][2]


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is installed with the package")
def test_killed_during_a_burst_nothing_lost_nothing_twice(redis_url, key_prefix):
    if redis_url is None:
        pytest.skip("needs a Redis server shared between processes")
    fake = FakeLine()
    server, line_url = serve(fake)
    port = _free_port()
    env = server_env(port, redis_url, key_prefix, line_url, workers=2)
    events = [lh.text("こんにちは", user=f"U{n:032x}") for n in range(300)]
    token_to = {e["replyToken"]: e["webhookEventId"] for e in events}
    key_to = {str(uuid.uuid5(RETRY_NAMESPACE, e["webhookEventId"])): e["webhookEventId"]
              for e in events}
    accepted: set[str] = set()
    lock = threading.Lock()
    proc = start_server(port, env)

    def send(event: dict) -> None:
        try:
            if post(port, lh.body(event)) == 200:
                with lock:
                    accepted.add(event["webhookEventId"])
        except (OSError, urllib.error.URLError):
            pass  # the server is gone: LINE would redeliver

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(send, e) for e in events]
            while len(accepted) < 100:
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            for f in futures:
                f.result()
        assert 100 <= len(accepted) < len(events), len(accepted)
        proc = start_server(port, env)
        # LINE redelivers what it did not get a 200 for; we also redeliver the accepted ones
        # to show they are not answered twice.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda e: send(dict(e, deliveryContext={"isRedelivery": True})),
                          events))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(fake.delivered()) < len(events):
            time.sleep(0.1)
        time.sleep(1.0)
        answered = [_event_of(r, token_to, key_to) for r in fake.delivered()]
        assert set(answered) == {e["webhookEventId"] for e in events}, "every event answered"
        assert len(answered) == len(set(answered)), "no event answered twice"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        server.shutdown()
