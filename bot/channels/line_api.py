"""Delivering an answer through the LINE Messaging API: exactly one answer per event.

Reply while the reply token is fresh; otherwise, or when LINE refuses the token, push with an
`X-Line-Retry-Key` derived from the event id, so a retried push — from this process or another
after a crash — is never delivered twice (LINE answers 409 to a repeated key). Every call has
an explicit timeout; one SDK ApiClient (a pooled urllib3 manager, thread-safe) serves all
events. Messages arrive as ready JSON (see line_render) and go through the client's REST layer,
which raises ApiException on any non-2xx; the response body is not parsed: a 2xx means LINE
took the message, and a change in LINE's response must never turn a delivered answer into a
"failure" that we would send again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import urllib3
from linebot.v3.messaging import ApiClient, ApiException, Configuration

from bot import logs

log = logs.get("line")
RETRY_NAMESPACE = uuid.UUID("6f1c1e52-8a55-4d0e-9f57-7d1b1b0c2a11")
REPLY_TOKEN_TTL_S = 50.0  # LINE's tokens expire; stay well inside their life
TIMEOUT = (2.0, 5.0)      # connect, read
RETRYABLE = {429, 500, 502, 503, 504}
# What a call may raise besides ApiException: urllib3's timeouts and connection errors.
NETWORK = (urllib3.exceptions.HTTPError, OSError)


def sent_maybe(exc: BaseException) -> bool:
    """Whether a failed call may still have reached LINE: not when no connection was made."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) \
        else exc
    return not isinstance(reason, (urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError))


class DeliveryPending(Exception):
    """LINE did not take the answer yet (down, throttling): keep the job and retry later."""


@dataclass
class LineApi:
    base_url: str
    access_token: str
    backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
    timeout: tuple[float, float] = TIMEOUT  # connect, read

    def __post_init__(self) -> None:
        self.host = self.base_url.rstrip("/")
        self.client = ApiClient(Configuration(host=self.host, access_token=self.access_token))

    def worst_case_s(self) -> float:
        """How long one delivery can take at most without a deadline: a reply and every push
        attempt timing out, plus the backoff pauses (~46 s with the defaults)."""
        return sum(self.timeout) * (3 + len(self.backoff)) + sum(self.backoff)

    def _post(self, path: str, body: dict[str, Any], timeout: tuple[float, float],
              retry_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {self.access_token}",
                   "Content-Type": "application/json", "User-Agent": self.client.user_agent}
        if retry_key:
            headers["X-Line-Retry-Key"] = retry_key
        self.client.rest_client.request("POST", self.host + path, headers=headers, body=body,
                                        _preload_content=False, _request_timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def retry_key(self, event_id: str) -> str:
        return str(uuid.uuid5(RETRY_NAMESPACE, event_id))

    def deliver(self, user_id: str, event_id: str, reply_token: str | None, age_s: float,
                messages: list[dict], retrying: bool = False,
                deadline: float | None = None) -> str:
        """Send the answer once; return how ('reply', 'push', 'already'). Raise
        DeliveryPending when LINE does not take it now.

        `retrying`: a process died while answering this event. A fresh token that LINE now
        refuses (400) was then used by that process, so the answer was delivered: pushing
        would say it twice. A token that still works means it was not.
        `deadline` (time.monotonic()): no call or pause runs past it — the caller's person
        lock expires then, and another process must not answer the same person meanwhile.
        `event_id` is the idempotency key: the push's X-Line-Retry-Key derives from it.
        """
        if not messages:
            return "none"
        if reply_token and age_s < REPLY_TOKEN_TTL_S:
            # A reply whose answer never came (read timeout, connection cut) may have been
            # delivered: it is tried once more with the same single-use token, and LINE's 400
            # then means it was. Pushing at once would say it twice.
            unsure = retrying
            for _attempt in (1, 2):
                try:
                    self._post("/v2/bot/message/reply",
                               {"replyToken": reply_token, "messages": messages},
                               timeout=self._timeout(deadline))
                    return "reply"
                except ApiException as exc:
                    if exc.status == 400 and unsure:
                        logs.event(log, "reply_already_used", event_hint=event_id[:6])
                        return "already"
                    if exc.status in RETRYABLE:
                        logs.event(log, "reply_failed", logging.WARNING, status=exc.status)
                    # 400 (token used or expired) or a server error: push, whose retry key
                    # makes it safe to repeat.
                    break
                except NETWORK as exc:
                    logs.event(log, "reply_failed", logging.WARNING, error=type(exc).__name__)
                    if not sent_maybe(exc):
                        break
                    if unsure:
                        # Twice without an answer: keep the event; its retry (marked as one)
                        # tries the token again rather than risk saying it twice.
                        raise DeliveryPending(event_id) from exc
                    unsure = True
        return self._push(user_id, event_id, messages, deadline)

    def _timeout(self, deadline: float | None) -> tuple[float, float]:
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0.05:
            raise DeliveryPending("no time left under the lock")
        return min(self.timeout[0], left), min(self.timeout[1], left)

    def _push(self, user_id: str, event_id: str, messages: list[dict],
              deadline: float | None = None) -> str:
        key = self.retry_key(event_id)
        for attempt, pause in enumerate((*self.backoff, None)):
            try:
                self._post("/v2/bot/message/push", {"to": user_id, "messages": messages},
                           retry_key=key, timeout=self._timeout(deadline))
                return "push"
            except ApiException as exc:
                if exc.status == 409:  # this retry key was accepted before: delivered
                    return "push"
                if exc.status not in RETRYABLE:
                    logs.event(log, "push_rejected", logging.ERROR, status=exc.status)
                    return "rejected"
                logs.event(log, "push_retry", logging.WARNING, status=exc.status,
                           attempt=attempt)
            except NETWORK as exc:
                logs.event(log, "push_retry", logging.WARNING, error=type(exc).__name__,
                           attempt=attempt)
            if pause is None or (deadline is not None
                                 and time.monotonic() + pause + 0.1 > deadline):
                break
            time.sleep(pause)
        raise DeliveryPending(event_id)

    def show_loading(self, user_id: str, seconds: int = 20) -> None:
        """Best effort: the animation is a courtesy, never a reason to fail."""
        try:
            self._post("/v2/bot/chat/loading/start",
                       {"chatId": user_id, "loadingSeconds": seconds}, timeout=(1.0, 1.0))
        except (ApiException, *NETWORK) as exc:
            logs.event(log, "loading_failed", logging.INFO, error=type(exc).__name__)
