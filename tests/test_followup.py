"""Sending follow-ups on one Redis: a failure after a push was sent ends neither the pass nor
the other people's follow-ups."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from typing import Any

import pytest
import redis

from bot.crypto import Sealer
from bot.figures import TOKYO
from bot.followup import Followups
from tests.conftest import SECRET


class FailingCleanup:
    """The real client, but the next `fails` pipelines raise a ResponseError when executed
    (the clean-up after a push is the only pipeline a sending pass runs)."""

    def __init__(self, real: redis.Redis, fails: int = 1):
        self.real = real
        self.fails = fails

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.real.pipeline(*args, **kwargs)
        if self.fails > 0:
            self.fails -= 1

            def execute(*_: Any, **__: Any) -> Any:
                raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                          "kind of value")
            pipe.execute = execute
        return pipe


def test_a_failed_clean_up_after_a_push_stops_no_other_follow_up(redis_url, redis_client,
                                                                 key_prefix, kyoto_engine):
    """Before, only UNAVAILABLE was caught there: a ResponseError escaped send_due and the
    rest of the pass (here two people due in the same shard) waited for the next one."""
    if not redis_url:
        pytest.skip("needs the real Redis")
    sealer = Sealer(SECRET, "followup")
    followups = Followups(FailingCleanup(redis_client), key_prefix, sealer, shards=1)
    due = int(time.time()) - 60
    pids = [hashlib.sha256(f"cleanup-{i}".encode()).hexdigest() for i in range(3)]
    for i, pid in enumerate(pids):
        redis_client.set(followups.key(pid), json.dumps({"a": sealer.seal(f"U{pid[:32]}"),
                                                         "d": due + i, "l": "ja"}))
        redis_client.zadd(followups.due_key(0), {pid: due + i})  # claimed in this order
    pushed: list[str] = []

    def push(user_id: str, event_id: str, messages: list) -> str:
        pushed.append(event_id.split(":")[1])
        return "push"

    sent = followups.send_due(kyoto_engine, push, lambda e, q, lang: [], datetime.now(TOKYO))
    assert pushed == pids, "every follow-up of the pass was sent"
    assert sent == 3
    # The one whose clean-up failed keeps its record, leased: not pushed again at once (after
    # the lease, again with the same retry key, which LINE refuses).
    assert redis_client.exists(followups.key(pids[0]))
    assert not redis_client.exists(followups.key(pids[1]), followups.key(pids[2]))
    assert followups.send_due(kyoto_engine, push, lambda e, q, lang: [],
                              datetime.now(TOKYO)) == 0
    assert len(pushed) == 3
