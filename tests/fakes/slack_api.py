"""A fake Slack Web API: a real HTTP server on loopback that records what slack_sdk sends.

It answers chat.postMessage, chat.update and chat.postEphemeral like Slack does
({"ok": true, "ts": ...}), keeps the posted messages (with their metadata) for
conversations.history and conversations.replies, accepts JSON or form bodies (slack_sdk sends
blocks as JSON), checks the bot token, and can be switched "down" for a number of calls:
HTTP 500, or HTTP 200 with {"ok": false, "error": "service_unavailable"} as Slack answers
during an incident, or HTTP 429 (rate limited) — or "lost": the call is carried out (a message
is posted) but its answer is an HTTP 500, as when Slack's answer never reaches us.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

from tests.fakes.http import serve_json

DownMode = Literal["http500", "not_ok", "ratelimited", "lost"]


@dataclass
class Call:
    method: str
    body: dict
    raw: str
    headers: dict
    status: int
    ok: bool
    at: float


@dataclass
class FakeSlack:
    token: str = "xoxb-test-token"
    down_calls: int = 0
    down_mode: DownMode = "http500"
    received: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[dict] = field(default_factory=list)
    _ts: int = 0

    def go_down(self, calls: int, mode: DownMode = "http500") -> None:
        """Fail the next `calls` API calls, then answer normally again."""
        with self.lock:
            self.down_calls, self.down_mode = calls, mode

    def calls(self, method: str | None = None, ok_only: bool = True) -> list[Call]:
        with self.lock:
            return [c for c in self.received
                    if (method is None or c.method == method) and (c.ok or not ok_only)]

    def posts(self, thread: bool | None = None) -> list[Call]:
        """Accepted chat.postMessage calls; thread=True only thread replies, False only roots."""
        return [c for c in self.calls("chat.postMessage")
                if thread is None or bool(c.body.get("thread_ts")) == thread]

    def wait_for(self, method: str, count: int, timeout: float = 5.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.calls(method)
            if len(got) >= count:
                return got
            time.sleep(0.01)
        return self.calls(method)

    def everything(self) -> str:
        """Every request body, as received and decoded (slack_sdk escapes non-ASCII), for
        "this never reached Slack" assertions."""
        with self.lock:
            return "\n".join(c.raw + "\n" + json.dumps(c.body, ensure_ascii=False)
                             for c in self.received)

    def answer(self, method: str, body: dict, headers: dict) -> tuple[int, dict]:
        with self.lock:
            lost = self.down_calls > 0 and self.down_mode == "lost"
            if lost:
                self.down_calls -= 1
        status, payload = self._answer(method, body, headers)
        return (500, {"ok": False, "error": "internal_error"}) if lost else (status, payload)

    def _answer(self, method: str, body: dict, headers: dict) -> tuple[int, dict]:
        with self.lock:
            if self.down_calls > 0 and self.down_mode != "lost":
                self.down_calls -= 1
                if self.down_mode == "http500":
                    return 500, {"ok": False, "error": "internal_error"}
                if self.down_mode == "ratelimited":
                    return 429, {"ok": False, "error": "ratelimited"}
                return 200, {"ok": False, "error": "service_unavailable"}
            if headers.get("authorization") != f"Bearer {self.token}":
                return 200, {"ok": False, "error": "invalid_auth"}
            self._ts += 1
            ts = f"1700000000.{self._ts:06d}"
        if method == "chat.postMessage":
            if not body.get("channel"):
                return 200, {"ok": False, "error": "channel_not_found"}
            metadata = body.get("metadata")
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            with self.lock:
                self.messages.append({"channel": body["channel"], "ts": ts,
                                      "thread_ts": body.get("thread_ts"),
                                      "text": body.get("text"), "metadata": metadata})
            return 200, {"ok": True, "channel": body["channel"], "ts": ts,
                         "message": {"text": body.get("text"), "ts": ts}}
        if method in ("conversations.history", "conversations.replies"):
            with self.lock:
                found = [m for m in self.messages if m["channel"] == body.get("channel") and (
                    m["thread_ts"] == body.get("ts") if method == "conversations.replies"
                    else not m["thread_ts"])]
            meta = body.get("include_all_metadata") in ("1", "true", "True", True)
            return 200, {"ok": True, "messages": [
                {"ts": m["ts"], "text": m["text"],
                 **({"metadata": m["metadata"]} if meta and m["metadata"] else {})}
                for m in reversed(found)]}
        if method == "chat.update":
            if not body.get("ts"):
                return 200, {"ok": False, "error": "message_not_found"}
            return 200, {"ok": True, "channel": body.get("channel"), "ts": body["ts"]}
        if method == "chat.postEphemeral":
            return 200, {"ok": True, "message_ts": ts}
        if method == "auth.test":
            return 200, {"ok": True, "user_id": "UBOTUSER1", "bot_id": "BBOTUSER1"}
        return 200, {"ok": False, "error": "unknown_method"}


def _parse(raw: bytes, content_type: str) -> dict:
    if "json" in content_type:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
    body: dict[str, Any] = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
    for key in ("blocks", "attachments"):
        if isinstance(body.get(key), str):
            with contextlib.suppress(ValueError):
                body[key] = json.loads(body[key])
    return body


def serve(fake: FakeSlack) -> tuple[ThreadingHTTPServer, str]:
    """Start the fake; returns the server and the base URL for WebClient(base_url=...)."""

    def handle(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        method = path.split("?", 1)[0].rsplit("/", 1)[-1]
        body = _parse(raw, headers.get("content-type", ""))
        status, payload = fake.answer(method, body, headers)
        with fake.lock:
            fake.received.append(Call(method, body, raw.decode(errors="replace"), headers,
                                      status, bool(payload.get("ok")), time.time()))
        return status, payload

    server, url = serve_json(handle)
    return server, f"{url}/api/"
