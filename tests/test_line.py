"""The LINE channel against a fake Messaging API on loopback and a real Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest
from linebot.v3.messaging import FlexMessage, ReplyMessageRequest, TextMessage

from bot.channels.line_render import parse_postback, render
from bot.replies import Card, Cards, Choice, Question, Text
from tests import line_helpers as lh

USER = "U" + "1" * 32


def post(client, *events, secret=lh.LINE_SECRET, signature=None):
    body = lh.body(*events)
    sig = signature if signature is not None else lh.sign(body, secret)
    headers = {"X-Line-Signature": sig} if sig else {}
    return client.post("/callback", data=body.encode(), headers=headers,
                       content_type="application/json")


def last_quick_values(received) -> list[str]:
    msg = received.body["messages"][-1]
    return [json.loads(i["action"]["data"])["v"] for i in msg["quickReply"]["items"]]


def test_full_questionnaire_over_line(line_app):
    app, fake = line_app
    client = app.test_client()
    assert post(client, lh.event("follow", user=USER)).status_code == 200
    got = fake.wait_for(1)
    assert last_quick_values(got[0])[0] == "start"
    steps = [("welcome", "start"), ("whose", "family"), ("age", "40_64"),
             ("concern", "hikikomori"), ("hiki_duration", "long"), ("hiki_contact", "open"),
             ("more", "none"), ("ward", "skip"), ("contact", "phone")]
    for n, (state, value) in enumerate(steps, start=2):
        assert post(client, lh.tap(state, value, user=USER)).status_code == 200
        got = fake.wait_for(n)
        assert len(got) == n, f"no answer to {state}:{value}"
    final = got[-1].body["messages"]
    assert len(final) <= 5
    assert any(m["type"] == "flex" for m in final)
    flex = next(m for m in final if m["type"] == "flex")
    uris = [b["action"].get("uri", "") for bub in flex["contents"]["contents"]
            for b in (bub.get("footer") or {}).get("contents", [])]
    assert any(u.startswith("tel:") for u in uris)
    assert last_quick_values(got[-1]) == ["yes", "no", "unsure", "cmd:human", "cmd:restart",
                                        "cmd:directory", "cmd:quick_exit"]


def test_question_numbers_let_pc_users_type(line_app):
    app, fake = line_app
    client = app.test_client()
    post(client, lh.event("follow", user=USER))
    fake.wait_for(1)
    post(client, lh.text("1", user=USER))
    got = fake.wait_for(2)
    text = got[-1].body["messages"][-1]["text"]
    assert "1. 自分のこと" in text and "4. 支援者として" in text


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl", "WRONG"])
def test_forged_or_missing_signature_is_refused(line_app, redis_client, key_prefix, signature):
    app, fake = line_app
    client = app.test_client()
    body = lh.body(lh.text("死にたい", user=USER))
    headers = {"X-Line-Signature": signature} if signature is not None else {}
    resp = client.post("/callback", data=body.encode(), headers=headers,
                       content_type="application/json")
    assert resp.status_code == 400
    time.sleep(0.3)
    assert fake.received == []
    # Only the dispatchers' (empty) ticket shards and the refusal counter of the (hashed)
    # address: no event and no person.
    shards = set(app.extensions["tsunagu_line"].queue.shards)
    assert [k for k in redis_client.scan_iter(match=f"{key_prefix}:*")
            if k.decode() not in shards and b":limit:callback_refused:" not in k] == []


def test_wrong_secret_is_refused(line_app):
    app, _fake = line_app
    resp = post(app.test_client(), lh.text("hi", user=USER), secret="another-secret")
    assert resp.status_code == 400


def test_malformed_signed_body_is_400(line_app):
    app, fake = line_app
    client = app.test_client()
    no_time = lh.text("こんにちは", user=USER)
    del no_time["timestamp"]
    for raw in ("{not json", '{"events": "nope"}', "[]", '{"events": {}}', '{"events": [5]}',
                lh.body(lh.text("a", user=USER), no_time),
                lh.body(dict(lh.text("a", user=USER), webhookEventId=5))):
        resp = client.post("/callback", data=raw.encode(),
                           headers={"X-Line-Signature": lh.sign(raw)},
                           content_type="application/json")
        assert resp.status_code == 400, raw
    time.sleep(0.3)
    assert fake.received == []  # not even the well-formed event beside a malformed one


def test_an_event_malformed_where_we_read_is_ignored(line_app):
    app, fake = line_app
    client = app.test_client()
    no_text = lh.text("a", user=USER)
    del no_text["message"]["text"]
    for ev in (no_text, lh.event("postback", user=USER, postback={"data": 5})):
        assert post(client, ev).status_code == 200
    post(client, lh.text("こんにちは", user=USER))
    assert len(fake.wait_for(1)) == 1
    time.sleep(0.3)
    assert len(fake.delivered()) == 1


def test_body_over_one_megabyte_is_413(line_app):
    app, _ = line_app
    raw = "x" * (1024 * 1024 + 10)
    resp = app.test_client().post("/callback", data=raw.encode(),
                                  headers={"X-Line-Signature": lh.sign(raw)},
                                  content_type="application/json")
    assert resp.status_code == 413


def test_redelivered_event_is_answered_once(line_app):
    app, fake = line_app
    client = app.test_client()
    ev = lh.text("こんにちは", user=USER)
    post(client, ev)
    again = dict(ev, deliveryContext={"isRedelivery": True})
    post(client, again)
    post(client, again)
    time.sleep(0.5)
    assert len(fake.wait_for(1)) == 1
    time.sleep(0.5)
    assert len(fake.delivered()) == 1


def test_hanging_line_api_does_not_hold_the_webhook(line_app):
    app, fake = line_app
    fake.hang_s = 3.0
    client = app.test_client()
    started = time.monotonic()
    resp = post(client, lh.text("こんにちは", user=USER))
    assert resp.status_code == 200
    assert time.monotonic() - started < 2.0
    fake.hang_s = 0.0
    assert fake.wait_for(1, timeout=20), "the answer arrives after the hang"


def test_expired_reply_token_falls_back_to_push(line_app):
    app, fake = line_app
    ev = lh.text("こんにちは", user=USER, reply_token="expired-token")
    fake.expired_tokens.add("expired-token")
    post(app.test_client(), ev)
    got = fake.wait_for(1)
    assert got[0].path.endswith("/push")
    assert got[0].body["to"] == USER
    assert got[0].headers.get("x-line-retry-key")


def test_old_event_is_pushed_not_replied(line_app):
    app, fake = line_app
    ev = lh.text("こんにちは", user=USER, ts_ms=int((time.time() - 120) * 1000))
    post(app.test_client(), ev)
    got = fake.wait_for(1)
    assert got[0].path.endswith("/push")
    paths = [r.path for r in fake.received]
    assert not any(p.endswith("/reply") for p in paths)
    assert any(p.endswith("/chat/loading/start") for p in paths)


def test_line_api_errors_then_recovery(line_app):
    app, fake = line_app
    fake.errors = [500, 429, 500]
    post(app.test_client(), lh.text("こんにちは", user=USER))
    got = fake.wait_for(1, timeout=20)
    assert len(got) == 1
    assert len(fake.delivered()) == 1
    statuses = [r.status for r in fake.received]
    assert statuses[:3] == [500, 429, 500]


def test_line_down_for_long_keeps_the_event_and_retries(line_app):
    app, fake = line_app
    fake.errors = [503] * 8
    post(app.test_client(), lh.text("こんにちは", user=USER))
    got = fake.wait_for(1, timeout=30)
    assert len(got) == 1, "delivered after LINE came back"


def test_stickers_and_images_repeat_the_question(line_app, pack):
    app, fake = line_app
    client = app.test_client()
    post(client, lh.event("follow", user=USER))
    fake.wait_for(1)
    post(client, lh.sticker(user=USER))
    post(client, lh.image(user=USER))
    got = fake.wait_for(3)
    assert pack.msg("event.sticker", "ja") in got[1].body["messages"][0]["text"]
    assert pack.msg("event.media", "ja") in got[2].body["messages"][0]["text"]
    assert last_quick_values(got[2])[0] == "start"


def test_forged_postback_is_unknown_input(line_app, pack):
    app, fake = line_app
    client = app.test_client()
    post(client, lh.event("follow", user=USER))
    fake.wait_for(1)
    post(client, lh.postback("not-our-data", user=USER))
    post(client, lh.tap("results", "cmd:human", user=USER))  # a value from another state
    post(client, lh.tap("welcome", "x" * 90, user=USER))
    got = fake.wait_for(4)
    assert len(got) == 4
    assert all(last_quick_values(r)[0] == "start" for r in got[1:])


def test_unfollow_deletes_the_session(line_app, redis_client, key_prefix):
    app, fake = line_app
    client = app.test_client()
    post(client, lh.event("follow", user=USER))
    fake.wait_for(1)
    deadline = time.monotonic() + 5  # the session is saved just after the answer is sent
    while time.monotonic() < deadline and not list(
            redis_client.scan_iter(match=f"{key_prefix}:*:session")):
        time.sleep(0.05)
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*:session"))
    post(client, lh.event("unfollow", user=USER))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and list(
            redis_client.scan_iter(match=f"{key_prefix}:*:session")):
        time.sleep(0.05)
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*:session")) == []
    assert len(fake.delivered()) == 1


@pytest.mark.parametrize("leave", ["unfollow", "データを消す"])
def test_deleting_the_data_over_line_is_no_failure(line_app, redis_client, key_prefix, caplog,
                                                   leave):
    """The dispatcher's last save reads its script's result by position: after the deletions
    it queued (one DEL per key since c5f739b), not at a fixed place. Reading a DEL's count
    there raised TypeError after every unfollow and データを消す (`line.claim` failure, and
    events that arrived meanwhile left to their due entries)."""
    import logging

    caplog.set_level(logging.WARNING, logger="tsunagu")
    app, fake = line_app
    client = app.test_client()
    post(client, lh.event("follow", user=USER))
    fake.wait_for(1)
    post(client, lh.event("unfollow", user=USER) if leave == "unfollow"
         else lh.text(leave, user=USER))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (list(redis_client.scan_iter(
            match=f"{key_prefix}:*:session")) or len(fake.delivered()) < 1 + (leave != "unfollow")):
        time.sleep(0.05)
    time.sleep(0.3)  # the dispatcher's save comes after the answer is sent
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*:session")) == []
    failures = [getattr(r, "tsunagu_fields", {}) for r in caplog.records
                if r.getMessage() == "failure"]
    assert failures == []
    assert len(fake.delivered()) == 1 + (leave != "unfollow")


def test_unknown_and_group_events_are_ignored(line_app):
    app, fake = line_app
    client = app.test_client()
    for ev in (lh.event("join", user=USER), lh.event("leave", user=USER),
               lh.event("unsend", user=USER, unsend={"messageId": "1"}),
               lh.event("somethingNew", user=USER)):
        assert post(client, ev).status_code == 200
    group = lh.text("hi", user=USER)
    group["source"] = {"type": "group", "groupId": "G1", "userId": USER}
    assert post(client, group).status_code == 200
    time.sleep(0.5)
    assert fake.delivered() == []


def test_events_of_one_person_are_answered_in_order(line_app):
    app, fake = line_app
    client = app.test_client()
    now = int(time.time() * 1000)
    post(client, lh.event("follow", user=USER, ts_ms=now))
    fake.wait_for(1)
    post(client, lh.tap("welcome", "start", user=USER, ts_ms=now + 1),
         lh.tap("whose", "self", user=USER, ts_ms=now + 2),
         lh.tap("age", "18_39", user=USER, ts_ms=now + 3))
    got = fake.wait_for(4, timeout=10)
    assert len(got) == 4
    firsts = [last_quick_values(r)[0] for r in got[1:]]
    assert firsts == ["self", "u18", "suicide"], firsts


def test_many_people_at_once_each_in_order(line_app):
    """Several residents write at the same moment: each gets their own answers, in order."""
    import threading

    app, fake = line_app
    users = [f"U{n:032d}" for n in range(8)]
    steps = [("welcome", "start"), ("whose", "self"), ("age", "18_39")]
    token_of = {}
    now = int(time.time() * 1000)

    def resident(user: str) -> None:
        client = app.test_client()
        for i, (state, value) in enumerate(steps):
            token = f"{user}-{i}"
            token_of[token] = (user, i)
            post(client, lh.tap(state, value, user=user, ts_ms=now + i, reply_token=token))
            time.sleep(0.05)

    threads = [threading.Thread(target=resident, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = fake.wait_for(len(steps) * len(users), timeout=20)
    assert len(got) == len(steps) * len(users)
    answers: dict[str, list] = {}
    for r in got:
        user, i = token_of[r.body["replyToken"]]
        answers.setdefault(user, []).append((r.at, i, last_quick_values(r)[0]))
    for user in users:
        seq = [first for _, _, first in sorted(answers[user])]
        assert seq == ["self", "u18", "suicide"], (user, seq)


def test_no_raw_user_id_in_redis_keys_or_logs(line_app, redis_client, key_prefix, caplog):
    app, fake = line_app
    caplog.set_level("DEBUG", logger="tsunagu")
    post(app.test_client(), lh.text("お金がない 死にたい", user=USER))
    fake.wait_for(1)
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:*")]
    assert keys and not any(USER in k for k in keys)
    text = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert USER not in text
    assert "死にたい" not in text and "お金" not in text


def test_render_stays_within_line_limits(engine, walker):
    """Every message the renderer builds passes the SDK's own model validation."""
    walker.start()
    walker.text("死にたい")
    for value in ("start", "self", "18_39", "dv_abuse", "yes", "suicide", "none"):
        walker.tap(value)
    walker.tap_ward("skip")
    walker.tap("phone")
    messages = render(walker.replies, "電話", "ホームページ")
    assert 1 <= len(messages) <= 5
    ReplyMessageRequest.from_dict({"replyToken": "t", "messages": messages})
    for raw in messages:
        m = {"text": TextMessage, "flex": FlexMessage}[raw["type"]].from_dict(raw)
        if isinstance(m, FlexMessage):
            assert len(m.contents.contents) <= 12
            assert len(m.alt_text) <= 400
            buttons = [b for bubble in m.contents.contents if bubble.footer
                       for b in bubble.footer.contents]
            assert any(b.action.uri.startswith("tel:") for b in buttons)
        if m.quick_reply:
            assert len(m.quick_reply.items) <= 13
            for item in m.quick_reply.items:
                assert len(item.action.label) <= 20
                assert len(item.action.data) <= 300
                assert parse_postback(item.action.data) is not None
    assert messages[-1]["quickReply"]["items"], "the closing question keeps its choices"


