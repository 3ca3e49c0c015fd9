"""Security review, finding 10: no thread per webhook while Redis is down (the staff queue's
backlog alarm and Slack's rate limit are tested with the handoff, in test_handoff_backend)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bot.config import Settings
from tests import line_helpers as lh
from tests.conftest import SECRET
from tests.fakes.line_api import FakeLine, serve


@pytest.fixture
def dead_redis_line(key_prefix):
    from bot.wiring import build
    from server import create_app

    fake = FakeLine(hang_s=0.3)
    server, url = serve(fake)
    settings = Settings(redis_url="redis://127.0.0.1:1/0", bot_secret_key=SECRET,
                        key_prefix=key_prefix, line_channel_secret=lh.LINE_SECRET,
                        line_channel_access_token="tok", line_api_base_url=url,
                        line_dispatch_threads=3)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.2,
                                  socket_timeout=0.2)
    app = create_app(settings, services=build(settings, client=client), start_workers=False)
    yield app, fake
    app.extensions["tsunagu_line"].stop()
    server.shutdown()


def test_no_thread_per_webhook_while_redis_is_down(dead_redis_line):
    app, fake = dead_redis_line
    client = app.test_client()
    def answering() -> int:  # the pool's threads, or (before) one thread per webhook
        return sum("degraded" in t.name for t in threading.enumerate())

    most = 0
    for i in range(40):
        body = lh.body(lh.text("死にたい", user="U" + f"{i:032d}"))
        resp = client.post("/callback", data=body.encode(), content_type="application/json",
                           headers={"X-Line-Signature": lh.sign(body)})
        assert resp.status_code == 200
        most = max(most, answering())
    assert 1 <= most <= 3  # the degraded pool has as many threads as LINE_DISPATCH_THREADS
    # Every one of them is still answered (statelessly: the crisis lines).
    assert len(fake.wait_for(40, timeout=60)) == 40


def test_the_line_queue_backlog_is_measured_about_once_a_second(redis_url, key_prefix,
                                                                 redis_client, caplog):
    """The LINE queue is never trimmed; its length is watched (gauge + alarm) — measured on
    the first accept and then at most once a second, not with one XLEN per shard per event."""
    from prometheus_client import REGISTRY

    from bot.wiring import build
    from server import create_app

    fake = FakeLine()
    server, url = serve(fake)
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_api_base_url=url, queue_backlog_alert=3)
    app = create_app(settings, services=build(settings, client=redis_client),
                     start_workers=False)  # nobody answers: the queue only grows
    try:
        client = app.test_client()

        def send(n: int) -> None:
            body = lh.body(lh.text("こんにちは", user=f"U{n:032x}"))
            assert client.post("/callback", data=body,
                               headers={"X-Line-Signature": lh.sign(body)}).status_code == 200

        def gauge() -> float:
            return REGISTRY.get_sample_value("tsunagu_queue_backlog", {"queue": "line"}) or 0

        queue = app.extensions["tsunagu_line"].queue
        queue.backlog._sample.interval = 0.5
        send(0)
        first = gauge()
        assert first == 2      # measured on the first accept: its ticket and its due entry
        for n in range(1, 5):
            send(n)
        assert gauge() == first                # not re-measured within the interval
        time.sleep(0.6)
        send(5)
        assert gauge() == 12   # measured again: every ticket and due entry still waits
        assert [r for r in caplog.records if "queue_backlog" in r.getMessage()]
    finally:
        app.extensions["tsunagu_line"].stop()
        server.shutdown()


@pytest.mark.parametrize("threads", [2, 16])
def test_the_line_channel_is_sized_from_its_threads(redis_url, key_prefix, redis_client,
                                                    threads):
    """Readers, answering threads, degraded answers and kept LINE connections all follow
    LINE_DISPATCH_THREADS: each may hold a LINE call at once."""
    from bot.channels.line import build_line
    from bot.wiring import build

    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_dispatch_threads=threads)
    line = build_line(build(settings, client=redis_client), threads=threads)
    assert line.dispatcher.threads == threads and line.dispatcher.readers == threads
    assert line.degraded._workers._count == threads
    assert line.api.connections >= line.dispatcher.readers + 2 * threads


def test_one_reader_with_the_in_process_redis(key_prefix):
    """`make run`'s in-process Redis wakes every blocked reader on each write: one reads all."""
    from bot.channels.line import build_line
    from bot.wiring import build

    settings = Settings(redis_url=None, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok")
    assert settings.embedded_redis
    line = build_line(build(settings), threads=settings.line_dispatch_threads)
    assert line.dispatcher.readers == 1 and line.dispatcher.threads == 16
    assert not line.dispatcher.hands_over
