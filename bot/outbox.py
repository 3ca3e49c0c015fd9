"""Replies waiting for a web visitor: staff answers arrive while nobody is asking.

The web chat has no push channel, so the page polls `GET /api/chat/poll`; what staff sent is
kept here (one list per person, under their hash tag) until the page takes it, for a day —
sealed (Fernet), since it is what staff typed. Deleted with the session (データを消す).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from pydantic import TypeAdapter

from bot.crypto import Sealer
from bot.replies import Reply

TTL_S = 24 * 3600
_REPLIES = TypeAdapter(list[Reply])


class Outbox:
    def __init__(self, client: redis.Redis, key: Callable[[str, str], str], sealer: Sealer):
        self.redis = client
        self.key = key
        self.sealer = sealer

    def push(self, pid: str, replies: list[Reply]) -> None:
        key = self.key(pid, "outbox")
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, self.sealer.seal(json.dumps(_REPLIES.dump_python(replies),
                                                    ensure_ascii=False)))
        pipe.expire(key, TTL_S)
        pipe.execute()

    def take(self, pid: str) -> list[Reply]:
        key = self.key(pid, "outbox")
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        batches, _ = pipe.execute()
        out: list[Reply] = []
        for raw in batches:
            plain = self.sealer.open(raw)
            if plain is not None:  # sealed with a key no longer configured: unreadable
                out += _REPLIES.validate_json(plain)
        return out
