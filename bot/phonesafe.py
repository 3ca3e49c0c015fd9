"""Safe on a phone someone else may see (issue 11).

A message that reaches the resident's phone without their having just written — a staff
answer, the end of a conversation — goes as a neutral notice (「新しいメッセージがあります」,
nothing about what it is), and its content comes when the resident opens the chat and taps
「ひらく」: a postback, answered by reply. A resident may choose to receive staff messages
directly instead (`Session.direct`).

What a notice stands for waits in `Unseen`: one list per person, under their hash tag, each item
sealed (Fernet, the case store's key) — never a plain-text key — until it is shown, for as long
as a case may stay open, and deleted with the session (データを消す, 「けす」, unfollow). It cannot
wait in the case itself: the case's texts are erased the moment staff close it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from bot.crypto import Sealer
from bot.engine import Engine, Step

TTL_S = 7 * 24 * 3600  # as long as a case stays open before it expires


class Unseen:
    """Sealed items waiting for 「ひらく」: ("staff", text), ("closed", ""), ("expired", "")."""

    def __init__(self, client: redis.Redis, key: Callable[[str, str], str], sealer: Sealer):
        self.redis = client
        self.key = key
        self.sealer = sealer

    def push(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        """Keep items once per event (a retried delivery pushes the same event again)."""
        key = self.key(pid, "unseen")
        raw = [json.dumps({"e": event_id, "k": kind, "t": text}, ensure_ascii=False)
               for kind, text in items]
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(self.sealer.seal(r) for r in raw))
        pipe.expire(key, TTL_S)
        pipe.execute()

    def take(self, pid: str) -> list[tuple[str, str]]:
        """Everything waiting, in order, each event once; the list is emptied."""
        key = self.key(pid, "unseen")
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        sealed, _ = pipe.execute()
        seen: set[tuple[str, str]] = set()
        items: list[tuple[str, str]] = []
        for token in sealed:
            plain = self.sealer.open(token.decode() if isinstance(token, bytes) else token)
            if plain is None:  # sealed with a key no longer configured: unreadable
                continue
            item = json.loads(plain)
            mark = (item["e"], item["k"])
            if mark not in seen:
                seen.add(mark)
                items.append((item["k"], item["t"]))
        return items


def effects(cases: Any, store: Any, engine: Engine, pid: str, event_id: str,
            step: Step) -> None:
    """Keep what a neutral notice stands for; on 「ひらく」, put it before the step's replies."""
    if cases is None:  # no staff connected: nothing is ever waiting
        if step.reveal and step.session is not None:
            step.replies = [*engine.revealed(step.session, []), engine.ask(step.session)]
        return
    unseen = Unseen(cases.redis, store.key, cases.sealer)
    if step.unseen:
        unseen.push(pid, event_id, step.unseen)
    if step.reveal and step.session is not None:
        session = step.session
        session.unseen = False
        step.replies = [*engine.revealed(session, unseen.take(pid)), engine.ask(session)]
        step.events.append("phonesafe:revealed")
