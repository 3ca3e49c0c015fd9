"""A fake LINE Messaging API: a real HTTP server on loopback that records what it receives.

Behaviours the tests switch on: hang (sleep before answering), a delay on every call (the
real API's latency, for the bench; kept apart from hang, which a scenario sets and lifts),
late answers (take the message, then answer only after the caller gave up), a queue of error
statuses, reply tokens that are single-use and can be marked expired, and X-Line-Retry-Key
de-duplication (409 for a key already accepted), as the real API does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes.http import serve_json


@dataclass
class Received:
    path: str
    body: dict
    headers: dict
    status: int
    at: float


@dataclass
class FakeLine:
    hang_s: float = 0.0
    delay_s: float = 0.0       # every call, as the real API's ~50–200 ms
    late_answers: int = 0      # this many calls are taken, then answered after late_s
    late_s: float = 0.0
    errors: list[int] = field(default_factory=list)
    expired_tokens: set[str] = field(default_factory=set)
    used_tokens: set[str] = field(default_factory=set)
    retry_keys: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cond: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)

    def delivered(self) -> list[Received]:
        """Messages LINE accepted (reply or push with 200)."""
        with self.lock:
            return [r for r in self.received if r.status == 200 and (
                r.path.endswith("/reply") or r.path.endswith("/push"))]

    def texts(self) -> list[str]:
        out = []
        for r in self.delivered():
            for m in r.body["messages"]:
                if m["type"] == "text":
                    out.append(m["text"])
        return out

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.delivered()
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.delivered()

    @staticmethod
    def _sent(body: dict) -> dict:
        return {"sentMessages": [{"id": str(i), "quoteToken": f"q{i}"}
                                 for i, _ in enumerate(body.get("messages", []))]}

    def answer(self, path: str, body: dict, headers: dict) -> tuple[int, dict]:
        with self.lock:
            if self.errors:
                return self.errors.pop(0), {"message": "fake error"}
            if path.endswith("/reply"):
                token = body.get("replyToken")
                if token in self.expired_tokens or token in self.used_tokens:
                    return 400, {"message": "Invalid reply token"}
                self.used_tokens.add(token)
                return 200, self._sent(body)
            if path.endswith("/push"):
                key = headers.get("x-line-retry-key")
                if key and key in self.retry_keys:
                    return 409, {"message": "The retry key is already accepted"}
                if key:
                    self.retry_keys.add(key)
                return 200, self._sent(body)
            if path.endswith("/chat/loading/start"):
                return 202, {}
            return 404, {"message": "not found"}


def serve(fake: FakeLine) -> tuple[ThreadingHTTPServer, str]:
    """Start the fake; returns the server and the base URL for LINE_API_BASE_URL."""

    def handle(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        try:
            body: Any = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or (not body.get("messages") and "/message/" in path):
            # A truncated or empty request (the sender died mid-way) is refused, as LINE does.
            with fake.lock:
                fake.received.append(Received(path, {}, headers, 400, time.time()))
            return 400, {"message": "The request body has 1 error(s)"}
        pause = fake.hang_s + fake.delay_s
        if pause:
            time.sleep(pause)
        status, payload = fake.answer(path, body, headers)
        with fake.lock:
            fake.received.append(Received(path, body, headers, status, time.time()))
            late = fake.late_answers > 0 and "/message/" in path
            fake.late_answers -= late
        if late:
            time.sleep(fake.late_s)
        return status, payload

    return serve_json(handle)
