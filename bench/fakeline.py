"""The tests' fake LINE Messaging API, taught to wake the resident waiting for an answer.

`FakeLine` records every call; a benchmark needs more: the moment each answer arrived, matched
to the event it answers, without scanning a growing list. A reply is matched by its reply
token, a push (the bot's fallback) by the person it is addressed to.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from tests.fakes.line_api import FakeLine, serve

__all__ = ["Arrival", "BenchLine", "Waiter", "serve_line"]
BACKLOG = 1024


@dataclass(frozen=True)
class Arrival:
    at: float                  # time.perf_counter() when the fake LINE API took the answer
    via: str                   # "reply" or "push"
    kinds: tuple[str, ...]     # message types, e.g. ("text", "flex")


@dataclass
class Waiter:
    """One event's answer to come: set once, by the fake LINE API's handler thread."""

    user: str
    token: str
    done: threading.Event = field(default_factory=threading.Event)
    arrival: Arrival | None = None

    def wait(self, timeout: float) -> Arrival | None:
        self.done.wait(timeout)
        return self.arrival


@dataclass
class BenchLine(FakeLine):
    """FakeLine that signals waiters and keeps only the last few bodies: a run receives
    thousands of Flex carousels, and keeping them all would only grow the bench's memory."""

    unmatched: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.received = deque(maxlen=64)  # type: ignore[assignment]
        self._by_token: dict[str, Waiter] = {}
        self._by_user: dict[str, Waiter] = {}

    def expect(self, user: str, token: str) -> Waiter:
        """Register before sending the webhook: the echo baseline answers before its 200."""
        waiter = Waiter(user=user, token=token)
        with self.lock:
            self._by_token[token] = waiter
            self._by_user[user] = waiter
        return waiter

    def forget(self, waiter: Waiter) -> None:
        """Stop waiting (timed out): a later answer then counts as unmatched."""
        with self.lock:
            self._drop(waiter)

    def pending(self) -> int:
        with self.lock:
            return len(self._by_token)

    def _drop(self, waiter: Waiter) -> None:
        if self._by_token.get(waiter.token) is waiter:
            del self._by_token[waiter.token]
        if self._by_user.get(waiter.user) is waiter:
            del self._by_user[waiter.user]

    def answer(self, path: str, body: dict, headers: dict) -> tuple[int, dict]:
        status, payload = super().answer(path, body, headers)
        via = "reply" if path.endswith("/reply") else "push" if path.endswith("/push") else ""
        if status != 200 or not via:
            return status, payload
        arrival = Arrival(at=time.perf_counter(), via=via,
                          kinds=tuple(m.get("type", "") for m in body.get("messages", [])))
        with self.lock:
            waiter = (self._by_token.get(body.get("replyToken", "")) if via == "reply"
                      else self._by_user.get(body.get("to", "")))
            if waiter is None:
                self.unmatched += 1
            else:
                self._drop(waiter)
                waiter.arrival = arrival
                waiter.done.set()
        return status, payload


def serve_line(fake: BenchLine) -> tuple[ThreadingHTTPServer, str]:
    """`serve()` from the tests, with a deeper listen backlog. socketserver listens with a
    backlog of 5; the bots open a connection per LINE call (the fake speaks HTTP/1.0), and at
    50 residents a full backlog drops SYNs, which cost a 1-second retransmit — a stall of the
    fake, not of the bot. Linux lets a listening socket raise its backlog in place."""
    server, url = serve(fake)
    server.socket.listen(BACKLOG)
    default = server.handle_error

    def handle_error(request: object, client_address: object) -> None:
        """A bot that gave up on a hanging call (its read timeout) closed the connection:
        expected while LINE hangs, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]
    return server, url