def test_render_never_drops_the_question():
    q = Question(text="q", state="s", choices=[Choice(label="a", value="a")])
    card = Cards(title="t", cards=[Card(id="x", kind="window", name="n", summary="s")])
    replies = [Text(text="a"), card, Text(text="b")] * 3 + [q]
    messages = render(replies, "call", "site")
    assert len(messages) <= 5
    assert messages[-1]["quickReply"]["items"][0]["action"]["label"] == "a"


def test_free_text_is_confirmed_with_quick_replies(line_app):
    """Issue 9 on LINE: the confirmation's はい/ちがう are quick replies (postbacks)."""
    app, fake = line_app
    client = app.test_client()
    post(client, lh.text("毎日ひとりでさびしい", user=USER))
    got = fake.wait_for(1)
    assert last_quick_values(got[-1])[:2] == ["yes", "no"]
    assert "読み取れ" not in json.dumps(got[-1].body, ensure_ascii=False)
    post(client, lh.tap("triage", "yes", user=USER))
    got = fake.wait_for(2)
    assert last_quick_values(got[-1])[:4] == ["self", "family", "friend", "supporter"]


# -- a reply whose answer never came ---------------------------------------------------------

ONE = [{"type": "text", "text": "x"}]


def _api(url: str):
    from bot.channels.line_api import LineApi

    api = LineApi(url, "tok", backoff=(0.05,))
    api.timeout = (1.0, 0.3)  # read: give up on LINE's answer after 0.3 s
    return api


