"""The webhook's own reading of LINE events (EventParser) against line-bot-sdk's WebhookParser
and event models, which it replaced: the same events answered with the same jobs, the same
bodies refused, and the few deliberate differences pinned down."""

from __future__ import annotations

import copy
import json

import pytest
from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhooks import (
    AudioMessageContent,
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
from pydantic import ValidationError

from bot.channels.line_events import (
    INVALID_TAP,
    EventParser,
    Job,
    reply_token_of,
    translate,
    user_id_of,
)
from bot.channels.line_render import parse_postback
from bot.crypto import Sealer
from tests import line_helpers as lh

USER = "U" + "c" * 32
SDK_MEDIA = (ImageMessageContent, VideoMessageContent, AudioMessageContent, FileMessageContent,
             LocationMessageContent)


# -- the oracle: what the webhook did with the SDK's parser and models -------------------------

def _sdk_translate(event):
    """bot.channels.line_events.translate as it was, on the SDK's models."""
    if isinstance(event, MessageEvent):
        message = event.message
        if isinstance(message, TextMessageContent):
            return "text", message.text, None
        if isinstance(message, StickerMessageContent):
            return "event", "sticker", None
        if isinstance(message, SDK_MEDIA):
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
    return None


def _sdk_user_id_of(event):
    source = getattr(event, "source", None)
    return source.user_id if isinstance(source, UserSource) else None


def sdk_outcome(raw: str):
    """'refused', or per event (timestamp, job fields or None when not answered)."""
    try:
        events = WebhookParser(lh.LINE_SECRET).parse(raw, lh.sign(raw))
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
        return "refused"
    out = []
    for e in events:
        translated, user_id = _sdk_translate(e), _sdk_user_id_of(e)
        job = None if translated is None or user_id is None else (
            e.webhook_event_id, getattr(e, "reply_token", None), translated, user_id)
        out.append((e.timestamp, job))
    return out


def our_outcome(raw: str):
    try:
        events = EventParser(lh.LINE_SECRET).parse(raw, lh.sign(raw))
    except ValueError:
        return "refused"
    out = []
    for e in events:
        translated, user_id = translate(e), user_id_of(e)
        job = None if translated is None or user_id is None else (
            e["webhookEventId"], reply_token_of(e), translated, user_id)
        out.append((e["timestamp"], job))
    return out


def body_of(*events) -> str:
    return json.dumps({"destination": "U" + "0" * 32, "events": list(events)},
                      ensure_ascii=False)


def message(kind: str, **fields) -> dict:
    return lh.event("message", user=USER, event_id="EV-" + kind,
                    message={"id": "m1", "type": kind, **fields})


def changed(event: dict, path: str, value=..., ) -> dict:
    """A copy of `event` with the field at 'a.b' set to value (... removes it)."""
    out = copy.deepcopy(event)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out


PROVIDER = {"contentProvider": {"type": "line"}, "quoteToken": "q"}
TEXT = message("text", text="毎日ひとりでさびしい", quoteToken="q")
POSTBACK = lh.tap("whose", "self", user=USER, event_id="EV-tap", reply_token="rt-tap")
FOLLOW = lh.event("follow", user=USER, event_id="EV-follow", reply_token="rt-follow")

# Valid events of every kind the webhook answers or ignores: the SDK accepts each.
VALID = {
    "text": TEXT,
    "text with emoji and mention": message(
        "text", text="(emoji) @bot", quoteToken="q",
        emojis=[{"index": 0, "length": 7, "productId": "p", "emojiId": "001"}],
        mention={"mentionees": [{"index": 8, "length": 4, "type": "user", "userId": USER}]}),
    "sticker": message("sticker", packageId="1", stickerId="2", stickerResourceType="STATIC",
                       quoteToken="q"),
    "image": message("image", **PROVIDER),
    "video": message("video", duration=1000, **PROVIDER),
    "audio": message("audio", duration=1000, contentProvider={"type": "line"}),
    "file": message("file", fileName="a.pdf", fileSize=10),
    "location": message("location", latitude=35.0, longitude=135.7, title="t", address="a"),
    "unknown message kind": message("newKind"),
    "tap": POSTBACK,
    "tap with params": changed(POSTBACK, "postback.params", {"datetime": "2026-12-07T10:00"}),
    "forged postback": lh.postback("not-our-data", user=USER, event_id="EV-forged"),
    "tap in standby mode": changed(POSTBACK, "mode", "standby"),
    "redelivered tap": changed(POSTBACK, "deliveryContext", {"isRedelivery": True}),
    "follow": FOLLOW,
    "follow after unblocking": changed(FOLLOW, "follow", {"isUnblocked": True}),
    "unfollow": lh.event("unfollow", user=USER, event_id="EV-unfollow"),
    "text in a group": changed(TEXT, "source", {"type": "group", "groupId": "G1",
                                                "userId": USER}),
    "text in a room": changed(TEXT, "source", {"type": "room", "roomId": "R1", "userId": USER}),
    "user source without userId": changed(TEXT, "source", {"type": "user"}),
    "no source": changed(TEXT, "source", None),
    "join": lh.event("join", user=USER, reply_token="rt"),
    "leave": lh.event("leave", user=USER),
    "unsend": lh.event("unsend", user=USER, unsend={"messageId": "1"}),
    "video played": lh.event("videoPlayComplete", user=USER, reply_token="rt",
                             videoPlayComplete={"trackingId": "t"}),
    "unknown event type": lh.event("somethingNew", user=USER),
}

# Signed bodies both refuse (400).
REFUSED = {
    "not JSON": "{not json",
    "a list": "[]",
    "no events": json.dumps({"destination": "U" + "0" * 32}),
    "events a string": json.dumps({"events": "nope"}),
    "events a number": json.dumps({"events": 5}),
    "an event not an object": body_of(5),
    "an event a list": body_of([TEXT]),
    "type missing": body_of(changed(TEXT, "type")),
    "type null": body_of(changed(TEXT, "type", None)),
    "type a number": body_of(changed(TEXT, "type", 5)),
    "timestamp missing": body_of(changed(TEXT, "timestamp")),
    "timestamp a string": body_of(changed(TEXT, "timestamp", "1700000000000")),
    "timestamp a float": body_of(changed(TEXT, "timestamp", 1.7e12)),
    "timestamp a bool": body_of(changed(TEXT, "timestamp", True)),
    "webhookEventId missing": body_of(changed(TEXT, "webhookEventId")),
    "webhookEventId a number": body_of(changed(TEXT, "webhookEventId", 5)),
    "mode missing": body_of(changed(TEXT, "mode")),
    "mode unknown": body_of(changed(TEXT, "mode", "weird")),
    "deliveryContext missing": body_of(changed(TEXT, "deliveryContext")),
    "isRedelivery missing": body_of(changed(TEXT, "deliveryContext", {})),
    "isRedelivery a string": body_of(changed(TEXT, "deliveryContext", {"isRedelivery": "no"})),
    "source without type": body_of(changed(TEXT, "source", {"userId": USER})),
    "source a string": body_of(changed(TEXT, "source", USER)),
    "one bad event among good ones": body_of(POSTBACK, changed(TEXT, "mode")),
    "an unknown event without its id": body_of(changed(lh.event("somethingNew", user=USER),
                                                       "webhookEventId")),
}

# Events both ignore (200, not answered): what we read is missing or of the wrong type.
IGNORED = {
    "message missing": changed(TEXT, "message"),
    "message id missing": changed(TEXT, "message.id"),
    "text missing": changed(TEXT, "message.text"),
    "text a number": changed(TEXT, "message.text", 5),
    "postback missing": changed(POSTBACK, "postback"),
    "postback data missing": changed(POSTBACK, "postback.data"),
    "postback data a number": changed(POSTBACK, "postback.data", 5),
    "replyToken a number": changed(TEXT, "replyToken", 5),
    "userId a number": changed(TEXT, "source.userId", 5),
    "source of an unknown type": changed(TEXT, "source", {"type": "channel", "userId": USER}),
    "group without groupId": changed(TEXT, "source", {"type": "group", "userId": USER}),
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_events_are_read_as_the_sdk_read_them(name):
    raw = body_of(VALID[name])
    expected = sdk_outcome(raw)
    assert expected != "refused"
    assert our_outcome(raw) == expected


def test_the_valid_events_cover_every_kind_of_answer():
    """The table above is not vacuous: the SDK answers most of it, each kind at least once."""
    kinds = set()
    for event in VALID.values():
        (_, job), = sdk_outcome(body_of(event))
        if job:
            kinds.add(job[2][:2] if job[2][0] == "event" else job[2][0])
    assert kinds == {"text", "tap", "unfollow", ("event", "sticker"), ("event", "media"),
                     ("event", "first_contact")}


def test_several_events_in_one_body_keep_their_order():
    raw = body_of(*VALID.values())
    assert our_outcome(raw) == sdk_outcome(raw)
    assert len(our_outcome(raw)) == len(VALID)
    assert our_outcome(body_of()) == sdk_outcome(body_of()) == []


@pytest.mark.parametrize("name", list(REFUSED))
def test_malformed_bodies_are_refused_as_the_sdk_refused_them(name):
    assert sdk_outcome(REFUSED[name]) == "refused"
    assert our_outcome(REFUSED[name]) == "refused"


@pytest.mark.parametrize("name", list(IGNORED))
def test_events_malformed_where_we_read_are_ignored_as_by_the_sdk(name):
    raw = body_of(IGNORED[name])
    assert sdk_outcome(raw) == our_outcome(raw)
    (_, job), = our_outcome(raw)
    assert job is None


def test_deliberate_differences_from_the_sdk():
    """Fields we never read are not checked, so LINE's event is answered, not dropped; and
    a body whose events are not a list is refused (the SDK read "" or {} as no events)."""
    for event in (changed(TEXT, "message.quoteToken"),
                  changed(VALID["sticker"], "message.packageId"),
                  changed(FOLLOW, "follow"),
                  changed(VALID["image"], "message.contentProvider")):
        raw = body_of(event)
        assert sdk_outcome(raw) in ("refused", [(event["timestamp"], None)])
        (_, job), = our_outcome(raw)
        assert job is not None and job[3] == USER
    for events in ("", {}):
        raw = json.dumps({"events": events})
        assert sdk_outcome(raw) == []
        assert our_outcome(raw) == "refused"


@pytest.mark.parametrize("signature", ["", "bm90IGEgc2lnbmF0dXJl", lh.sign("other")])
def test_a_wrong_signature_is_refused_before_the_body_is_read(signature):
    parser = EventParser(lh.LINE_SECRET)
    with pytest.raises(InvalidSignatureError):
        parser.parse("{not json", signature)
    with pytest.raises(InvalidSignatureError):
        parser.parse(body_of(TEXT), signature)
    with pytest.raises(InvalidSignatureError):
        EventParser("another-secret").parse(body_of(TEXT), lh.sign(body_of(TEXT)))


def test_the_job_fields_of_a_tap():
    (event,) = EventParser(lh.LINE_SECRET).parse(body_of(POSTBACK), lh.sign(body_of(POSTBACK)))
    assert translate(event) == ("tap", "self", "whose")
    assert user_id_of(event) == USER
    assert reply_token_of(event) == "rt-tap"
    assert reply_token_of(VALID["unfollow"]) is None


def test_a_job_names_its_person_also_when_queued_by_an_earlier_version():
    """Jobs carry the user id inside the job's own seal; those queued before (the id sealed on
    its own, `sealed_user`) still open — and not under another key."""
    sealer = Sealer("k" * 32, "line-address")
    earlier = json.dumps({"event_id": "E1", "kind": "text", "value": "x", "state": None,
                           "reply_token": None, "timestamp_ms": 1,
                           "sealed_user": sealer.seal("U" + "1" * 32)})
    assert Job.loads(earlier).address(sealer) == "U" + "1" * 32
    assert Job.loads(earlier).address(Sealer("o" * 32, "line-address")) is None
    now = Job(event_id="E2", kind="tap", value="yes", state="q", reply_token="t",
              timestamp_ms=2, user="U" + "2" * 32)
    assert Job.loads(now.dumps()) == now and Job.loads(now.dumps()).address(sealer) == now.user
