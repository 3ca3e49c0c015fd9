"""The real server process (gunicorn, as the Procfile starts it) killed right after it
answered LINE 200: started again, it still answers the event, and only once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bench.procs import GUNICORN, ServerFailed, start_gunicorn
from tests import line_helpers as lh
from tests.conftest import SECRET
from tests.fakes.line_api import FakeLine, serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(port: int, redis_url: str, key_prefix: str, line_url: str,
               workers: int) -> dict[str, str]:
    """The environment of a real server process pointed at our Redis and the fake LINE API;
    short reclaim and lock times so a restart takes over within a second or two."""
    return {**os.environ, "PORT": str(port), "REDIS_URL": redis_url, "BOT_SECRET_KEY": SECRET,
            "REDIS_KEY_PREFIX": key_prefix, "LINE_CHANNEL_SECRET": lh.LINE_SECRET,
            "LINE_CHANNEL_ACCESS_TOKEN": "tok", "LINE_API_BASE_URL": line_url,
            "LINE_RECLAIM_IDLE_MS": "500", "PERSON_LOCK_MS": "1500",
            "WEB_CONCURRENCY": str(workers)}


def start_server(port: int, env: dict) -> subprocess.Popen:
    """The real server on `port`, started as the bench starts it (bench.procs.start_gunicorn:
    the Procfile's command, loopback only); its log goes to a temporary file."""
    log = Path(tempfile.gettempdir()) / f"tsunagu-test-server-{port}.log"
    try:
        return start_gunicorn("server", "server:app", env, log, timeout=30, port=port).proc
    except ServerFailed as exc:
        raise RuntimeError(f"server did not start: {exc}") from None


def post(port: int, body: str, timeout: float = 5.0) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/callback", data=body.encode(),
                                 headers={"X-Line-Signature": lh.sign(body),
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is installed with the package")
def test_killed_after_200_the_event_is_answered_once(redis_url, key_prefix):
    if redis_url is None:
        pytest.skip("needs a Redis server shared between processes")
    fake = FakeLine(errors=[503] * 50)  # LINE down: the first process cannot deliver
    server, line_url = serve(fake)
    port = _free_port()
    env = server_env(port, redis_url, key_prefix, line_url, workers=1)
    first = start_server(port, env)
    try:
        ev = lh.text("死にたい", user="U" + "7" * 32)
        assert post(port, lh.body(ev)) == 200
        time.sleep(0.3)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert fake.delivered() == []
    with fake.lock:
        fake.errors.clear()
    second = start_server(port, env)
    try:
        got = fake.wait_for(1, timeout=30)
        assert len(got) == 1
        # LINE redelivers the same event: de-duplicated, not answered again.
        assert post(port, lh.body(dict(ev, deliveryContext={"isRedelivery": True}))) == 200
        time.sleep(1.5)
        assert len(fake.delivered()) == 1
        assert "0120-279-338" in str(got[0].body)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(10)
        server.shutdown()
