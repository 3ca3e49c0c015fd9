"""Shared fixtures: a real Redis (see `redis_url`), a test app, the engine and a fixed clock."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from bench.redisbox import ClusterFailed, LocalCluster, start_cluster
from bot.config import Settings
from bot.engine import Engine, Incoming
from bot.pack import Pack, load_pack
from bot.pack.loader import COMMON, CONTENT_ROOT, pack_names
from bot.redisconn import connect
from bot.wiring import build, build_engine
from tests import line_helpers as lh
from tests.fakes.line_api import FakeLine, serve
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack

TOKYO = ZoneInfo("Asia/Tokyo")
SECRET = "test-secret-" + "x" * 32
# A Tuesday at 10:00 in Kyoto, not a holiday: office windows are open.
WEEKDAY_MORNING = datetime(2026, 11, 24, 10, 0, tzinfo=TOKYO)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def single_redis_url() -> Iterator[str | None]:
    """REDIS_URL if set; else 127.0.0.1:6379 if it answers; else a throwaway redis-server.

    Outside CI with no Redis at all, the embedded one (None) with a warning; in CI, an error.
    """
    env = os.environ.get("REDIS_URL")
    if env:
        if not _answers(env):
            pytest.exit(f"REDIS_URL={env} does not answer", returncode=3)
        yield env
        return
    local = "redis://127.0.0.1:6379/0"
    if _answers(local):
        yield local
        return
    binary = shutil.which("redis-server")
    if binary:
        port = _free_port()
        workdir = tempfile.mkdtemp(prefix="tsunagu-redis-")
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", workdir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if _answers(url):
                break
            time.sleep(0.05)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)
        return
    if os.environ.get("CI") == "true":
        pytest.exit("no Redis server: set REDIS_URL or install redis-server", returncode=3)
    warnings.warn("no Redis server found: tests run on the embedded fakeredis", stacklevel=1)
    yield None


@pytest.fixture(scope="session")
def redis_url(single_redis_url: str | None) -> str | None:
    """The Redis of most tests; a module that also runs on a cluster overrides it with
    `either_redis` (see test_burst.py)."""
    return single_redis_url


def _local_cluster() -> LocalCluster:
    """A local 3+3 Redis Cluster (bench.redisbox.start_cluster). No redis-server: skipped,
    except in CI, where it is an error."""
    try:
        return start_cluster()
    except ClusterFailed as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: the local Redis Cluster did not start: {exc}")
        pytest.skip(f"no local Redis Cluster: {exc}")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One local cluster for the whole session, shared by the tests that only use it."""
    cluster = _local_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of the test's own, for a test that kills its nodes."""
    cluster = _local_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(params=["one-redis", "cluster"])
def either_redis(request, single_redis_url: str | None) -> str | None:
    """The same scenario on one Redis and on the local cluster."""
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return single_redis_url


@pytest.fixture
def key_prefix(redis_url: str | None) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"tsunagu-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    if redis_url:
        client = connect(redis_url)
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            pipe.delete(key)
        pipe.execute()
        client.close()


@pytest.fixture
def redis_client(redis_url: str | None):
    if redis_url:
        return connect(redis_url)
    import fakeredis

    return fakeredis.FakeRedis()


@pytest.fixture
def settings(redis_url: str | None, key_prefix: str) -> Settings:
    return Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix)


@pytest.fixture
def services(settings: Settings, redis_client: redis.Redis):
    return build(settings, client=redis_client)


@pytest.fixture
def app(settings: Settings, services):
    from server import create_app

    app = create_app(settings, services=services)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session", params=pack_names())
def pack(request: pytest.FixtureRequest) -> Pack:
    """Every content pack: a test of the flow, not of one city's content, runs for each city."""
    return load_pack(request.param)


@pytest.fixture(scope="session")
def engine(pack: Pack) -> Engine:
    return build_engine(pack)


@pytest.fixture(scope="session")
def kyoto_pack() -> Pack:
    """For tests about the Kyoto pack's own content (its windows, wards, numbers)."""
    return load_pack("kyoto")


@pytest.fixture(scope="session")
def kyoto_engine(kyoto_pack: Pack) -> Engine:
    return build_engine(kyoto_pack)


@pytest.fixture
def fake_line():
    fake = FakeLine()
    server, url = serve(fake)
    yield fake, url
    server.shutdown()


@pytest.fixture
def line_app(redis_url, key_prefix, redis_client, fake_line):
    from server import create_app

    fake, url = fake_line
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
                        line_api_base_url=url, line_dispatch_threads=4,
                        line_reclaim_idle_ms=500, lock_ms=5000)
    services = build(settings, client=redis_client)
    app = create_app(settings, services=services)
    line = app.extensions["tsunagu_line"]
    # Tests that need no retries keep the backoff short.
    line.api.backoff = (0.05, 0.1, 0.2)
    yield app, fake
    line.stop()



class Walker:
    """Drives the engine like a resident: tap by value or label, type text."""

    def __init__(self, engine: Engine, now: datetime = WEEKDAY_MORNING):
        self.engine = engine
        self.now = now
        self.session = None
        self.replies: list = []
        self.steps = []

    def send(self, incoming: Incoming):
        step = self.engine.step(self.session, incoming, self.now)
        self.session = step.session
        self.replies = step.replies
        self.steps.append(step)
        return step

    def start(self):
        return self.send(Incoming(kind="event", value="first_contact"))

    def text(self, text: str):
        return self.send(Incoming(kind="text", value=text))

    @property
    def question(self):
        from bot.replies import Question

        qs = [r for r in self.replies if isinstance(r, Question)]
        assert qs, f"no question in replies: {self.replies}"
        return qs[-1]

    def tap(self, value: str):
        q = self.question
        assert value in [c.value for c in q.choices], (value, [c.value for c in q.choices])
        return self.send(Incoming(kind="tap", value=value, state=q.state))

    def tap_ward(self, ward: str) -> str | None:
        """Answer the ward question with `ward` where the city has wards; a city without
        wards never asks it (the flow is already at the next question). Returns the answer."""
        if not self.engine.pack.wards.wards:
            assert self.question.state != "ward"
            return None
        assert self.question.state == "ward"
        self.tap(ward)
        return ward

    def cards(self, kind: str | None = None):
        from bot.replies import Cards

        return [c for r in self.replies if isinstance(r, Cards) for c in r.cards
                if kind is None or c.kind == kind]


@pytest.fixture
def walker(engine: Engine) -> Walker:
    return Walker(engine)


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    """A copy of the Kyoto pack beside a copy of the common files, to break at will."""
    dest = tmp_path / "testpack"
    shutil.copytree(CONTENT_ROOT / "kyoto", dest)
    shutil.copytree(CONTENT_ROOT / COMMON, tmp_path / COMMON)
    return dest


@pytest.fixture
def fake_slack() -> Iterator[tuple[FakeSlack, str]]:
    """The fake Slack Web API on loopback (tests/fakes/slack_api.py) and its base URL."""
    fake = FakeSlack()
    server, url = serve_slack(fake)
    yield fake, url
    server.shutdown()
    server.server_close()
