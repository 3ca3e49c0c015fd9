"""LINE webhook bodies → events → jobs: the small, durable record of what a person sent.

A job keeps only what answering needs. It is kept only sealed whole (Fernet, LineQueue.seal),
because the user id in it is the one address that lets us reach the person; the id never
appears in a key or a log.

Why not line-bot-sdk's WebhookParser and its event models here: they build a pydantic (v1)
model for every event and every nested object, of which we read eight fields — 6% of the
server's CPU under `make bench` (py-spy). Per body (`python -m bench.lineio parse`): ~40 → ~8
µs back to back, ~170 → ~55 µs right after a LINE call (caches cold, as in the server). We
keep the SDK's own signature check (`SignatureValidator`) and read the JSON as dicts, checking
the shapes the SDK's models checked for what we use:
- the body is refused (400) when it is not an object with a list of events, or when an event
  lacks a field every event has (the models' `Event`: type, timestamp, mode, webhookEventId,
  deliveryContext, and a source with a type when there is one) — as the SDK refused it;
- an event whose fields we read are missing or of the wrong type is ignored, as the SDK turned
  it into an ignored `UnknownEvent`. Fields we never read (a sticker's packageId, a follow's
  isUnblocked, ...) are not checked: such an event from LINE is answered, not dropped.
tests/test_line_events.py compares every outcome with the SDK's parser and models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhook import SignatureValidator

from bot.channels.line_render import parse_postback
from bot.crypto import Sealer
from bot.engine import Incoming

MEDIA = frozenset({"image", "video", "audio", "file", "location"})
MODES = ("active", "standby")
INVALID_TAP = ""  # a value no state offers: the engine asks again, nothing is trusted
Event = dict[str, Any]  # one webhook event as LINE sent it (JSON object)


class MalformedBody(ValueError):
    """A signed body that is not a webhook as LINE sends it."""


class EventParser:
    """Verify `X-Line-Signature`, then read the body's events (see the module's docstring)."""

    def __init__(self, channel_secret: str):
        self.validator = SignatureValidator(channel_secret)

    def parse(self, body: str, signature: str) -> list[Event]:
        """The events of a signed body; InvalidSignatureError, or ValueError when the body
        is malformed (not JSON, or not the shape of a webhook)."""
        if not self.validator.validate(body, signature):
            raise InvalidSignatureError("invalid signature")
        return events_of(json.loads(body))


def events_of(payload: Any) -> list[Event]:
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        raise MalformedBody("no list of events")
    for event in events:
        if not _well_formed(event):
            raise MalformedBody("an event without the fields every event has")
    return events


def _well_formed(event: Any) -> bool:
    """The fields every event has, by the SDK's `Event` model (StrictInt: not a bool)."""
    if not isinstance(event, dict):
        return False
    source, context = event.get("source"), event.get("deliveryContext")
    if source is not None and not (isinstance(source, dict)
                                   and isinstance(source.get("type"), str)):
        return False
    return (isinstance(event.get("type"), str) and type(event.get("timestamp")) is int
            and isinstance(event.get("webhookEventId"), str) and event.get("mode") in MODES
            and isinstance(context, dict) and isinstance(context.get("isRedelivery"), bool))


@dataclass(frozen=True)
class Job:
    event_id: str
    kind: str          # tap | text | event | unfollow
    value: str
    state: str | None
    reply_token: str | None
    timestamp_ms: int
    # The LINE user id, in a job that is only ever kept sealed whole (LineQueue.seal), so it
    # is sealed once. Jobs queued by earlier versions carry it sealed on its own instead.
    user: str = ""
    sealed_user: str = ""

    def dumps(self) -> str:
        # The instance's own dict: asdict() deep-copies every field first (3x the cost, per
        # event) for a record of plain strings and an int.
        return json.dumps(vars(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> Job:
        return cls(**json.loads(raw))

    def address(self, sealer: Sealer) -> str | None:
        """Whom to answer: None when an earlier version's sealed id no longer opens."""
        if self.user:
            return self.user
        return sealer.open(self.sealed_user) if self.sealed_user else None

    def incoming(self) -> Incoming:
        kind = "event" if self.kind == "unfollow" else self.kind
        return Incoming(kind=kind, value=self.value, state=self.state)  # type: ignore[arg-type]


def user_id_of(event: Event) -> str | None:
    """The person's id, for events from one person's chat (not a group or a room)."""
    source = event.get("source")
    if not isinstance(source, dict) or source.get("type") != "user":
        return None
    user_id = source.get("userId")
    return user_id if isinstance(user_id, str) else None


def reply_token_of(event: Event) -> str | None:
    token = event.get("replyToken")
    return token if isinstance(token, str) else None


def translate(event: Event) -> tuple[str, str, str | None] | None:
    """(kind, value, state) for the events we answer; None for those we ignore."""
    kind = event["type"]
    token = event.get("replyToken")
    if token is not None and not isinstance(token, str):
        return None  # malformed: the SDK's models made it an (ignored) UnknownEvent
    if kind == "message":
        message = event.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            return None
        what = message.get("type")
        if what == "text":
            text = message.get("text")
            return ("text", text, None) if isinstance(text, str) else None
        if what == "sticker":
            return "event", "sticker", None
        if what in MEDIA:
            return "event", "media", None
        return None
    if kind == "postback":
        postback = event.get("postback")
        data = postback.get("data") if isinstance(postback, dict) else None
        if not isinstance(data, str):
            return None
        parsed = parse_postback(data)
        if parsed is None:
            return "tap", INVALID_TAP, None
        state, value = parsed
        return "tap", value, state
    if kind == "follow":
        return "event", "first_contact", None
    if kind == "unfollow":
        return "unfollow", "", None
    return None  # join, leave, member events, unsend, unknown types: 200 and ignored
