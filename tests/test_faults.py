"""Faults with real processes: Redis stopped and started again in the middle of a conversation.
No 5xx, degraded answers meanwhile, and the conversation goes on when Redis is back."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis

from bot.config import Settings
from tests.conftest import SECRET

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="tsunagu-fault-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_proc():
    proc = RedisProcess()
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.resume()
        proc.stop()
    shutil.rmtree(proc.dir, ignore_errors=True)


@pytest.fixture
def app_on(redis_proc):
    from bot.wiring import build
    from server import create_app

    settings = Settings(redis_url=redis_proc.url, bot_secret_key=SECRET)
    client = redis.Redis.from_url(redis_proc.url, socket_connect_timeout=0.3, socket_timeout=0.3)
    return create_app(settings, services=build(settings, client=client))


def _state(resp) -> str:
    return [r for r in resp.json["replies"] if r["type"] == "question"][-1]["state"]


def test_redis_hangs_then_comes_back_conversation_resumes(redis_proc, app_on):
    web = app_on.test_client()
    web.post("/api/chat", json={"type": "start"})
    web.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    assert _state(web.post("/api/chat", json={"type": "tap", "value": "self",
                                              "state": "whose"})) == "age"
    redis_proc.pause()
    try:
        for body in ({"type": "text", "text": "死にたい"}, {"type": "tap", "value": "u18",
                                                          "state": "age"}):
            resp = web.post("/api/chat", json=body)
            assert resp.status_code == 200
            assert resp.json["replies"][-1]["choices"]
        crisis = web.post("/api/chat", json={"type": "text", "text": "死にたい"}).json
        assert crisis["replies"][0]["urgent"]
        assert app_on.test_client().get("/readyz").status_code == 503
    finally:
        redis_proc.resume()
    # Back: the stored session was kept, so the person is still at the age question.
    resp = web.post("/api/chat", json={"type": "tap", "value": "u18", "state": "age"})
    assert resp.status_code == 200 and _state(resp) == "concern"
    assert app_on.test_client().get("/readyz").status_code == 200


def test_redis_restarted_empty_the_bot_starts_over_kindly(redis_proc, app_on):
    web = app_on.test_client()
    web.post("/api/chat", json={"type": "start"})
    web.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    redis_proc.stop()
    resp = web.post("/api/chat", json={"type": "tap", "value": "self", "state": "whose"})
    assert resp.status_code == 200 and resp.json["replies"][-1]["choices"]
    redis_proc.start()
    resp = web.post("/api/chat", json={"type": "tap", "value": "self", "state": "whose"})
    assert resp.status_code == 200
    # The session was lost with the data: a stale tap on a new session → welcome again.
    assert _state(resp) == "welcome"
    resp = web.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    assert _state(resp) == "whose"
