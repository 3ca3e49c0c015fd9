"""Sessions in Redis, one hash tag per person so a Redis Cluster keeps a person's keys together.

Keys (DESIGN.md):  <prefix>:{<pseudonym>}:session  and  <prefix>:{<pseudonym>}:lock.
The pseudonym is HMAC-SHA256(BOT_SECRET_KEY, channel ":" platform_user_id): the raw platform id
never reaches Redis, logs or staff. After a key rotation a person keeps the pseudonym of an
older key while anything of theirs still lives under it (`SessionStore.find_pseudonym`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.redisconn import script
from bot.session import Session

# Take the per-person lock and read the session: one command (two in a pipeline cost the
# client twice the work). KEYS: lock, session. ARGV: token, lock ms. {1, session} or {0}.
# A lock already holding this token is ours: this very call, sent again by redis-py after its
# reply was lost (tokens are new for every call) — taken, not waited for until it expires.
_LOCK_LOAD = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('get', KEYS[2])}
end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return {1, redis.call('get', KEYS[2])}
end
return {0}
"""

# In this order, atomically: save the session (ARGV[1] not empty: its new value, ARGV[2] its
# TTL in s), remove a done job (KEYS[3] given: ZREM KEYS[3] ARGV[4]), release the per-person
# lock if we still own it (ARGV[3] not empty: our token). KEYS: session, lock[, queue].
_SAVE = """
if ARGV[1] ~= '' then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
if KEYS[3] then redis.call('zrem', KEYS[3], ARGV[4]) end
if ARGV[3] ~= '' and redis.call('get', KEYS[2]) == ARGV[3] then redis.call('del', KEYS[2]) end
return 1
"""


# What a person may have in Redis that a rotation must not orphan.
LIVE_KEYS = ("session", "case", "line:inbox", "outbox", "unseen")


def pseudonym(secret: str, channel: str, user_id: str) -> str:
    return hmac.new(secret.encode(), f"{channel}:{user_id}".encode(), hashlib.sha256).hexdigest()


class LockTimeout(Exception):
    """Another message of the same person held the lock for too long."""


@dataclass
class Turn:
    """The session of one message; set `session` and `changed` to have it saved on exit."""

    session: Session | None
    changed: bool = False
    writes: list[Callable[[Any], None]] = field(default_factory=list)

    def keep(self, session: Session | None) -> None:
        self.session = session
        self.changed = True

    def also(self, write: Callable[[Any], None] | None) -> None:
        """Queue a write (e.g. the figures' counts) for the pipeline that saves the session."""
        if write is not None:
            self.writes.append(write)


class SessionStore:
    """Load and save sessions: one round trip to lock+load, one to save+unlock."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, prefix: str = "tsunagu",
                 lock_ms: int = 30_000):
        self.redis = client
        self.ttl = ttl_seconds
        self.prefix = prefix
        self.lock_ms = lock_ms

    def key(self, pid: str, what: str) -> str:
        return f"{self.prefix}:{{{pid}}}:{what}"

    def find_pseudonym(self, secrets: Sequence[str], channel: str, user_id: str) -> str:
        """The pseudonym under the newest key, unless the person still has a session, an open
        case, queued LINE events or waiting replies under an older key (a rotation happened
        while they were talking): then that one, until it expires. One round trip, and only
        while older keys are configured."""
        newest = pseudonym(secrets[0], channel, user_id)
        if len(secrets) == 1:
            return newest
        candidates = [newest, *(pseudonym(s, channel, user_id) for s in secrets[1:])]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for pid in candidates:
                pipe.exists(*(self.key(pid, what) for what in LIVE_KEYS))
            counts = pipe.execute()
        except redis.RedisError:
            return newest  # the caller meets the outage itself and answers degraded
        return next((pid for pid, n in zip(candidates, counts, strict=True) if n), newest)

    def load(self, pid: str) -> Session | None:
        raw = self.redis.get(self.key(pid, "session"))
        return Session.loads(raw) if raw else None

    def save(self, pid: str, session: Session | None) -> None:
        if session is None:
            self.redis.delete(self.key(pid, "session"), self.key(pid, "outbox"),
                              self.key(pid, "unseen"))
        else:
            self.redis.set(self.key(pid, "session"), session.dumps(), ex=self.ttl)

    def delete(self, pid: str) -> None:
        self.redis.delete(self.key(pid, "session"), self.key(pid, "outbox"),
                          self.key(pid, "unseen"))

    def lock_and_load(self, pid: str, token: str, wait_s: float = 5.0,
                      also: Callable[[Any], None] | None = None,
                      lock_ms: int | None = None) -> tuple[Session | None, list]:
        """Take this person's lock and read their session (plus `also`'s reads) in one trip.

        Only one person is serialised, never everyone (STYLE.md). The wait polls with a short
        backoff because two messages of one person at once are rare and quick.
        """
        lock_key, session_key = self.key(pid, "lock"), self.key(pid, "session")
        deadline = time.monotonic() + wait_s
        delay = 0.002
        while True:
            pipe = self.redis.pipeline(transaction=False)
            script(pipe, _LOCK_LOAD, [lock_key, session_key], token, lock_ms or self.lock_ms)
            if also:
                also(pipe)  # runs after the lock was tried: see LineQueue's _TAKE
            (acquired, *loaded), *extra = pipe.execute()
            if acquired:
                raw = loaded[0] if loaded else None
                return (Session.loads(raw) if raw else None), extra
            if time.monotonic() > deadline:
                raise LockTimeout(pid)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def forget(self, pipe: Any, pid: str) -> None:
        """Delete-my-data / unfollow: queue the deletion of the session and whatever waits
        for the person."""
        for what in ("session", "outbox", "outbox:n", "unseen"):
            # One key per DEL: a cluster pipeline refuses a DEL of several keys, even of one
            # slot ("not implemented"), which failed every forget and unfollow on a cluster.
            pipe.delete(self.key(pid, what))

    def commit(self, pid: str, turn: Turn, token: str | None,
               also: Callable[[Any], None] | None = None,
               done: tuple[str, bytes | str] | None = None) -> None:
        """Save the session if it changed, remove `done` (a sorted set of the person's and a
        member: the job just answered) and unlock — one atomic step — then run `also`'s and
        the turn's writes: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        session_key = self.key(pid, "session")
        blob = ""
        if turn.changed:
            if turn.session is None:
                self.forget(pipe, pid)
            else:
                blob = turn.session.dumps()
        if blob or token or done:
            # EVAL rather than a registered Script: a Script in a pipeline costs an extra
            # SCRIPT EXISTS round trip on every execute.
            keys = [session_key, self.key(pid, "lock"), *([done[0]] if done else [])]
            script(pipe, _SAVE, keys, blob, self.ttl, token or "", done[1] if done else "")
        if also:
            also(pipe)
        for write in turn.writes:
            write(pipe)
        turn.writes.clear()
        pipe.execute()

    @contextmanager
    def turn(self, pid: str, wait_s: float = 5.0, lock_ms: int = 3000) -> Iterator[Turn]:
        """One message of one person: lock and load, then save and unlock (two round trips).

        The lock is short: a step takes microseconds, and a lock whose SET reached Redis
        after our request had timed out (Redis paused) must not hold the person for long.
        """
        token = uuid.uuid4().hex
        session, _ = self.lock_and_load(pid, token, wait_s, lock_ms=lock_ms)
        current = Turn(session=session)
        try:
            yield current
        finally:
            self.commit(pid, current, token)
