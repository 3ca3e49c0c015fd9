"""Security review, finding 2: anonymous flooding. Per-address limits on new conversations,
requests, cases and refused webhooks; crisis alerts to staff limited per case while the
resident gets every crisis reply. Real app, real Redis, fake Slack and LINE on loopback."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace

from bot.replies import offers_a_way_on
from bot.wiring import build
from server import create_app
from tests import line_helpers as lh
from tests import test_handoff_loop as loop
from tests.test_handoff_loop import wait

loop_app = loop.loop_app  # the fixture: a web + LINE + Slack app with fakes on loopback
ADDRESS = "203.0.113.50"


def _app(settings, redis_client):
    app = create_app(settings, services=build(settings, client=redis_client))
    app.config["TESTING"] = True
    return app


def _sessions(redis_client, prefix) -> int:
    return len(list(redis_client.scan_iter(match=f"{prefix}:*:session")))


def _valid(replies) -> bool:
    from pydantic import TypeAdapter

    from bot.replies import Reply

    return offers_a_way_on(TypeAdapter(list[Reply]).validate_python(replies))


def test_cookieless_posts_create_a_bounded_number_of_sessions(settings, redis_client,
                                                              key_prefix, pack):
    app = _app(replace(settings, web_new_sessions_per_minute=10), redis_client)
    # One minute for the whole test: the limit is per fixed minute, and on a slow machine the
    # 120 posts could otherwise straddle two minutes (10 new sessions in each).
    minute = time.time()
    app.extensions["tsunagu_limits"].clock = lambda: minute
    client = app.test_client()
    limited = 0
    for i in range(120):
        client.delete_cookie("tsunagu_visitor")
        if i % 3 == 0:  # a script minting cookies of its own does no better
            client.set_cookie("tsunagu_visitor", secrets.token_hex(16))
        resp = client.post("/api/chat", json={"type": "start"},
                           environ_base={"REMOTE_ADDR": ADDRESS})
        assert resp.status_code == 200 and _valid(resp.json["replies"])
        if pack.msg("limited.notice", "ja") in [r.get("text") for r in resp.json["replies"]]:
            limited += 1
            assert "Set-Cookie" not in resp.headers  # nothing kept for this answer
    assert _sessions(redis_client, key_prefix) == 10 and limited == 110
    # Over the limit, crisis words still bring the crisis lines and the window list.
    resp = client.post("/api/chat", json={"type": "text", "text": "死にたい"},
                       environ_base={"REMOTE_ADDR": ADDRESS})
    replies = resp.json["replies"]
    assert any(r.get("urgent") for r in replies)
    assert any(r["type"] == "cards" for r in replies) and _valid(replies)
    assert _sessions(redis_client, key_prefix) == 10
    # Another address has its own budget; the address is in no key.
    other = app.test_client().post("/api/chat", json={"type": "start"},
                                   environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert "Set-Cookie" in other.headers
    keys = b" ".join(redis_client.scan_iter(match=f"{key_prefix}:*"))
    assert ADDRESS.encode() not in keys and b"198.51.100.9" not in keys


def test_forwarded_for_counts_only_behind_a_trusted_proxy(settings, redis_client, key_prefix):
    direct = _app(replace(settings, web_new_sessions_per_minute=3), redis_client).test_client()
    for i in range(10):  # a client cannot buy a fresh budget by claiming another address
        direct.delete_cookie("tsunagu_visitor")
        direct.post("/api/chat", json={"type": "start"},
                    headers={"X-Forwarded-For": f"192.0.2.{i}"})
    assert _sessions(redis_client, key_prefix) == 3
    behind = _app(replace(settings, web_new_sessions_per_minute=3, trusted_proxies=1,
                          key_prefix=key_prefix + "-b"), redis_client).test_client()
    for i in range(5):  # behind a proxy, each real client address counts on its own
        behind.delete_cookie("tsunagu_visitor")
        behind.post("/api/chat", json={"type": "start"},
                    headers={"X-Forwarded-For": f"192.0.2.{i}"})
    assert _sessions(redis_client, key_prefix + "-b") == 5
    for key in redis_client.scan_iter(match=f"{key_prefix}-b:*"):
        redis_client.delete(key)


def test_requests_per_address_are_limited_with_a_stateless_answer(settings, redis_client,
                                                                  key_prefix, pack):
    client = _app(replace(settings, web_requests_per_minute=5), redis_client).test_client()
    client.post("/api/chat", json={"type": "start"})
    for _ in range(4):
        client.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    resp = client.post("/api/chat", json={"type": "text", "text": "1"})
    texts = [r.get("text") for r in resp.json["replies"]]
    assert pack.msg("limited.notice", "ja") in texts and _valid(resp.json["replies"])


def _ask_for_a_person(web) -> list[dict]:
    web.post("/api/chat", json={"type": "start"})
    web.post("/api/chat", json={"type": "tap", "value": "cmd:human", "state": "welcome"})
    web.post("/api/chat", json={"type": "tap", "value": "agree", "state": "handoff_consent"})
    return web.post("/api/chat", json={"type": "tap", "value": "send",
                                       "state": "handoff_message"}).json["replies"]


def test_cases_per_address_are_limited(loop_app, pack):
    app, slack, _ = loop_app
    handoff = app.extensions["tsunagu_handoff"]
    limit = app.extensions["tsunagu"].settings.cases_per_address_per_day
    for _ in range(limit):
        replies = _ask_for_a_person(app.test_client())
        assert any("K-" in (r.get("text") or "") for r in replies)
    refused = _ask_for_a_person(app.test_client())
    texts = [r.get("text") or "" for r in refused]
    assert pack.msg("handoff_limit.refused", "ja") in texts
    assert not any("K-" in t for t in texts)
    assert any(r["type"] == "cards" for r in refused) and _valid(refused)
    assert wait(lambda: len(slack.posts(thread=False)) >= limit)
    assert len(slack.posts(thread=False)) == limit
    assert len(handoff.cases.redis.zrange(handoff.cases.open_index, 0, -1)) == limit


def test_crisis_alerts_to_staff_are_limited_per_case_not_the_crisis_replies(loop_app):
    app, slack, _ = loop_app
    handoff = app.extensions["tsunagu_handoff"]
    web = app.test_client()
    receipt = " ".join(r.get("text") or "" for r in _ask_for_a_person(web))
    number = next(w for w in receipt.replace("。", " ").split() if w.startswith("K-"))
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    for _ in range(40):
        resp = web.post("/api/chat", json={"type": "text", "text": "死にたい"})
        assert any(r.get("urgent") for r in resp.json["replies"])  # every one of them
    assert handoff.cases.get(number).request.urgent
    assert wait(lambda: handoff.worker.pending() == 0 and len(slack.posts(thread=True)) >= 40)
    broadcasts = [c for c in slack.posts(thread=True) if c.body.get("reply_broadcast")]
    assert len(broadcasts) == 1


def test_refused_webhooks_per_address_get_429(line_app):
    app, _ = line_app
    client = app.test_client()
    limit = app.extensions["tsunagu_line"].refusals_per_minute
    body = lh.body(lh.text("hi"))

    def forged():
        return client.post("/callback", data=body.encode(), content_type="application/json",
                           headers={"X-Line-Signature": "forged"},
                           environ_base={"REMOTE_ADDR": ADDRESS}).status_code

    assert [forged() for _ in range(limit)] == [400] * limit
    assert [forged() for _ in range(5)] == [429] * 5
    # LINE's own (signed) requests are never limited by address.
    for _ in range(limit + 5):
        body = lh.body(lh.sticker())
        resp = client.post("/callback", data=body.encode(), content_type="application/json",
                           headers={"X-Line-Signature": lh.sign(body)},
                           environ_base={"REMOTE_ADDR": ADDRESS})
        assert resp.status_code == 200
