# ruff: noqa: F811 — the shared fixtures are imported by name and requested as parameters
"""Regression tests for the security review's findings 1, 3, 4, 7, 8 and 9 (issue 15) and the
handoff path's "no loss" items (issue 13, item 4): each failed on the code before issue 16 and
passes now. Real Redis, the real app, fake LINE and Slack APIs on loopback."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from bot.channels.line_api import DeliveryPending, LineApi
from bot.channels.slack import bp
from bot.engine import Step
from bot.handoff.cases import CaseStore
from bot.ports import Deliver, Event
from bot.store import Turn
from tests import line_helpers as lh
from tests.fakes.line_api import FakeLine
from tests.test_handoff_backend import (  # noqa: F401 (fixtures)
    NUMBER,
    PID,
    RAW_ID,
    STAFF_A,
    STAFF_B,
    Relays,
    click,
    drain,
    handoff,
    http,
    make_handoff,
    open_case,
    post_event,
    posted,
    relays,
    staff_says,
)
from tests.test_handoff_loop import Poller, loop_app, staff_reply, wait  # noqa: F401

RESIDENT = "U" + "5e7a" * 8
STAFF_LEAD = "U0STAFFLEAD"
OUTSIDER = "U0OUTSIDER1"


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def send(app, *events: dict) -> None:
    body = lh.body(*events)
    resp = app.test_client().post("/callback", data=body.encode(),
                                  headers={"X-Line-Signature": lh.sign(body)},
                                  content_type="application/json")
    assert resp.status_code == 200


def line_case(app, line: FakeLine, user: str = RESIDENT) -> str:
    """A LINE resident opens a case (consent, no message); returns its number."""
    start = len(line.delivered())
    for n, event in enumerate([lh.event("follow", user=user),
                               lh.tap("welcome", "cmd:human", user=user),
                               lh.tap("handoff_consent", "agree", user=user),
                               lh.tap("handoff_message", "send", user=user)], start=1):
        send(app, event)
        got = line.wait_for(start + n)
        assert len(got) == start + n
    receipt = got[-1].body["messages"][0]["text"]
    return receipt.split("受付番号は ")[1][:6]


def case_keys(redis_client, prefix: str) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{prefix}:{{case:*}}:case"))


# -- finding 1: > 50 staff replies, every one delivered ----------------------------------------


def test_finding1_more_than_50_staff_replies_all_reach_a_line_resident(loop_app):
    app, slack, line = loop_app
    number = line_case(app, line)
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    # The resident chose to get staff answers directly (not behind a neutral notice).
    before = len(line.delivered())
    send(app, lh.tap("handoff_open", "cmd:direct_on", user=RESIDENT))
    assert len(line.wait_for(before + 1)) == before + 1
    texts = [f"返信その{n}" for n in range(1, 56)]
    for n, text in enumerate(texts, start=1):
        assert staff_reply(app, slack, number, text, n).status_code == 200

    def pushed() -> list[str]:
        return [r.body["messages"][0]["text"] for r in line.delivered()
                if r.path.endswith("/push")]

    assert wait(lambda: len(pushed()) >= len(texts), timeout=60)
    assert pushed() == [f"相談員より: {t}" for t in texts]   # all 55, in order, none twice
    keys = [r.headers["x-line-retry-key"] for r in line.delivered() if r.path.endswith("/push")]
    assert len(set(keys)) == len(texts)
    assert not [r for r in line.received if r.status == 409]


def test_the_fake_line_api_refuses_a_repeated_retry_key(fake_line):
    fake, url = fake_line
    api = LineApi(url, "tok", backoff=())
    message = [{"type": "text", "text": "x"}]
    assert api.deliver(RESIDENT, "event-1", None, 0.0, message) == "push"
    assert api.deliver(RESIDENT, "event-1", None, 0.0, message) == "push"  # 409: delivered
    assert [r.status for r in fake.received] == [200, 409]
    assert len(fake.delivered()) == 1
    api.close()


# -- finding 3: LINE failing while a case opens / a message is relayed --------------------------


def test_finding3_line_errors_open_one_case_and_relay_once(loop_app, redis_client, key_prefix):
    app, slack, line = loop_app
    handoff = app.extensions["tsunagu_handoff"]
    send(app, lh.event("follow", user=RESIDENT))
    assert line.wait_for(1)
    send(app, lh.tap("welcome", "cmd:human", user=RESIDENT))
    send(app, lh.tap("handoff_consent", "agree", user=RESIDENT))
    assert line.wait_for(3)
    # The reply and every push of the first try fail (1 + 5 calls): the event is tried again.
    line.errors = [500] * 6
    send(app, lh.tap("handoff_message", "send", user=RESIDENT))
    got = line.wait_for(4, timeout=30)
    assert len(got) == 4 and not line.errors
    receipt = got[-1].body["messages"][0]["text"]
    number = receipt.split("受付番号は ")[1][:6]
    assert len(case_keys(redis_client, key_prefix)) == 1             # one case, not two
    assert handoff.cases.get(number) is not None                      # the one the receipt names
    assert wait(lambda: len(slack.posts(thread=False)) == 1)
    # The resident writes while LINE fails again: relayed to staff once.
    line.errors = [500] * 6
    send(app, lh.text("夜になると不安です", user=RESIDENT))
    assert len(line.wait_for(5, timeout=30)) == 5
    said = [m for m in handoff.cases.get(number).thread if m.who == "resident"]
    assert [m.text for m in said] == ["夜になると不安です"]
    assert wait(lambda: handoff.worker.pending() == 0 and any(
        "夜になると不安です" in json.dumps(c.body, ensure_ascii=False)
        for c in slack.posts(thread=True)))
    assert sum("夜になると不安です" in json.dumps(c.body, ensure_ascii=False)
               for c in slack.posts(thread=True)) == 1


def test_finding3_no_delivery_outlives_the_person_lock(fake_line):
    """A deadline (the lock's expiry) stops LINE retries: another dispatcher taking the
    person over after the lock expires never answers alongside this one."""
    fake, url = fake_line
    api = LineApi(url, "tok")                   # the default backoff: ~46 s without a deadline
    assert api.worst_case_s() > 30              # longer than the default 30 s lock
    fake.errors = [503] * 50
    with pytest.raises(DeliveryPending):
        api.deliver(RESIDENT, "event-2", None, 0.0, [{"type": "text", "text": "x"}],
                    deadline=time.monotonic() + 0.5)
    assert len(fake.received) < 4               # stopped by the deadline, not by the backoff
    api.close()


# -- finding 4: staff allow-list and claim semantics -------------------------------------------


@pytest.fixture
def staff_http(make_handoff, fake_slack, relays):
    h = make_handoff(slack_staff_users=(STAFF_A, STAFF_B), slack_lead_users=(STAFF_LEAD,))
    app = Flask("test-staff")
    app.register_blueprint(bp)
    app.extensions["tsunagu_handoff"] = h
    app.config["TESTING"] = True
    return h, app.test_client()


def test_finding4_only_the_claimer_or_a_lead_answers_and_resolves(staff_http, fake_slack,
                                                                  relays: Relays):
    h, http = staff_http
    fake, _ = fake_slack
    open_case(h)
    case = posted(h, fake)
    assert click(http, "claim", NUMBER, STAFF_A).status_code == 200
    # B (staff, not the claimer) answers: not recorded, not relayed, told why.
    post_event(http, staff_says(case, "Bからの返信", user=STAFF_B), event_id="EvB1")
    assert drain(h, lambda: h.worker.pending() == 0)
    assert relays.sent == [] and h.cases.get(NUMBER).thread == []
    note = fake.calls("chat.postEphemeral")[-1].body
    assert note["user"] == STAFF_B and f"<@{STAFF_A}>" in note["text"]
    # B resolves: refused; the case stays open with its address.
    assert click(http, "resolve", NUMBER, STAFF_B).status_code == 200
    assert h.cases.get(NUMBER).status == "claimed" and h.cases.address(NUMBER) == RAW_ID
    assert relays.ended == []
    # Someone outside the allow-list cannot even claim or answer.
    fresh = open_case(h, number="K-NEW2", pid="pid-new2")
    fresh = posted(h, fake, "K-NEW2")
    click(http, "claim", "K-NEW2", OUTSIDER)
    post_event(http, staff_says(fresh, "部外者", user=OUTSIDER), event_id="EvC1")
    assert h.cases.get("K-NEW2").status == "new" and h.cases.get("K-NEW2").thread == []
    # The claimer answers; a lead may answer and resolve too.
    post_event(http, staff_says(case, "Aからの返信", ts="1700000200.000001"), event_id="EvA1")
    post_event(http, staff_says(case, "責任者から", user=STAFF_LEAD, ts="1700000300.000001"),
               event_id="EvL1")
    assert drain(h, lambda: len(relays.sent) == 2)
    assert relays.sent == [(NUMBER, "Aからの返信"), (NUMBER, "責任者から")]
    assert click(http, "resolve", NUMBER, STAFF_LEAD).status_code == 200
    assert h.cases.get(NUMBER).status == "resolved"
    assert drain(h, lambda: len(relays.ended) == 1 and h.worker.pending() == 0)


# -- finding 7: malformed Slack requests ---------------------------------------------------------


def test_finding7_malformed_slack_requests_get_400_or_401_never_500(staff_http):
    _, http = staff_http
    body = json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {}})
    for path in ("/slack/events", "/slack/interactions"):
        bad_stamp = http.post(path, data=body, headers={
            "X-Slack-Request-Timestamp": "not-a-number", "X-Slack-Signature": "v0=00"})
        assert bad_stamp.status_code == 400
        wide_digit = http.post(path, data=body, headers={
            "X-Slack-Request-Timestamp": "１２３", "X-Slack-Signature": "v0=00"})
        assert wide_digit.status_code == 400
        raw = b"\xff\xfe\x00payload"
        stamp = str(int(time.time()))
        not_utf8 = http.post(path, data=raw, headers={
            "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=00"})
        assert not_utf8.status_code == 400
        unsigned = http.post(path, data=body)
        assert unsigned.status_code == 401


def test_finding7_every_slack_route_is_verified(staff_http):
    """Verification is the blueprint's before_request: whatever routes it has, unsigned → 401."""
    _, http = staff_http
    rules = [r for r in http.application.url_map.iter_rules() if r.endpoint.startswith("slack.")]
    assert {r.rule for r in rules} >= {"/slack/events", "/slack/interactions"}
    for rule in rules:
        assert http.post(rule.rule, data="{}").status_code == 401, rule.rule


# -- finding 8: seen only after the work is durable ---------------------------------------------


def test_finding8_a_relay_dying_midway_loses_no_staff_reply(http: FlaskClient, handoff,
                                                            fake_slack, relays: Relays):
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)

    class Dies(Relays):
        died = False

        def staff_reply(self, case, message):  # the process dies during the LINE retries
            if not Dies.died:
                Dies.died = True
                raise SystemExit("worker killed")
            super().staff_reply(case, message)

    dying = Dies(cases=handoff.cases)
    handoff.worker.relay = dying
    # Slack gets its answer at once: the reply is recorded and queued before "seen".
    assert post_event(http, staff_says(case, "大丈夫ですか"), event_id="Ev8001").status_code == 200
    with pytest.raises(SystemExit):
        handoff.worker.step(block_ms=5)
    # Slack's retry is a duplicate now — harmless, because the work survived the crash.
    assert post_event(http, staff_says(case, "大丈夫ですか"), event_id="Ev8001").status_code == 200
    time.sleep(0.06)  # past reclaim_idle_ms (50 ms): the entry is taken over
    assert drain(handoff, lambda: bool(dying.sent) and handoff.worker.pending() == 0)
    assert dying.sent == [(NUMBER, "大丈夫ですか")]
    assert len(handoff.cases.get(NUMBER).thread) == 1