def test_a_reply_taken_but_answered_late_is_not_pushed_again(fake_line):
    """LINE took the reply but its answer came after our read timeout: trying the same
    single-use token again gets 400, so it was delivered — no push, said once."""
    fake, url = fake_line
    fake.late_answers, fake.late_s = 1, 1.0
    api = _api(url)
    assert api.deliver("U" + "b" * 32, "ev-late", "token-late", 0.0, ONE) == "already"
    assert len(fake.delivered()) == 1
    assert [r.path for r in fake.received] == ["/v2/bot/message/reply"] * 2
    api.close()


def test_a_reply_lost_before_line_took_it_is_tried_again_and_sent_once(fake_line):
    """LINE hung before taking the first reply: the second try with the same token is the
    one delivered, and the first, taken later, is refused as used. No push."""
    fake, url = fake_line
    fake.hang_s = 0.5
    woke = threading.Timer(0.2, lambda: setattr(fake, "hang_s", 0.0))
    woke.start()
    assert _api(url).deliver("U" + "b" * 32, "ev-hang", "token-hang", 0.0, ONE) == "reply"
    woke.join()
    time.sleep(0.5)  # the first request is taken (and refused) after we gave up on it
    assert len(fake.delivered()) == 1
    assert not [r for r in fake.received if r.path.endswith("/push")]


