"""Delivering an answer through the LINE Messaging API: exactly one answer per event.

Reply while the reply token is fresh; otherwise, or when LINE refuses the token, push with an
`X-Line-Retry-Key` derived from the event id, so a retried push — from this process or another
after a crash — is never delivered twice (LINE answers 409 to a repeated key). Every call has
an explicit timeout; one ApiClient (a pooled urllib3 manager, thread-safe) serves all events.
Calls use `_preload_content=False`: a 2xx means LINE took the message, and a change in LINE's
response body must never turn a delivered answer into a "failure" that we would send again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from linebot.v3.messaging import (
    ApiClient,
    ApiException,
    Configuration,
    Message,
    MessagingApi,
    PushMessageRequest,
    ReplyMessageRequest,
    ShowLoadingAnimationRequest,
)

from bot import logs

log = logs.get("line")
RETRY_NAMESPACE = uuid.UUID("6f1c1e52-8a55-4d0e-9f57-7d1b1b0c2a11")
REPLY_TOKEN_TTL_S = 50.0  # LINE's tokens expire; stay well inside their life
TIMEOUT = (2.0, 5.0)      # connect, read
RETRYABLE = {429, 500, 502, 503, 504}


class DeliveryPending(Exception):
    """LINE did not take the answer yet (down, throttling): keep the job and retry later."""


@dataclass
class LineApi:
    base_url: str
    access_token: str
    backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        config = Configuration(host=self.base_url.rstrip("/"), access_token=self.access_token)
        self.client = ApiClient(config)
        self.api = MessagingApi(self.client)

    def close(self) -> None:
        self.client.close()

    def retry_key(self, event_id: str) -> str:
        return str(uuid.uuid5(RETRY_NAMESPACE, event_id))

    def deliver(self, user_id: str, event_id: str, reply_token: str | None, age_s: float,
                messages: list[Message], retrying: bool = False) -> str:
        """Send the answer once; return how ('reply', 'push', 'already'). Raise
        DeliveryPending when LINE does not take it now.

        `retrying`: a process died while answering this event. A fresh token that LINE now
        refuses (400) was then used by that process, so the answer was delivered: pushing
        would say it twice. A token that still works means it was not.
        """
        if not messages:
            return "none"
        if reply_token and age_s < REPLY_TOKEN_TTL_S:
            try:
                self.api.reply_message_with_http_info(
                    ReplyMessageRequest(reply_token=reply_token, messages=messages),
                    _request_timeout=TIMEOUT, _preload_content=False)
                return "reply"
            except ApiException as exc:
                if exc.status == 400 and retrying:
                    logs.event(log, "reply_already_used", event_hint=event_id[:6])
                    return "already"
                if exc.status in RETRYABLE:
                    logs.event(log, "reply_failed", logging.WARNING, status=exc.status)
                # 400 (token used or expired) or a server error: fall through to push, whose
                # retry key makes it safe to repeat.
            except Exception as exc:  # timeouts and connection errors from urllib3
                logs.event(log, "reply_failed", logging.WARNING, error=type(exc).__name__)
        return self._push(user_id, event_id, messages)

    def _push(self, user_id: str, event_id: str, messages: list[Message]) -> str:
        key = self.retry_key(event_id)
        for attempt, pause in enumerate((*self.backoff, None)):
            try:
                self.api.push_message_with_http_info(
                    PushMessageRequest(to=user_id, messages=messages), x_line_retry_key=key,
                    _request_timeout=TIMEOUT, _preload_content=False)
                return "push"
            except ApiException as exc:
                if exc.status == 409:  # this retry key was accepted before: delivered
                    return "push"
                if exc.status not in RETRYABLE:
                    logs.event(log, "push_rejected", logging.ERROR, status=exc.status)
                    return "rejected"
                logs.event(log, "push_retry", logging.WARNING, status=exc.status,
                           attempt=attempt)
            except Exception as exc:
                logs.event(log, "push_retry", logging.WARNING, error=type(exc).__name__,
                           attempt=attempt)
            if pause is None:
                break
            time.sleep(pause)
        raise DeliveryPending(event_id)

    def show_loading(self, user_id: str, seconds: int = 20) -> None:
        """Best effort: the animation is a courtesy, never a reason to fail."""
        try:
            self.api.show_loading_animation_with_http_info(
                ShowLoadingAnimationRequest(chat_id=user_id, loading_seconds=seconds),
                _request_timeout=(1.0, 1.0), _preload_content=False)
        except Exception as exc:
            logs.event(log, "loading_failed", logging.INFO, error=type(exc).__name__)
