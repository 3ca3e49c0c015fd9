"""A worker's shutdown stops the app's background threads cleanly (server.shutdown, called by
gunicorn.conf.py's `worker_exit`): an answer under way when gunicorn gets SIGTERM is sent once,
before the worker exits, and leaves nothing for the sweeper."""

from __future__ import annotations

import importlib.util
import os
import signal
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from bench.procs import GUNICORN, start_gunicorn
from bot.channels.line import DegradedAnswers
from bot.channels.line_events import Job
from bot.channels.line_queue import GROUP, Dispatcher, due_key
from bot.channels.line_webhook import answer_all_degraded
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


def _people(line, count: int, tag: str) -> list[tuple[str, Job]]:
    """`count` people, one text event each, as the webhook would have accepted them."""
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        user = "U" + f"{tag}{i}".rjust(32, "0")
        out.append((line.conversations.pseudonym("line", user),
                    Job(event_id=uuid.uuid4().hex[:26].upper(), kind="text", value="こんにちは",
                        state=None, reply_token=uuid.uuid4().hex, timestamp_ms=now,
                        sealed_user=line.sealer.seal(user))))
    return out


def _claims(line, people: list[tuple[str, Job]]) -> list:
    claims = []
    for pid, job in people:
        claims += line.queue.accept([(pid, job)], claim=True).claims
    assert [c.pid for c in claims] == [pid for pid, _ in people]
    return claims


def _tickets(client: redis.Redis, line) -> int:
    return sum(int(client.xinfo_stream(name)["entries-added"])
               for name in line.queue.shards if client.exists(name))


def test_stop_answers_the_claims_still_waiting_in_the_pool(line_app, redis_client):
    """Claims queued in the pool (not started) when the dispatcher stops are answered within
    the budget. Before, `stop` dropped them: each kept its person's lock until it expired
    (~30 s), the event coming back only with its due entry, and 4 of 8 were not answered."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    dispatcher = line.dispatcher
    assert dispatcher.threads == 4
    fake.hang_s = 0.5
    people = _people(line, 8, "a")
    dispatcher.answer_claims(_claims(line, people))
    time.sleep(0.2)                                       # 4 at LINE, 4 waiting
    started = time.monotonic()
    ended = dispatcher.stop(5.0)
    assert time.monotonic() - started < 5.0
    assert sorted(r.body["replyToken"] for r in fake.delivered()) == \
        sorted(job.reply_token for _, job in people)
    for pid, _ in people:                                 # every lock let go
        assert not redis_client.exists(line.queue.store.key(pid, "lock"))
    assert _tickets(redis_client, line) == 0              # nothing needed another process
    assert ended is True                                  # nothing left running


def test_stop_gives_back_the_claims_it_has_no_time_for(line_app, redis_client):
    """A budget too short for all: the claims still waiting at the deadline are taken out
    of the pool and given back (lock released, ticket written), and another dispatcher
    answers them at once — each event once."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    dispatcher = line.dispatcher
    fake.hang_s = 1.0
    people = _people(line, 8, "b")
    dispatcher.answer_claims(_claims(line, people))
    time.sleep(0.2)                                       # 4 at LINE, 4 waiting
    ended = dispatcher.stop(0.3)
    assert fake.delivered() == []
    for pid, _ in people[4:]:                             # the waiting ones: given back
        assert not redis_client.exists(line.queue.store.key(pid, "lock"))
    # The stopping dispatcher's readers, blocked in a read when it stopped, wake up on those
    # tickets: they pass them on (written again, acknowledged), never drain them here.
    for t in dispatcher._workers:
        t.join(5)
    for pid, _ in people[4:]:
        assert not redis_client.exists(line.queue.store.key(pid, "lock"))
    shards = [name for name in line.queue.shards if redis_client.exists(name)]
    assert sum(redis_client.xlen(name) for name in shards) == 4   # one ticket each
    assert sum(redis_client.xpending(name, GROUP)["pending"] for name in shards) == 0
    assert ended is False                                 # the running ones were still out
    other = Dispatcher(line.queue, line.conversations, line.api, line.sealer, line.clock,
                       threads=2, block_ms=200)
    other.start()
    try:
        got = fake.wait_for(8, timeout=20)
    finally:
        other.stop(5.0)
    assert sorted(r.body["replyToken"] for r in got) == \
        sorted(job.reply_token for _, job in people)
    time.sleep(0.5)
    assert len(fake.delivered()) == 8                     # once each
    for pid, _ in people:
        assert not redis_client.exists(line.queue.store.key(pid, "lock"))


