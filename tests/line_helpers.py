"""Building LINE webhooks as LINE does: JSON body, HMAC-SHA256 signature in base64."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

LINE_SECRET = "line-channel-secret-for-tests"


def sign(body: str, secret: str = LINE_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
                            ).decode()


def event(kind: str, user: str = "U" + "a" * 32, redelivery: bool = False,
          ts_ms: int | None = None, event_id: str | None = None, **extra) -> dict:
    base = {
        "type": kind,
        "mode": "active",
        "timestamp": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": event_id or uuid.uuid4().hex.upper()[:26],
        "deliveryContext": {"isRedelivery": redelivery},
    }
    if kind in ("message", "postback", "follow"):
        base["replyToken"] = extra.pop("reply_token", uuid.uuid4().hex)
    if kind == "follow":
        base["follow"] = {"isUnblocked": False}
    base.update(extra)
    return base


def text(t: str, **kw) -> dict:
    return event("message", message={"id": uuid.uuid4().hex[:12], "type": "text", "text": t,
                                     "quoteToken": "q"}, **kw)


def postback(data: str, **kw) -> dict:
    return event("postback", postback={"data": data}, **kw)


def tap(state: str, value: str, **kw) -> dict:
    return postback(json.dumps({"s": state, "v": value}, separators=(",", ":")), **kw)


def sticker(**kw) -> dict:
    return event("message", message={"id": "1", "type": "sticker", "packageId": "1",
                                     "stickerId": "1", "stickerResourceType": "STATIC",
                                     "quoteToken": "q"}, **kw)


def image(**kw) -> dict:
    return event("message", message={"id": "2", "type": "image", "quoteToken": "q",
                                     "contentProvider": {"type": "line"}}, **kw)


def body(*events: dict) -> str:
    return json.dumps({"destination": "Uxxxxxxxx", "events": list(events)},
                      ensure_ascii=False)
