"""Start-up with REDIS_CLUSTER=1 while no cluster node answers: the process starts, residents
get the degraded answer (crisis lines, 24-hour lines, the list) on the web chat and on LINE,
as when one Redis is down; once a cluster answers at REDIS_URL, the same process serves
normally, without a restart."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable

import pytest

from bench.redisbox import ClusterFailed, _cluster_ports, start_cluster
from bot.config import Settings
from bot.redisconn import LazyCluster
from tests import line_helpers as lh
from tests.conftest import SECRET

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")) and os.environ.get("CI")
    != "true", reason="needs redis-server and redis-cli for the cluster that comes up later")


def wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def texts(body: dict) -> list[str]:
    return [m.get("text", "") for m in body["messages"]]


def test_no_node_answers_at_start_degraded_answers_then_normal_ones(fake_line):
    from server import create_app

    fake, line_url = fake_line
    ports = _cluster_ports(6)  # free now: nothing listens at REDIS_URL yet
    settings = Settings(redis_url=f"redis://127.0.0.1:{ports[0]}/0", redis_cluster=True,
                        bot_secret_key=SECRET, key_prefix=f"tsunagu-test-{uuid.uuid4().hex[:10]}",
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_api_base_url=line_url, line_reclaim_idle_ms=500, lock_ms=5000)
    app = create_app(settings)  # its own client, as under gunicorn: used to raise here
    line = app.extensions["tsunagu_line"]
    line.api.backoff = (0.05, 0.1, 0.2)
    services = app.extensions["tsunagu"]
    assert isinstance(services.redis, LazyCluster) and not services.redis.connected
    notice = services.pack.msg("degraded.notice", "ja")
    web = app.test_client()

    def chat() -> dict:
        resp = web.post("/api/chat", json={"type": "start"})
        assert resp.status_code == 200
        return resp.json

    def callback(event: dict) -> int:
        body = lh.body(event)
        return app.test_client().post("/callback", data=body.encode(),
                                      headers={"X-Line-Signature": lh.sign(body)},
                                      content_type="application/json").status_code

    cluster = None
    try:
        # Degraded: the notice, the crisis and 24-hour lines, the list; nothing stored.
        answer = chat()
        assert notice in [r.get("text") for r in answer["replies"]]
        assert any(r["type"] == "cards" for r in answer["replies"])
        assert answer["replies"][-1]["choices"]
        assert web.get("/readyz").status_code == 503
        assert callback(lh.text("こんにちは", user="U" + "1" * 32)) == 200
        got = fake.wait_for(1)
        assert len(got) == 1 and notice in texts(got[0].body)

        # The cluster comes up where REDIS_URL points: the same process serves normally.
        try:
            cluster = start_cluster(ports=ports)
        except ClusterFailed as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI: the local Redis Cluster did not start: {exc}")
            pytest.skip(f"no local Redis Cluster: {exc}")
        up = time.monotonic()
        assert wait(lambda: web.get("/readyz").status_code == 200, timeout=30)
        ready_s = time.monotonic() - up
        assert services.redis.connected
        answer = chat()
        assert notice not in [r.get("text") for r in answer["replies"]]
        assert answer["replies"][-1]["state"] == "welcome"
        # LINE: accepted into the queue and answered by the dispatcher threads that started
        # while nothing answered.
        assert callback(lh.event("follow", user="U" + "2" * 32)) == 200
        got = fake.wait_for(2, timeout=30)
        assert len(got) == 2
        assert notice not in texts(got[1].body) and texts(got[1].body)
        print(f"\n/readyz 200 {ready_s:.1f} s after start_cluster returned (healthy)")
    finally:
        line.stop()
        if cluster is not None:
            cluster.close()
