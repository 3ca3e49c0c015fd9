"""POST /callback: LINE's webhook. Verify, make durable, answer 200 — nothing else here.

The answer itself is sent by the dispatcher, so a slow or hanging LINE API never holds the
webhook past LINE's 2-second budget. When Redis is down nothing can be made durable; then the
event is answered in degraded mode by a small bounded pool (crisis lines, hotlines, list).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from linebot.v3.exceptions import InvalidSignatureError

from bot import logs, metrics
from bot.channels.line_events import Job, reply_token_of, translate, user_id_of
from bot.channels.line_queue import answer_degraded
from bot.limits import Limits
from bot.service import REDIS_DOWN
from bot.web.headers import HSTS, SECURITY_HEADERS

Answer = tuple[int, str]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]

log = logs.get("line")


def _bad(reason: str) -> Answer:
    logs.event(log, "webhook_rejected", logging.WARNING, reason=reason)
    return 400, reason


def _refused(reason: str, line: Any, limits: Limits | None, remote_addr: str | None) -> Answer:
    """A refused request counts against its (hashed) client address; past the limit the
    answer is 429 and nothing is logged, so a flood fills neither Redis nor the log."""
    if limits is not None and not limits.hit("callback_refused", limits.tag(remote_addr),
                                             line.refusals_per_minute):
        return 429, "too many refused requests"
    return _bad(reason)


def handle(line: Any, limits: Limits | None, body: str, signature: str | None,
           remote_addr: str | None) -> Answer:
    """One webhook request, whatever server carried it: (status, text).

    Signed requests (LINE's) are never limited by address: LINE's few addresses carry every
    resident, and the per-person limit applies to those. The signature is checked first — an
    HMAC costs less than a Redis round trip — and only refused requests are counted."""
    if not signature:
        return _refused("missing signature", line, limits, remote_addr)
    try:
        events = line.parser.parse(body, signature)
    except InvalidSignatureError:
        return _refused("invalid signature", line, limits, remote_addr)
    except ValueError:  # not JSON, or not the shape of a webhook (EventParser)
        return _refused("malformed body", line, limits, remote_addr)
    jobs = []
    oldest_ms = (time.time() - line.max_event_age_s) * 1000
    for event in events:
        timestamp = event["timestamp"]
        if timestamp < oldest_ms:
            # Older than the window: a captured webhook replayed after the de-dup keys expired
            # (or a redelivery too late to help). Signed, so 200, but never answered.
            logs.event(log, "webhook_event_too_old", logging.WARNING,
                       age_s=round(time.time() - timestamp / 1000))
            continue
        translated, user_id = translate(event), user_id_of(event)
        if translated is None or user_id is None:
            continue
        kind, value, state = translated
        pid = line.conversations.pseudonym("line", user_id)
        jobs.append((pid, Job(event_id=event["webhookEventId"], kind=kind, value=value,
                              state=state, reply_token=reply_token_of(event),
                              timestamp_ms=timestamp, user=user_id)))
    if jobs:
        replicated = True
        try:
            result = line.queue.accept(jobs, claim=line.dispatcher.can_claim())
            accepted, replicated = result.stored, result.replicated
            if result.claims:  # this process answers them now, off this thread
                line.dispatcher.answer_claims(result.claims)
        except REDIS_DOWN:
            accepted = [None] * len(jobs)
        if not replicated and line.queue.refuse_unreplicated:
            return 500, "not replicated in time"
        unstored = [job for job, ok in zip(jobs, accepted, strict=True) if ok is None]
        duplicates = accepted.count(False)
        # Every answer gets its own "message" line; an ordinary accept is only worth a line
        # when debugging (a JSON line per event cost as much as a Redis round trip).
        logs.event(log, "webhook_accepted",
                   logging.INFO if duplicates or unstored else logging.DEBUG,
                   events=len(jobs), duplicates=duplicates, degraded=len(unstored))
        if unstored:  # Redis, or these people's primary, is down: answer without state
            metrics.REDIS_ERRORS.labels("line_webhook").inc()
            line.degraded.submit(answer_all_degraded, line, unstored)
    return 200, "OK"


class Callback:
    """WSGI: `POST /callback` answered straight from the environ; everything else to `app`.

    LINE's webhook is the hottest request by far, and its answer is a status and two bytes.
    Flask's request and application contexts, URL matching, session opening and response
    building cost about as much CPU as the whole durable accept (a py-spy profile under
    `make bench`: ~9% of the server's CPU), so this one route deliberately does not go through
    Flask: it keeps Flask's body limit (413), the security headers every response carries
    (bot.web.headers) and a named failure for an unexpected error (500).
    """

    def __init__(self, app: WSGIApp, line: Any, limits: Limits | None, max_body: int):
        self.app = app
        self.line = line
        self.limits = limits
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/callback" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length > self.max_body:
            return self._send(start_response, environ, 413, "request too large")
        stream = environ["wsgi.input"]
        raw = stream.read(length) if length >= 0 else stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            return self._send(start_response, environ, 413, "request too large")
        try:
            status, text = handle(self.line, self.limits, raw.decode("utf-8", "replace"),
                                  environ.get("HTTP_X_LINE_SIGNATURE"),
                                  environ.get("REMOTE_ADDR"))
        except Exception as exc:  # what Flask's 500 would be: named, never the text
            logs.failure("line.webhook", exc)
            status, text = 500, "internal error"
        return self._send(start_response, environ, status, text)

    @staticmethod
    def _send(start_response: Callable[..., Any], environ: dict[str, Any], status: int,
              text: str) -> list[bytes]:
        data = text.encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(data))), *SECURITY_HEADERS.items()]
        if environ.get("wsgi.url_scheme") == "https":
            headers.append(HSTS)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [data]


def answer_all_degraded(line: Any, jobs: list[tuple[str, Job]]) -> None:
    """Redis is down: answer each event statelessly (crisis lines, 24-hour lines, list)."""
    for pid, job in jobs:
        if job.kind == "unfollow":
            continue
        user_id = job.address(line.sealer)
        if user_id is None:
            continue
        try:
            answer_degraded(line.conversations, line.api, pid, user_id, job)
        except Exception as exc:  # the degraded mode's own: one person's failure, not all
            logs.failure("line.degraded", exc, pid=pid[:16])


__all__ = ["Callback", "answer_all_degraded", "handle"]
