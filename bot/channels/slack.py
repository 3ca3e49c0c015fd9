"""The Slack webhook: POST /slack/events (staff replies in a case thread) and
POST /slack/interactions (the claim / resolve buttons). It only translates: verify, parse, hand
plain values to bot.handoff.staff.Staff, answer.

Every request to this blueprint is verified in one `before_request` — Slack's signature over the
raw body with the 5-minute timestamp window — so a route added later cannot skip it. Forged or
stale → 401; a malformed timestamp or a body that is not UTF-8 → 400; never a 500.

Slack wants an answer within 3 seconds: a staff reply is recorded in the case and queued for the
resident (the handoff worker relays it), then the event is marked seen — only once the work is
durable, so a crash before that lets Slack's retry through, and the retry records nothing twice
(the message is keyed by the event id). The app puts the `Handoff` from bot.wiring in
`app.extensions["tsunagu_handoff"]`; nothing is registered at import time.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from flask import Blueprint, Response, current_app, request

from bot import logs
from bot.handoff.cases import valid_number

if TYPE_CHECKING:
    from bot.wiring import Handoff

log = logs.get("slack")
bp = Blueprint("slack", __name__)

SEEN_TTL_S = 24 * 3600
_EVENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _handoff() -> Handoff:
    return current_app.extensions["tsunagu_handoff"]


def _plain(status: int, text: str = "") -> Response:
    return Response(text, status=status, mimetype="text/plain")


@bp.before_request
def verify() -> Response | None:
    """None if the request is Slack's; else the response to send (404 if Slack is unset)."""
    verifier = _handoff().verifier
    if verifier is None:
        return _plain(404)
    stamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not stamp or not signature:
        return _refuse(401, "unsigned")
    if not _TIMESTAMP.fullmatch(stamp):
        return _refuse(400, "malformed timestamp")
    try:
        body = request.get_data().decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(400, "malformed body")
    if not verifier.is_valid(body, stamp, signature):
        return _refuse(401, "invalid signature")
    return None


def _refuse(status: int, reason: str) -> Response:
    logs.event(log, "slack_rejected", logging.WARNING, path=request.path, reason=reason)
    return _plain(status, reason)


_LINK = re.compile(r"<((?:https?|mailto|tel):[^|>]+)(?:\|([^>]+))?>")
_SPECIAL = re.compile(r"<[@#!][^>]*>")


def slack_to_plain(text: str) -> str:
    """Staff text as the resident should read it: links as text, no Slack mentions."""
    text = _LINK.sub(lambda m: f"{m.group(2)} {m.group(1)}" if m.group(2) else m.group(1), text)
    text = _SPECIAL.sub("", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def _seen_key(h: Handoff, event_id: str) -> str:
    return f"{h.cases.prefix}:slack:seen:{event_id}"


@bp.post("/slack/events")
def events() -> Response:
    h = _handoff()
    try:
        data = json.loads(request.get_data())
    except ValueError:
        return _plain(400, "malformed body")
    if not isinstance(data, dict):
        return _plain(400, "malformed body")
    if data.get("type") == "url_verification":
        challenge = data.get("challenge")
        if not isinstance(challenge, str):
            return _plain(400, "malformed body")
        return _plain(200, challenge)
    if data.get("type") != "event_callback":
        return _plain(200)
    event, event_id = data.get("event"), data.get("event_id")
    if not isinstance(event, dict) or not isinstance(event_id, str) \
            or not _EVENT_ID.fullmatch(event_id):
        return _plain(400, "malformed body")
    reply = _staff_reply_of(event)
    if reply is None:
        return _plain(200)
    channel, thread_ts, user, text = reply
    number = h.cases.case_for_thread(channel, thread_ts)
    if number is None or h.cases.redis.exists(_seen_key(h, event_id)):
        return _plain(200)
    h.staff.message(number, user, text, event_id, channel)
    # Only now, with the reply recorded and queued: a crash before this lets Slack retry.
    h.cases.redis.set(_seen_key(h, event_id), "1", ex=SEEN_TTL_S)
    return _plain(200)


def _staff_reply_of(event: dict) -> tuple[str, str, str, str] | None:
    """(channel, thread_ts, user, plain text) of a staff message in a thread, else None."""
    if event.get("type") != "message" or event.get("bot_id") or event.get("subtype"):
        return None  # our own posts, edits, joins, files: not a staff reply
    channel, thread_ts, ts = event.get("channel"), event.get("thread_ts"), event.get("ts")
    user, raw = event.get("user"), event.get("text")
    if not (isinstance(channel, str) and isinstance(thread_ts, str) and isinstance(user, str)
            and isinstance(raw, str)) or thread_ts == ts:
        return None
    text = slack_to_plain(raw)
    return (channel, thread_ts, user, text) if text else None


@bp.post("/slack/interactions")
def interactions() -> Response:
    h = _handoff()
    try:
        form = parse_qs(request.get_data(as_text=True), strict_parsing=True)
        payload = json.loads(form["payload"][0])
        user = payload["user"]["id"]
        actions = payload.get("actions", [])
        if not isinstance(user, str) or not isinstance(actions, list):
            raise TypeError("user or actions")
    except (ValueError, KeyError, IndexError, TypeError):
        return _plain(400, "malformed payload")
    if payload.get("type") != "block_actions":
        return _plain(200)
    channel = (payload.get("channel") or {}).get("id") or \
        (payload.get("container") or {}).get("channel_id")
    for action in actions:
        if not isinstance(action, dict):
            return _plain(400, "malformed payload")
        kind, number = action.get("action_id"), action.get("value")
        if kind not in ("claim", "resolve"):
            continue
        if not isinstance(number, str) or not valid_number(number):
            return _plain(400, "malformed payload")
        if kind == "claim":
            h.staff.claim(number, user, channel)
        else:
            h.staff.resolve(number, user, channel)
    return _plain(200)
