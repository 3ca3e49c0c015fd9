"""Replies waiting for a web visitor: staff answers arrive while nobody is asking.

The web chat has no push channel, so the page polls `GET /api/chat/poll`; what staff sent is
kept here (one list per person, under their hash tag) for a day — sealed (Fernet), since it is
what staff typed; deleted with the session (the forget command). Each batch is numbered. A poll
returns every batch with a cursor (the last number); the next poll sends that cursor back and
only then are those batches deleted — a response lost on the way loses nothing.
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

# KEYS: list, counter. Append "<n> <sealed json>" with the next number n.
_PUSH = """
local n = redis.call('incr', KEYS[2])
redis.call('rpush', KEYS[1], n .. ' ' .. ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
redis.call('expire', KEYS[2], ARGV[2])
return n
"""

# KEYS: list. Drop batches numbered <= ARGV[1] (acknowledged), return the rest.
_TAKE = """
local acked = tonumber(ARGV[1])
while true do
  local head = redis.call('lindex', KEYS[1], 0)
  if not head then break end
  local n = tonumber(string.match(head, '^(%d+) '))
  if n ~= nil and n > acked then break end
  redis.call('lpop', KEYS[1])
end
return redis.call('lrange', KEYS[1], 0, -1)
"""


class Outbox:
    def __init__(self, client: redis.Redis, key: Callable[[str, str], str], sealer: Sealer):
        self.redis = client
        self.key = key
        self.sealer = sealer

    def push(self, pid: str, replies: list[Reply]) -> int:
        body = self.sealer.seal(json.dumps(_REPLIES.dump_python(replies), ensure_ascii=False))
        return int(self.redis.eval(_PUSH, 2, self.key(pid, "outbox"),
                                   self.key(pid, "outbox:n"), body, TTL_S))

    def take(self, pid: str, ack: int = 0) -> tuple[list[Reply], int]:
        """Delete the batches up to `ack` (the page has them); return the others and the
        cursor to acknowledge them with (`ack` itself when none wait)."""
        out: list[Reply] = []
        cursor = ack
        for raw in self.redis.eval(_TAKE, 1, self.key(pid, "outbox"), ack):
            text = raw.decode() if isinstance(raw, bytes) else raw
            number, _, sealed = text.partition(" ")
            cursor = max(cursor, int(number))
            plain = self.sealer.open(sealed)
            if plain is not None:  # sealed with a key no longer configured: unreadable
                out += _REPLIES.validate_json(plain)
        return out, cursor
