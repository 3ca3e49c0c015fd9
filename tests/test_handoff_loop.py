"""The whole loop, through the real app: resident → staff → resident → staff → resolve,
over the web chat and over LINE, with a fake Slack and a fake LINE API on loopback."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bot.config import Settings
from tests import line_helpers as lh
from tests.conftest import SECRET
from tests.fakes.line_api import FakeLine
from tests.fakes.line_api import serve as serve_line
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack
from tests.test_handoff_backend import CHANNEL, SIGNING, STAFF_A, click, post_event

RAW_LINE_ID = "U" + "9c1d" * 8


@pytest.fixture
def redis_url(either_redis: str | None) -> str | None:
    """The loop runs on one Redis and on a local 3+3 Redis Cluster."""
    return either_redis


@pytest.fixture
def loop_app(redis_url, key_prefix, redis_client):
    from bot.wiring import build
    from server import create_app

    slack, line = FakeSlack(), FakeLine()
    slack_server, slack_url = serve_slack(slack)
    line_server, line_url = serve_line(line)
    settings = Settings(
        redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
        line_channel_secret=lh.LINE_SECRET, line_channel_access_token="tok",
        line_api_base_url=line_url, line_reclaim_idle_ms=500, lock_ms=5000,
        slack_bot_token=slack.token, slack_signing_secret=SIGNING,
        slack_staff_channel=CHANNEL, slack_api_base_url=slack_url + "/")
    app = create_app(settings, services=build(settings, client=redis_client))
    handoff = app.extensions["tsunagu_handoff"]
    handoff.start_thread()
    yield app, slack, line
    handoff.stop()
    app.extensions["tsunagu_line"].stop()
    slack_server.shutdown()
    line_server.shutdown()


def wait(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def staff_reply(app, slack: FakeSlack, number: str, text: str, n: int):
    handoff = app.extensions["tsunagu_handoff"]
    case = handoff.cases.get(number)
    event = {"type": "message", "channel": CHANNEL, "user": STAFF_A, "text": text,
             "ts": f"1700000{n:03d}.000001", "thread_ts": case.slack_ts}
    return post_event(app.test_client(), event, event_id=f"Ev{number}{n}")


class Poller:
    """Polls like the page does: each poll acknowledges the previous one's cursor."""

    def __init__(self, web):
        self.web, self.cursor = web, 0

    def next(self, timeout: float = 30.0) -> list[dict]:
        got: list[dict] = []

        def ready() -> bool:
            data = self.web.get(f"/api/chat/poll?ack={self.cursor}").json
            if data["replies"]:
                got.extend(data["replies"])
                self.cursor = data["cursor"]
            return bool(got)

        wait(ready, timeout)
        return got


def test_whole_loop_over_the_web_chat(loop_app, caplog):
    app, slack, _ = loop_app
    caplog.set_level(logging.DEBUG)
    web = app.test_client()
    web.post("/api/chat", json={"type": "start"})
    for state, value in [("welcome", "start"), ("whose", "family"), ("age", "40_64"),
                         ("concern", "hikikomori"), ("hiki_duration", "long"),
                         ("hiki_contact", "not_open"), ("more", "none"), ("ward", "sakyo"),
                         ("contact", "chat")]:
        web.post("/api/chat", json={"type": "tap", "value": value, "state": state})
    resp = web.post("/api/chat", json={"type": "tap", "value": "cmd:human", "state": "results"})
    assert resp.json["replies"][-1]["state"] == "handoff_consent"
    web.post("/api/chat", json={"type": "tap", "value": "agree", "state": "handoff_consent"})
    resp = web.post("/api/chat", json={"type": "text", "text": "兄が部屋から出てきません"})
    receipt = " ".join(r.get("text", "") for r in resp.json["replies"])
    number = next(w for w in receipt.replace("。", " ").split() if w.startswith("K-"))
    # Staff get the case in Slack, with its number and no identity.
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    root = slack.posts(thread=False)[0]
    assert number in json.dumps(root.body, ensure_ascii=False)
    # This resident chooses staff messages in full (the default, a neutral notice first, is
    # tested in tests/test_phonesafe.py).
    web.post("/api/chat", json={"type": "tap", "value": "cmd:direct_on", "state": "handoff_open"})
    # Staff answer in the thread → the page receives 「相談員より: …」.
    assert staff_reply(app, slack, number, "お話を聞かせてください", 1).status_code == 200
    poller = Poller(web)
    polled = poller.next()
    assert polled[0]["text"] == "相談員より: お話を聞かせてください"
    # The resident writes again → it goes to the thread.
    web.post("/api/chat", json={"type": "text", "text": "ありがとうございます"})
    assert wait(lambda: any("ありがとうございます" in json.dumps(c.body, ensure_ascii=False)
                            for c in slack.posts(thread=True)))
    assert staff_reply(app, slack, number, "明日お電話しますか？", 2).status_code == 200
    assert poller.next()[0]["text"].endswith("明日お電話しますか？")
    # 対応完了 → the resident is told, and the address is gone.
    assert click(app.test_client(), "claim", number, STAFF_A).status_code == 200
    assert click(app.test_client(), "resolve", number, STAFF_A).status_code == 200
    closed = poller.next()
    assert closed and "終了" in closed[0]["text"]
    # Released right after the farewell is delivered, by the worker's thread: waited for.
    assert wait(lambda: handoff.cases.address(number) is None)
    assert handoff.cases.get(number).status == "resolved"
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "兄が部屋から出てきません" not in logged


