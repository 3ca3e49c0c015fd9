"""POST /callback: LINE's webhook. Verify, make durable, answer 200 — nothing else here.

The answer itself is sent by the dispatcher, so a slow or hanging LINE API never holds the
webhook past LINE's 2-second budget. When Redis is down nothing can be made durable; then the
event is answered in degraded mode by a small bounded pool (crisis lines, hotlines, list).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from linebot.v3.exceptions import InvalidSignatureError

from bot import logs, metrics
from bot.channels.line_events import Job, reply_token_of, translate, user_id_of
from bot.channels.line_queue import answer_degraded
from bot.service import REDIS_DOWN

log = logs.get("line")
bp = Blueprint("line", __name__)


def _line() -> Any:
    return current_app.extensions["tsunagu_line"]


def _bad(reason: str) -> Response:
    logs.event(log, "webhook_rejected", logging.WARNING, reason=reason)
    return Response(reason, status=400, mimetype="text/plain")


def _refused(reason: str, line: Any) -> Response:
    """A refused request counts against its (hashed) client address; past the limit the
    answer is 429 and nothing is logged, so a flood fills neither Redis nor the log."""
    limits = current_app.extensions.get("tsunagu_limits")
    if limits is not None and not limits.hit("callback_refused", limits.tag(request.remote_addr),
                                             line.refusals_per_minute):
        return Response("too many refused requests", status=429, mimetype="text/plain")
    return _bad(reason)


@bp.post("/callback")
def callback() -> Response:
    """Signed requests (LINE's) are never limited by address: LINE's few addresses carry every
    resident, and the per-person limit applies to those. The signature is checked first — an
    HMAC costs less than a Redis round trip — and only refused requests are counted."""
    line = _line()
    signature = request.headers.get("X-Line-Signature")
    if not signature:
        return _refused("missing signature", line)
    body = request.get_data(as_text=True)
    try:
        events = line.parser.parse(body, signature)
    except InvalidSignatureError:
        return _refused("invalid signature", line)
    except ValueError:  # not JSON, or not the shape of a webhook (EventParser)
        return _refused("malformed body", line)
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
                              timestamp_ms=timestamp, sealed_user=line.sealer.seal(user_id))))
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
            return Response("not replicated in time", status=500, mimetype="text/plain")
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
    return Response("OK", status=200, mimetype="text/plain")


def answer_all_degraded(line: Any, jobs: list[tuple[str, Job]]) -> None:
    """Redis is down: answer each event statelessly (crisis lines, 24-hour lines, list)."""
    for pid, job in jobs:
        if job.kind == "unfollow":
            continue
        user_id = line.sealer.open(job.sealed_user)
        if user_id is None:
            continue
        try:
            answer_degraded(line.conversations, line.api, pid, user_id, job)
        except Exception as exc:  # the degraded mode's own: one person's failure, not all
            logs.failure("line.degraded", exc, pid=pid[:16])


__all__ = ["answer_all_degraded", "bp"]