def test_stop_lets_degraded_answers_finish_on_an_open_pool(line_app, caplog):
    """Degraded answers (the only copy of their events: Redis never stored them) are waited
    for beside the dispatcher's, each with the whole budget, and the LINE pool is not closed
    under those still running or waiting. Before, the dispatcher's wait came first, then
    the pool was closed at the deadline: the last 2 of 6 failed with ClosedPoolError."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    line.degraded = DegradedAnswers(workers=2)
    fake.hang_s = 1.0
    for one in _people(line, 6, "c"):
        line.degraded.submit(answer_all_degraded, line, [one])
    started = time.monotonic()
    line.stop(1.5)
    assert time.monotonic() - started < 1.5 + 1.0
    assert len(fake.wait_for(6, timeout=10)) == 6
    assert "line.degraded" not in caplog.text


def test_a_degraded_answer_after_stop_still_reaches_line(line_app, caplog):
    """A webhook still in flight when the worker stopped answers in degraded mode on its own
    thread (the pool takes no more): the closed LINE pool must not refuse it."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    line.stop(5.0)                                        # everything ended: pool closed
    line.degraded.submit(answer_all_degraded, line, _people(line, 1, "d"))
    assert len(fake.delivered()) == 1                     # answered inline, at once
    assert "line.degraded" not in caplog.text


def _gunicorn_conf() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gunicorn_conf", Path(__file__).resolve().parents[1] / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_worker_exit_takes_the_graceful_timeout_gunicorn_runs_with(monkeypatch):
    """--graceful-timeout on the command line counts, not only gunicorn.conf.py's value."""
    import server

    conf = _gunicorn_conf()
    asked: list[float] = []
    monkeypatch.setattr(server, "shutdown", lambda app, timeout: asked.append(timeout))
    app = object()
    conf.worker_exit(None, SimpleNamespace(wsgi=app, cfg=SimpleNamespace(graceful_timeout=4)))
    conf.worker_exit(None, SimpleNamespace(cfg=SimpleNamespace(graceful_timeout=4)))  # master
    assert asked == [2.0]


def test_the_shutdown_budget_is_what_is_left_before_the_sigkill():
    """The master SIGKILLs graceful_timeout after SIGTERM; the worker's draining came first."""
    from server import EXIT_MARGIN_S, MIN_SHUTDOWN_S, shutdown_budget

    assert shutdown_budget(10, None) == 5.0                    # no SIGTERM: half, as before
    assert shutdown_budget(10, 0.5) == 5.0                     # quick drain: at most half
    assert shutdown_budget(10, 6.0) == pytest.approx(4.0 - EXIT_MARGIN_S)
    assert shutdown_budget(10, 9.0) == MIN_SHUTDOWN_S          # stalled requests took it all
    assert shutdown_budget(10, 30.0) == MIN_SHUTDOWN_S


def test_worker_exit_counts_the_draining_since_sigterm(monkeypatch):
    """post_worker_init notes the SIGTERM on the worker and still hands it to gunicorn's own
    handler (installed before, by init_signals); worker_exit then gives shutdown only what
    is left before the master's SIGKILL."""
    import server

    conf = _gunicorn_conf()
    asked: list[float] = []
    monkeypatch.setattr(server, "shutdown", lambda app, timeout: asked.append(timeout))
    handled: list[int] = []
    worker = SimpleNamespace(wsgi=object(), cfg=SimpleNamespace(graceful_timeout=10))
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: handled.append(sig))
    try:
        conf.post_worker_init(worker)
        before = time.monotonic()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)   # as gunicorn's master sends
        assert handled == [signal.SIGTERM]
        noted = getattr(worker, conf.SIGTERM_AT)
        assert before <= noted <= time.monotonic()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)   # a second one changes nothing
        assert getattr(worker, conf.SIGTERM_AT) == noted
    finally:
        signal.signal(signal.SIGTERM, previous)
    setattr(worker, conf.SIGTERM_AT, time.monotonic() - 6.0)   # 6 s spent draining
    conf.worker_exit(None, worker)
    setattr(worker, conf.SIGTERM_AT, time.monotonic() - 12.0)  # past graceful_timeout
    conf.worker_exit(None, worker)
    assert asked[0] == pytest.approx(4.0 - server.EXIT_MARGIN_S, abs=0.1)
    assert asked[1] == server.MIN_SHUTDOWN_S
