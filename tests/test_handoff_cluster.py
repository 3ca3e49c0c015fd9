"""The staff queue on a Redis Cluster: every shard is read at once (not after the wait on
one shard), and a case whose shard has no primary is queued in another shard and still
reaches staff. The same scenarios run on one Redis where they apply."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from bot.config import Settings
from bot.handoff.models import CaseRequest
from bot.redisconn import connect, shard_of
from bot.wiring import Handoff, build_handoff
from tests.fakes.slack_api import FakeSlack, serve
from tests.test_handoff_backend import CHANNEL, SIGNING

SHARDS = 4


@pytest.fixture
def redis_url(either_redis: str | None) -> str | None:
    return either_redis


@pytest.fixture
def slack() -> Iterator[tuple[FakeSlack, str]]:
    fake = FakeSlack()
    server, url = serve(fake)
    yield fake, url
    server.shutdown()
    server.server_close()


def numbers_by_shard(prefix: str = "T") -> list[str]:
    """One valid case number per staff-queue shard, in shard order."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < SHARDS:
        number = f"{prefix}-{n:04d}"
        found.setdefault(shard_of(number, SHARDS), number)
        n += 1
    return [found[i] for i in range(SHARDS)]


def request(number: str) -> CaseRequest:
    return CaseRequest(number=number, categories=["loneliness"], summary=[("年代", "20代")],
                       ward=None, urgent=False, message=None)


def root_post_at(fake: FakeSlack, number: str, timeout: float) -> float | None:
    """When Slack got the case's own message (time.time()), waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in fake.posts(thread=False):
            if number in json.dumps(call.body, ensure_ascii=False):
                return call.at
        time.sleep(0.005)
    return None


def test_an_entry_in_any_shard_is_read_at_once_not_after_the_wait(redis_url, settings: Settings,
                                                                  slack):
    """With block_ms 5000, the worker waits 5 s per turn for new entries. Before, on a cluster,
    it waited on one shard and looked at the others only between waits: a case in another
    shard waited for the rest of the 5 s. Each case here is opened while the worker is idle
    in that wait, one per shard, and must reach Slack well before the wait would end."""
    if redis_url is None:
        pytest.skip("needs a real Redis")
    fake, url = slack
    block_ms = 5000
    client = connect(redis_url, socket_timeout=10)  # longer than the blocking read
    s = replace(settings, slack_bot_token=fake.token, slack_signing_secret=SIGNING,
                slack_staff_channel=CHANNEL, slack_api_base_url=url, stream_shards=SHARDS)
    handoff: Handoff = build_handoff(s, client, block_ms=block_ms)
    handoff.worker.ensure_group()
    handoff.start_thread()
    latencies: dict[int, float] = {}
    try:
        time.sleep(1.0)  # the worker's first turn is done: it is waiting for new entries
        for shard, number in enumerate(numbers_by_shard()):
            time.sleep(0.5)  # and back in its wait after the previous case
            opened = time.time()
            assert handoff.cases.open(request(number), "web", "", "addr") is not None
            at = root_post_at(fake, number, timeout=block_ms / 1000 + 5)
            assert at is not None, f"case of shard {shard} never reached Slack"
            latencies[shard] = at - opened
    finally:
        handoff.stop(timeout=block_ms / 1000 + 5)
        client.close()
    print(f"\nhandoff pick-up per shard, block_ms={block_ms}: "
          + ", ".join(f"{i}: {v * 1000:.0f} ms" for i, v in sorted(latencies.items())))
    slow = {i: round(v, 2) for i, v in latencies.items() if v >= block_ms / 1000 / 2}
    assert not slow, f"picked up only after the wait on another shard: {slow}"
