"""LINE webhook events → jobs: the small, durable record of what a person sent.

A job keeps only what answering needs. The user id is sealed (Fernet) because it is the one
address that lets us reach the person; it never appears in a key or a log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from linebot.v3.webhooks import (
    AudioMessageContent,
    Event,
    FileMessageContent,
    FollowEvent,
    ImageMessageContent,
    LocationMessageContent,
    MessageEvent,
    PostbackEvent,
    StickerMessageContent,
    TextMessageContent,
    UnfollowEvent,
    UserSource,
    VideoMessageContent,
)

from bot.channels.line_render import parse_postback
from bot.engine import Incoming

MEDIA = (ImageMessageContent, VideoMessageContent, AudioMessageContent, FileMessageContent,
         LocationMessageContent)
INVALID_TAP = ""  # a value no state offers: the engine asks again, nothing is trusted


@dataclass(frozen=True)
class Job:
    event_id: str
    kind: str          # tap | text | event | unfollow
    value: str
    state: str | None
    reply_token: str | None
    timestamp_ms: int
    sealed_user: str

    def dumps(self) -> str:
        # The instance's own dict: asdict() deep-copies every field first (3x the cost, per
        # event) for a record of plain strings and an int.
        return json.dumps(vars(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> Job:
        return cls(**json.loads(raw))

    def incoming(self) -> Incoming:
        kind = "event" if self.kind == "unfollow" else self.kind
        return Incoming(kind=kind, value=self.value, state=self.state)  # type: ignore[arg-type]


def user_id_of(event: Event) -> str | None:
    source = getattr(event, "source", None)
    return source.user_id if isinstance(source, UserSource) else None


def translate(event: Event) -> tuple[str, str, str | None] | None:
    """(kind, value, state) for the events we answer; None for those we ignore."""
    if isinstance(event, MessageEvent):
        message = event.message
        if isinstance(message, TextMessageContent):
            return "text", message.text, None
        if isinstance(message, StickerMessageContent):
            return "event", "sticker", None
        if isinstance(message, MEDIA):
            return "event", "media", None
        return None
    if isinstance(event, PostbackEvent):
        parsed = parse_postback(event.postback.data)
        if parsed is None:
            return "tap", INVALID_TAP, None
        state, value = parsed
        return "tap", value, state
    if isinstance(event, FollowEvent):
        return "event", "first_contact", None
    if isinstance(event, UnfollowEvent):
        return "unfollow", "", None
    return None  # join, leave, member events, unsend, unknown types: 200 and ignored
