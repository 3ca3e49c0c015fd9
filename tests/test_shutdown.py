"""A worker's shutdown stops the app's background threads cleanly (server.shutdown, called by
gunicorn.conf.py's `worker_exit`): an answer under way when gunicorn gets SIGTERM is sent once,
before the worker exits, and leaves nothing for the sweeper."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from bench.procs import GUNICORN, start_gunicorn
from bot.channels.line_queue import GROUP, due_key
from bot.config import Settings
from bot.store import pseudonym
from bot.streams import Shards
from tests import line_helpers as lh
from tests.conftest import SECRET
from tests.fakes.line_api import FakeLine, serve
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack
from tests.test_tenants import make_app

USER = "U" + "6" * 32
HANG_S = 1.5


def _lock_is_a_drainers(client: redis.Redis, lock: str, timeout: float = 10.0) -> bool:
    """Wait until someone answering LINE events (token "d:…") holds the person's lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (client.get(lock) or b"").startswith(b"d:"):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is installed with the package")
@pytest.mark.parametrize("path", ["claimed", "ticket"])
def test_sigterm_lets_the_answer_in_flight_finish(path, redis_url, key_prefix):
    """`claimed`: the webhook's own process answers in its pool (the common path). `ticket`:
    the person's lock was held by someone else (a staff answer being relayed), so the event
    went to the queue and a dispatcher loop thread answers it — the thread that, with no
    `worker_exit` hook, died with the process: lock, inbox and due entry were left to the
    sweeper (the claimed path was already waited for at exit by bot.workers)."""
    if redis_url is None:
        pytest.skip("needs a Redis server shared with the server process")
    client = redis.Redis.from_url(redis_url)
    fake = FakeLine(hang_s=HANG_S)
    fake_server, line_url = serve(fake)
    env = {**os.environ, "REDIS_URL": redis_url, "BOT_SECRET_KEY": SECRET,
           "REDIS_KEY_PREFIX": key_prefix, "LINE_CHANNEL_SECRET": lh.LINE_SECRET,
           "LINE_CHANNEL_ACCESS_TOKEN": "tok", "LINE_API_BASE_URL": line_url,
           "PERSON_LOCK_MS": "10000", "WEB_CONCURRENCY": "1"}
    log = Path(tempfile.gettempdir()) / f"tsunagu-test-shutdown-{key_prefix}.log"
    pid = pseudonym(SECRET, "line", USER)
    lock = f"{key_prefix}:{{{pid}}}:lock"
    server = start_gunicorn("server", "server:app", env, log, timeout=30)
    try:
        if path == "ticket":
            client.set(lock, "relay", px=10_000)
        body = lh.body(lh.text("こんにちは", user=USER))
        req = urllib.request.Request(f"{server.base}/callback", data=body.encode(),
                                     headers={"X-Line-Signature": lh.sign(body),
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        if path == "ticket":
            time.sleep(0.2)
            client.delete(lock)  # the relay is done: the ticket's drain takes the person
        assert _lock_is_a_drainers(client, lock)
        time.sleep(0.3)  # the reply is at the fake LINE, which holds it HANG_S
        assert fake.delivered() == []
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(20) == 0
    finally:
        server.stop()
        fake_server.shutdown()
    shards = Shards(f"{key_prefix}:line:work", Settings().stream_shards)
    try:
        # Nothing left for the sweeper: lock released, inbox empty, due entry and ticket gone.
        assert client.get(lock) is None
        assert client.zcard(f"{key_prefix}:{{{pid}}}:line:inbox") == 0
        for name in shards:
            assert client.zcard(due_key(name)) == 0, name
            if client.exists(name):
                assert client.xpending(name, GROUP)["pending"] == 0, name
        # Answered once, and the worker saw LINE take it before exiting.
        text = log.read_text(errors="replace")
        assert text.count('"event": "message"') == 1, text[-2000:]
        assert [r.path for r in fake.received
                if "/message/" in r.path] == ["/v2/bot/message/reply"]
        assert len(fake.delivered()) == 1
        assert '"event": "background_stopped"' in text
    finally:
        client.delete(*[due_key(name) for name in shards])  # shard 0's is outside the prefix
        client.close()


def test_shutdown_stops_the_single_city_app_once(redis_url, key_prefix, redis_client,
                                                  fake_line):
    from bot.wiring import build
    from server import create_app, shutdown

    _fake, url = fake_line
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_api_base_url=url, line_dispatch_threads=2)
    app = create_app(settings, services=build(settings, client=redis_client))
    dispatcher = app.extensions["tsunagu_line"].dispatcher
    mine = list(dispatcher._workers)
    assert mine and all(t.is_alive() for t in mine)
    shutdown(app, timeout=5.0)
    assert not any(t.is_alive() for t in mine)
    assert not dispatcher.can_claim()  # no new work
    shutdown(app, timeout=5.0)  # a second call: nothing left to do, nothing raised
    shutdown(lambda environ, start_response: [])  # not an app of ours: left alone


def test_shutdown_stops_every_city(tmp_path, redis_url, key_prefix, redis_client):
    from server import shutdown

    line, slack = FakeLine(), FakeSlack()
    line_server, line_url = serve(line)
    slack_server, slack_url = serve_slack(slack)
    try:
        app = make_app(tmp_path, redis_url, key_prefix, redis_client,
                       (line, line_url, slack, slack_url))
        cities = app.extensions["tsunagu_cities"]
        assert len(cities) == 2
        threads = [t for one in cities.values()
                   for t in one.extensions["tsunagu_line"].dispatcher._workers]
        assert threads and all(t.is_alive() for t in threads)
        shutdown(app, timeout=5.0)
        assert not any(t.is_alive() for t in threads)
        shutdown(app, timeout=5.0)
    finally:
        line_server.shutdown()
        slack_server.shutdown()