def test_finding8_an_event_failing_before_it_is_queued_is_retried(http: FlaskClient, handoff,
                                                                  fake_slack, relays: Relays,
                                                                  redis_client):
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    real = handoff.cases.enqueue
    calls = {"n": 0}

    def enqueue_fails_once(*args: Any, **kwargs: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("Redis went away")
        return real(*args, **kwargs)

    handoff.cases.enqueue = enqueue_fails_once  # type: ignore[method-assign]
    http.application.config["PROPAGATE_EXCEPTIONS"] = False
    assert post_event(http, staff_says(case, "聞こえますか"), event_id="Ev8101").status_code == 500
    assert not redis_client.exists(f"{handoff.cases.prefix}:slack:seen:Ev8101")
    assert post_event(http, staff_says(case, "聞こえますか"), event_id="Ev8101").status_code == 200
    assert drain(handoff, lambda: bool(relays.sent) and handoff.worker.pending() == 0)
    assert relays.sent == [(NUMBER, "聞こえますか")]
    assert len(handoff.cases.get(NUMBER).thread) == 1   # recorded once over the two tries


# -- finding 9: crash windows ---------------------------------------------------------------------


def test_finding9_a_case_stored_but_not_queued_is_swept_to_staff(handoff, fake_slack,
                                                                 redis_client):
    fake, _ = fake_slack
    cases: CaseStore = handoff.cases

    def crash(case):  # the process dies between storing the case and queueing it
        raise SystemExit("killed")

    cases._queue_opened = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        open_case(handoff)
    del cases._queue_opened
    assert cases.get(NUMBER) is not None and redis_client.xlen(cases.queue) == 0
    assert cases.requeue_stranded(older_than_s=3600) == []   # not before the grace period
    assert cases.requeue_stranded(older_than_s=0) == [NUMBER]
    assert cases.open_case_of(PID) == NUMBER
    assert drain(handoff, lambda: len(fake.posts()) == 1 and handoff.worker.pending() == 0)
    assert cases.requeue_stranded(older_than_s=0) == []      # once
    assert len(fake.posts()) == 1


def test_finding9_web_replies_are_deleted_only_once_the_page_acknowledges(loop_app):
    app, slack, _ = loop_app
    web = app.test_client()
    web.post("/api/chat", json={"type": "start"})
    web.post("/api/chat", json={"type": "tap", "value": "cmd:human", "state": "welcome"})
    web.post("/api/chat", json={"type": "tap", "value": "agree", "state": "handoff_consent"})
    resp = web.post("/api/chat", json={"type": "tap", "value": "send",
                                       "state": "handoff_message"})
    receipt = " ".join(r.get("text", "") for r in resp.json["replies"])
    number = next(w for w in receipt.replace("。", " ").split() if w.startswith("K-"))
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    staff_reply(app, slack, number, "こんにちは", 1)
    assert wait(lambda: web.get("/api/chat/poll?ack=0").json["replies"])
    first = web.get("/api/chat/poll?ack=0").json
    # The response was lost on the way: the next poll (same cursor) gets the reply again.
    again = web.get("/api/chat/poll?ack=0").json
    assert again["replies"] == first["replies"] and first["replies"]
    # Acknowledged: gone.
    done = web.get(f"/api/chat/poll?ack={first['cursor']}").json
    assert done["replies"] == [] and done["cursor"] == first["cursor"]
    assert web.get("/api/chat/poll?ack=x").status_code == 400


class PoisonedProcess:
    """A bot.ports.Conversation that fails unexpectedly for one event id (a bug that only
    that message triggers), and is the real service for every other."""

    def __init__(self, real, poisoned: str):
        self.real, self.poisoned, self.calls = real, poisoned, 0
        self.engine, self.store = real.engine, real.store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def process(self, event: Event, turn: Turn | None, deliver: Deliver) -> Step:
        if event.event_id == self.poisoned and turn is not None:
            self.calls += 1
            raise KeyError("a bug for this one message")
        return self.real.process(event, turn, deliver)


def test_finding9_a_poisoned_line_job_never_blocks_a_crisis_answer_and_is_parked(
        line_app, redis_client, key_prefix):
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    dispatcher = line.dispatcher
    dispatcher.stop()
    poisoned = "POISONEDEVENT0000000000001"
    dispatcher.conversations = PoisonedProcess(line.conversations, poisoned)
    dispatcher._stop = threading.Event()
    dispatcher.start()
    parked = metric("tsunagu_line_jobs_parked_total")
    now = int(time.time() * 1000)
    send(app, lh.text("こんにちは", user=RESIDENT, event_id=poisoned, ts_ms=now - 10),
         lh.text("もう死にたい", user=RESIDENT, ts_ms=now))
    # The crisis answer comes although the earlier message keeps failing.
    assert wait(lambda: any("0120-279-338" in json.dumps(r.body, ensure_ascii=False)
                            for r in fake.delivered()))
    # Tried `job_tries` times, then parked with the degraded answer; the inbox is empty.
    assert wait(lambda: metric("tsunagu_line_jobs_parked_total") == parked + 1, timeout=30)
    assert dispatcher.conversations.calls == dispatcher.job_tries
    pid = line.conversations.pseudonym("line", RESIDENT)
    assert wait(lambda: redis_client.zcard(line.queue.inbox(pid)) == 0)
    assert wait(lambda: len(fake.delivered()) == 2)
    notice = app.extensions["tsunagu"].pack.msg("degraded.notice", "ja")
    assert notice in fake.texts()


# -- issue 13, item 4: an expired case tells the resident -----------------------------------------


def test_an_expired_case_tells_the_resident_in_phone_safe_words(loop_app, pack):
    app, _, line = loop_app
    handoff = app.extensions["tsunagu_handoff"]
    number = line_case(app, line)
    before = len(line.delivered())
    handoff.cases.expire_stale(now=time.time() + 30 * 24 * 3600,
                               before_forget=handoff.relay.expired)
    got = line.wait_for(before + 1)
    assert got[-1].path.endswith("/push") and got[-1].body["to"] == RESIDENT
    pushed = got[-1].body["messages"][0]["text"]
    assert pushed.startswith(pack.msg("notice.text", "ja"))   # the neutral notice (issue 11)
    # Opened: the expiry notice itself, in words that say nothing of what it was about.
    send(app, lh.tap("welcome", "cmd:reveal", user=RESIDENT))
    got = line.wait_for(before + 2)
    notice = pack.msg("handoff.expired", "ja")
    assert notice in [m.get("text") for m in got[-1].body["messages"]]
    for word in ("相談", "相談員", "支援", "窓口", "DV", "ひきこもり"):
        assert word not in notice
    assert handoff.cases.get(number).status == "expired"
    assert handoff.cases.address(number) is None
    # The worker does it by itself when a case expires (its expiry pass).
    assert handoff.worker.relay is handoff.relay


def test_finding9_a_crash_between_the_slack_post_and_saving_its_ts_posts_once(
        handoff, fake_slack, http: FlaskClient, relays: Relays):
    fake, _ = fake_slack
    cases: CaseStore = handoff.cases
    real = cases.set_slack_message

    def dies_once(*args: Any, **kwargs: Any):
        cases.set_slack_message = real  # type: ignore[method-assign]
        raise SystemExit("killed after Slack answered")

    cases.set_slack_message = dies_once  # type: ignore[method-assign]
    open_case(handoff)
    with pytest.raises(SystemExit):
        handoff.worker.poll_once(block_ms=5)
    assert len(fake.posts(thread=False)) == 1 and cases.get(NUMBER).slack_ts is None
    time.sleep(0.06)  # past reclaim_idle_ms: another worker takes the entry over
    assert drain(handoff, lambda: handoff.worker.pending() == 0)
    assert len(fake.posts(thread=False)) == 1              # found, not posted again
    case = cases.get(NUMBER)
    assert case.slack_ts == fake.messages[0]["ts"]
    # Staff answer in that (first and only) thread: it reaches the resident.
    post_event(http, staff_says(case, "スレッドで返信"), event_id="Ev9201")
    assert drain(handoff, lambda: relays.sent == [(NUMBER, "スレッドで返信")])


def test_finding9_a_crash_between_a_thread_post_and_marking_it_delivered_posts_once(
        handoff, fake_slack):
    fake, _ = fake_slack
    open_case(handoff)
    posted(handoff, fake)
    cases: CaseStore = handoff.cases
    real = cases.mark_delivered

    def dies_once(*args: Any, **kwargs: Any):
        cases.mark_delivered = real  # type: ignore[method-assign]
        raise SystemExit("killed after Slack answered")

    cases.add_message(NUMBER, "resident", "眠れません")
    cases.mark_delivered = dies_once  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        handoff.worker.poll_once(block_ms=5)
    time.sleep(0.06)
    assert drain(handoff, lambda: handoff.worker.pending() == 0)
    said = [c for c in fake.posts(thread=True) if "眠れません" in c.body.get("text", "")]
    assert len(said) == 1