def test_whole_loop_over_line_and_no_raw_id_anywhere(loop_app, caplog, redis_client,
                                                    key_prefix):
    app, slack, line = loop_app
    caplog.set_level(logging.DEBUG)
    client = app.test_client()

    def send(*events):
        body = lh.body(*events)
        return client.post("/callback", data=body.encode(),
                           headers={"X-Line-Signature": lh.sign(body)},
                           content_type="application/json")

    send(lh.event("follow", user=RAW_LINE_ID))
    assert line.wait_for(1)
    for n, (state, value) in enumerate([("welcome", "start"), ("whose", "self"),
                                        ("age", "18_39"), ("concern", "loneliness"),
                                        ("more", "none"), ("ward", "skip"),
                                        ("contact", "chat")], start=2):
        send(lh.tap(state, value, user=RAW_LINE_ID))
        assert len(line.wait_for(n)) == n
    send(lh.tap("results", "cmd:human", user=RAW_LINE_ID))
    send(lh.tap("handoff_consent", "agree", user=RAW_LINE_ID))
    send(lh.tap("handoff_message", "send", user=RAW_LINE_ID))
    got = line.wait_for(11)
    assert len(got) == 11
    receipt = got[-1].body["messages"][0]["text"]
    number = receipt.split("受付番号は ")[1][:6]
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    # Staff messages in full, by the resident's choice (default: tests/test_phonesafe.py).
    send(lh.tap("handoff_open", "cmd:direct_on", user=RAW_LINE_ID))
    assert len(line.wait_for(12)) == 12
    # Staff → resident by LINE push, prefixed.
    assert staff_reply(app, slack, number, "はじめまして。担当の者です", 1).status_code == 200
    assert wait(lambda: any(r.path.endswith("/push") for r in line.delivered()))
    pushed = [r for r in line.delivered() if r.path.endswith("/push")]
    assert pushed and pushed[-1].body["to"] == RAW_LINE_ID
    assert pushed[-1].body["messages"][0]["text"] == "相談員より: はじめまして。担当の者です"
    # Resident → staff, then a crisis word: answered at once, and announced urgent.
    send(lh.text("夜が怖いです", user=RAW_LINE_ID))
    assert wait(lambda: any("夜が怖いです" in json.dumps(c.body, ensure_ascii=False)
                            for c in slack.posts(thread=True)))
    send(lh.text("もう死にたい", user=RAW_LINE_ID))
    assert wait(lambda: any("0120-279-338" in json.dumps(r.body, ensure_ascii=False)
                            for r in line.delivered()))
    assert wait(lambda: handoff.cases.get(number).request.urgent)
    # Resolve: the resident is told by push; the sealed address is gone.
    click(app.test_client(), "resolve", number, STAFF_A)
    assert wait(lambda: "終了" in line.delivered()[-1].body["messages"][0]["text"])
    # The worker releases the address after the farewell is delivered (the fake LINE has it
    # first): waited for, not asserted in the gap between the two.
    assert wait(lambda: handoff.cases.address(number) is None)
    # The raw LINE id is in no Slack payload, no log line, no Redis key or value.
    slack_text = json.dumps([c.body for c in slack.calls(ok_only=False)], ensure_ascii=False)
    assert RAW_LINE_ID not in slack_text
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert RAW_LINE_ID not in logged
    for key in redis_client.scan_iter(match=f"{key_prefix}:*"):
        assert RAW_LINE_ID.encode() not in key
        if redis_client.type(key) == b"string":
            assert RAW_LINE_ID.encode() not in (redis_client.get(key) or b"")


def test_text_to_an_expired_case_is_not_swallowed(loop_app, pack):
    app, _, _ = loop_app
    web = app.test_client()
    web.post("/api/chat", json={"type": "start"})
    for state, value in [("welcome", "start"), ("whose", "self"), ("age", "skip"),
                         ("concern", "loneliness"), ("more", "none"), ("ward", "skip"),
                         ("contact", "chat")]:
        web.post("/api/chat", json={"type": "tap", "value": value, "state": state})
    web.post("/api/chat", json={"type": "tap", "value": "cmd:human", "state": "results"})
    web.post("/api/chat", json={"type": "tap", "value": "agree", "state": "handoff_consent"})
    web.post("/api/chat", json={"type": "tap", "value": "send", "state": "handoff_message"})
    handoff = app.extensions["tsunagu_handoff"]
    assert handoff.cases.expire_stale(now=time.time() + 30 * 24 * 3600)
    resp = web.post("/api/chat", json={"type": "text", "text": "まだですか"})
    texts = [r.get("text") for r in resp.json["replies"]]
    assert pack.msg("handoff.closed", "ja") in texts
    assert pack.msg("handoff.relayed", "ja") not in texts
    assert resp.json["replies"][-1]["choices"]
    # Free text now drives the questionnaire again instead of a closed case.
    resp = web.post("/api/chat", json={"type": "text", "text": "最初から"})
    assert resp.json["replies"][-1]["state"] == "welcome"