def test_a_reply_unanswered_twice_waits_and_its_retry_says_nothing_twice(fake_line):
    """No answer to either try: the event is kept (DeliveryPending), not pushed; the retry
    (the job marked as being answered) finds the token used and sends nothing more."""
    from bot.channels.line_api import DeliveryPending

    fake, url = fake_line
    fake.late_answers, fake.late_s = 2, 0.6
    api = _api(url)
    with pytest.raises(DeliveryPending):
        api.deliver("U" + "b" * 32, "ev-twice", "token-twice", 0.0, ONE)
    time.sleep(0.7)
    assert api.deliver("U" + "b" * 32, "ev-twice", "token-twice", 1.0, ONE,
                       retrying=True) == "already"
    assert len(fake.delivered()) == 1
    assert not [r for r in fake.received if r.path.endswith("/push")]
    api.close()


def test_a_refused_connection_pushes_at_once(fake_line):
    """Nothing can have been delivered when no connection was made: the push follows at
    once (its retry key keeps it single) — here against a closed port, so it fails too and
    the event waits for a retry."""
    import socket

    from bot.channels.line_api import DeliveryPending, LineApi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = LineApi(f"http://127.0.0.1:{port}", "tok", backoff=(0.01,))
    calls: list[str] = []
    real = api._post
    api._post = lambda path, *a, **k: (calls.append(path), real(path, *a, **k))[1]
    with pytest.raises(DeliveryPending):
        api.deliver("U" + "b" * 32, "ev-refused", "token-refused", 0.0, ONE)
    assert calls[0].endswith("/reply") and calls[1].endswith("/push")
    assert calls.count("/v2/bot/message/reply") == 1
    api.close()
