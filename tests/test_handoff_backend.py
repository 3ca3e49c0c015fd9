"""The staff side of the handoff against a real Redis and a fake Slack Web API on loopback:
cases, the queue worker, the notifiers, and the signed Slack endpoints."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from slack_sdk.signature import SignatureVerifier

from bot.channels.slack import bp, slack_to_plain
from bot.config import Settings, SettingsError
from bot.crypto import Sealer
from bot.handoff.cases import CaseStore
from bot.handoff.models import Case, CaseRequest, StaffMessage
from bot.handoff.notify import WebhookError, WebhookNotifier
from bot.handoff.worker import GROUP
from bot.logs import JsonFormatter
from bot.store import pseudonym
from bot.wiring import Handoff, build_handoff, run_worker
from tests.conftest import SECRET
from tests.fakes.http import serve_json
from tests.fakes.slack_api import FakeSlack

RAW_ID = "U" + "4f7e2a9c" * 4          # a LINE-style user id: only ever inside the sealed address
PID = pseudonym(SECRET, "line", RAW_ID)
SIGNING = "slack-signing-secret-for-tests"
CHANNEL = "C0STAFF01"
STAFF_A, STAFF_B = "U0STAFFAAA", "U0STAFFBBB"
MESSAGE = "夜になると不安で眠れません <!channel>"
NUMBER = "K-4F7Q"
WEBHOOK_SECRET = "webhook-secret-for-tests"


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def case_metric(handoff: Handoff, name: str, **labels: str) -> float:
    """A handoff metric of this handoff's city (every case metric carries `city`)."""
    return metric(name, {"city": handoff.cases.city, **labels})


# -- fakes and fixtures ---------------------------------------------------------------------


@dataclass
class Receiver:
    """A tiny webhook receiver on loopback: answers `statuses` in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[int, bytes, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[tuple[int, bytes, dict]]:
        with self.lock:
            return [g for g in self.got if g[0] == 200]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    def handle(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        with rec.lock:
            status = rec.statuses.pop(0) if rec.statuses else 200
            rec.got.append((status, raw, headers))
        return status, {}

    server, url = serve_json(handle)
    yield rec, f"{url}/hook"
    server.shutdown()
    server.server_close()



@dataclass
class Relays:
    """A bot.ports.StaffRelay that records what would reach the resident."""

    cases: CaseStore | None = None
    sent: list[tuple[str, str]] = field(default_factory=list)
    ended: list[tuple[Case, str | None]] = field(default_factory=list)
    timed_out: list[tuple[Case, str | None]] = field(default_factory=list)
    fail: bool = False

    def staff_reply(self, case: Case, message: StaffMessage) -> None:
        if self.fail:
            raise ConnectionError("LINE is down")
        self.sent.append((case.number, message.text))

    def closed(self, case: Case) -> None:
        assert self.cases is not None
        self.ended.append((case, self.cases.address(case.number)))

    def expired(self, case: Case) -> None:
        assert self.cases is not None
        self.timed_out.append((case, self.cases.address(case.number)))


@pytest.fixture
def relays() -> Relays:
    return Relays()


@pytest.fixture
def make_handoff(settings: Settings, redis_client: redis.Redis, fake_slack, relays: Relays):
    fake, url = fake_slack
    built: list[Handoff] = []

    def make(notifier_attempts: int = 3, **overrides: Any) -> Handoff:
        s = replace(settings, slack_bot_token=fake.token, slack_signing_secret=SIGNING,
                    slack_staff_channel=CHANNEL, slack_api_base_url=url, **overrides)
        h = build_handoff(s, redis_client, relays, consumer_name="worker-b",
                          reclaim_idle_ms=50, block_ms=10, retry_base_s=0.01,
                          notifier_attempts=notifier_attempts)
        relays.cases = h.cases
        built.append(h)
        return h

    yield make
    for h in built:
        h.stop()


@pytest.fixture
def handoff(make_handoff) -> Handoff:
    return make_handoff()


@pytest.fixture
def http(handoff: Handoff) -> FlaskClient:
    app = Flask("test-slack")
    app.register_blueprint(bp)
    app.extensions["tsunagu_handoff"] = handoff
    app.config["TESTING"] = True
    return app.test_client()


def open_case(h: Handoff, number: str = NUMBER, urgent: bool = False,
              message: str | None = MESSAGE, pid: str = PID) -> Case:
    request = CaseRequest(number=number, categories=["hikikomori", "poverty"],
                          summary=[("どなたのことですか", "家族のこと"), ("年代", "20代")],
                          ward="sakyo", urgent=urgent, message=message)
    case = h.cases.open(request, "line", pid, RAW_ID)
    assert case is not None
    return case


def drain(h: Handoff, done: Callable[[], bool], turns: int = 200) -> bool:
    """Run worker turns until `done()`; bounded, each turn blocks at most a few ms."""
    for _ in range(turns):
        h.worker.step(block_ms=5)
        if done():
            return True
    return done()


def posted(h: Handoff, fake: FakeSlack, number: str = NUMBER) -> Case:
    """Open-and-deliver: the case is in Slack and knows its message ts."""
    def ready() -> bool:
        case = h.cases.get(number)
        return bool(case and case.slack_ts)

    assert drain(h, ready)
    return h.cases.get(number)


def signed(body: str, ts: int | None = None, secret: str = SIGNING) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": SignatureVerifier(secret).generate_signature(
                timestamp=stamp, body=body) or ""}


def post_event(http: FlaskClient, event: dict, event_id: str = "Ev0001", **sign: Any):
    body = json.dumps({"type": "event_callback", "team_id": "T0001", "event_id": event_id,
                       "event": event})
    return http.post("/slack/events", data=body,
                     headers={**signed(body, **sign), "Content-Type": "application/json"})


def staff_says(case: Case, text: str, user: str = STAFF_A, ts: str = "1700000100.000001",
               **extra: Any) -> dict:
    return {"type": "message", "channel": CHANNEL, "user": user, "text": text, "ts": ts,
            "thread_ts": case.slack_ts, **extra}


def click(http: FlaskClient, action: str, number: str, user: str, **sign: Any):
    payload = {"type": "block_actions", "user": {"id": user}, "channel": {"id": CHANNEL},
               "container": {"type": "message", "channel_id": CHANNEL},
               "actions": [{"type": "button", "action_id": action, "value": number,
                            "block_id": f"case:{number}"}]}
    body = urlencode({"payload": json.dumps(payload)})
    return http.post("/slack/interactions", data=body, headers={
        **signed(body, **sign), "Content-Type": "application/x-www-form-urlencoded"})


def block(blocks: list[dict], kind: str) -> list[dict]:
    return [b for b in blocks if b["type"] == kind]


def redis_dump(client: redis.Redis, prefix: str) -> str:
    """Every value under the test's prefix as text (strings, sets, zsets, streams)."""
    out = []
    for key in client.scan_iter(match=f"{prefix}:*", count=500):
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key).decode(errors="replace"))
        elif kind == "set":
            out += [m.decode() for m in client.smembers(key)]
        elif kind == "zset":
            out += [m.decode() for m in client.zrange(key, 0, -1)]
        elif kind == "stream":
            out += [json.dumps({k.decode(): v.decode() for k, v in f.items()})
                    for _, f in client.xrange(key)]
        out.append(key.decode())
    return "\n".join(out)


# -- cases ----------------------------------------------------------------------------------


def test_open_seals_the_address_indexes_the_person_and_queues_the_case(
        handoff: Handoff, redis_client: redis.Redis) -> None:
    before = case_metric(handoff, "tsunagu_handoff_cases_opened_total", channel="line")
    case = open_case(handoff)
    cases = handoff.cases
    assert case.status == "new" and case.pid == PID
    sealed = redis_client.get(cases.case_key(NUMBER, "addr"))
    assert sealed and RAW_ID.encode() not in sealed
    assert cases.address(NUMBER) == RAW_ID
    assert cases.open_case_of(PID) == NUMBER
    assert cases.get(NUMBER).request.message == MESSAGE
    assert [f[b"k"] for _, f in redis_client.xrange(cases.queue_of(NUMBER))] == [b"opened"]
    assert case_metric(handoff, "tsunagu_handoff_cases_opened_total", channel="line") == before + 1

    # The number is taken: nothing is overwritten, nothing queued, the caller picks another.
    other = CaseRequest(number=NUMBER, categories=["dv_abuse"])
    assert cases.open(other, "web", "another-pid", "web-session-1") is None
    assert cases.address(NUMBER) == RAW_ID and cases.get(NUMBER).pid == PID
    assert cases.open_case_of("another-pid") is None
    assert redis_client.xlen(cases.queue_of(NUMBER)) == 1


def test_worker_posts_the_case_to_slack_with_blocks_and_buttons(
        handoff: Handoff, fake_slack, redis_client: redis.Redis) -> None:
    fake, _ = fake_slack
    open_case(handoff, urgent=True)
    assert handoff.worker.poll_once(block_ms=10) == 1
    (call,) = fake.posts()
    assert call.body["channel"] == CHANNEL
    assert call.headers["authorization"] == f"Bearer {fake.token}"
    blocks = call.body["blocks"]
    header = blocks[0]["text"]["text"]
    assert blocks[0]["type"] == "header" and NUMBER in header and "緊急" in header
    facts = json.dumps(blocks, ensure_ascii=False)
    assert "ひきこもり" in facts and "左京区" in facts and "家族のこと" in facts
    # The typed message is shown, but cannot ping the channel.
    assert "夜になると不安で眠れません &lt;!channel&gt;" in facts and "<!channel>" not in facts
    (actions,) = block(blocks, "actions")
    assert [(b["action_id"], b["value"]) for b in actions["elements"]] == [
        ("claim", NUMBER), ("resolve", NUMBER)]
    assert [b["text"]["text"] for b in actions["elements"]] == ["担当する", "対応完了"]
    case = handoff.cases.get(NUMBER)
    assert case.slack_channel == CHANNEL and case.slack_ts
    assert handoff.cases.case_for_thread(CHANNEL, case.slack_ts) == NUMBER
    assert handoff.worker.pending() == 0 and queued(redis_client, handoff) == 0
    assert RAW_ID not in fake.everything() and PID not in fake.everything()


def queued(client: redis.Redis, handoff: Handoff) -> int:
    """Entries left in all shards of the staff queue."""
    return sum(client.xlen(name) for name in handoff.cases.queues)


def test_two_claims_at_once_have_exactly_one_winner(handoff: Handoff) -> None:
    open_case(handoff)
    before = case_metric(handoff, "tsunagu_handoff_cases_claimed_total")
    staff = [f"U0STAFF{i:03d}" for i in range(8)]
    barrier = threading.Barrier(len(staff))
    results: dict[str, bool] = {}

    def claim(user: str) -> None:
        barrier.wait(timeout=5)
        won, _ = handoff.cases.claim(NUMBER, user)
        results[user] = won

    threads = [threading.Thread(target=claim, args=(u,)) for u in staff]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    winners = [u for u, won in results.items() if won]
    assert len(results) == len(staff) and len(winners) == 1
    case = handoff.cases.get(NUMBER)
    assert case.status == "claimed" and case.claimed_by == winners[0]
    assert case_metric(handoff, "tsunagu_handoff_cases_claimed_total") == before + 1


def test_resolve_deletes_the_sealed_address_and_the_person_index(
        handoff: Handoff, redis_client: redis.Redis) -> None:
    open_case(handoff)
    handoff.cases.claim(NUMBER, STAFF_A)
    before = case_metric(handoff, "tsunagu_handoff_cases_resolved_total")
    told: list[tuple[str, str | None]] = []

    def before_forget(c: Case) -> None:
        told.append((c.pid, handoff.cases.address(c.number)))

    case = handoff.cases.resolve(NUMBER, STAFF_A, before_forget=before_forget)
    # The resident could still be told (address present, pseudonym known) — once.
    assert told == [(PID, RAW_ID)]
    assert case.status == "resolved" and case.resolved_by == STAFF_A
    assert not redis_client.exists(handoff.cases.case_key(NUMBER, "addr"))
    assert handoff.cases.address(NUMBER) is None
    assert handoff.cases.open_case_of(PID) is None
    assert redis_client.zscore(handoff.cases.open_index, NUMBER) is None
    kept = handoff.cases.get(NUMBER)
    assert kept.status == "resolved" and kept.pid == "" and kept.request.categories
    ttl = redis_client.ttl(handoff.cases.case_key(NUMBER))
    assert 0 < ttl <= handoff.cases.keep_closed_s
    assert case_metric(handoff, "tsunagu_handoff_cases_resolved_total") == before + 1
    handoff.cases.resolve(NUMBER, STAFF_B, before_forget=lambda c: told.append(("again", None)))
    assert len(told) == 1 and handoff.cases.get(NUMBER).resolved_by == STAFF_A


def test_stale_cases_expire_and_lose_their_address(
        redis_client: redis.Redis, key_prefix: str) -> None:
    now = [1_800_000_000.0]
    cases = CaseStore(redis_client, key_prefix, Sealer(SECRET), expire_after_s=3600,
                      clock=lambda: now[0])
    cases.open(CaseRequest(number="K-OLD1"), "line", "pid-old", RAW_ID)
    now[0] += 3000
    cases.open(CaseRequest(number="K-NEW1"), "web", "pid-new", "web-address")
    now[0] += 700                                    # K-OLD1 is 3700 s old, K-NEW1 700 s
    assert cases.expire_stale() == ["K-OLD1"]
    old = cases.get("K-OLD1")
    assert old.status == "expired" and cases.address("K-OLD1") is None
    assert cases.open_case_of("pid-old") is None
    assert cases.get("K-NEW1").status == "new" and cases.address("K-NEW1") == "web-address"
    assert cases.expire_stale() == []                # idempotent
    kinds = [f[b"k"] for _, f in redis_client.xrange(cases.queue_of("K-OLD1"))]
    assert kinds.count(b"expired") == 1


def test_delete_my_data_forgets_address_and_text_but_keeps_the_anonymous_case(
        handoff: Handoff, fake_slack, redis_client: redis.Redis) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    posted(handoff, fake)
    handoff.cases.add_message(NUMBER, "resident", "父のことで相談したいです")
    case = handoff.cases.delete_for(PID)             # before the worker posts the message
    assert case is not None and case.forgotten_at is not None
    assert handoff.cases.address(NUMBER) is None and handoff.cases.open_case_of(PID) is None
    kept = handoff.cases.get(NUMBER)
    assert kept.status == "new" and kept.pid == "" and kept.request.message is None
    assert all(m.text == "" for m in kept.thread)
    assert handoff.cases.delete_for(PID) is None     # nothing left for this person
    assert drain(handoff, lambda: handoff.worker.pending() == 0
                 and queued(redis_client, handoff) == 0)
    assert "父のことで" not in fake.everything()      # the queued message died with the data
    update = fake.calls("chat.update")[-1].body
    assert "データを消す" in json.dumps(update["blocks"], ensure_ascii=False)
    (actions,) = block(update["blocks"], "actions")  # nobody to answer: only closing is left
    assert [b["action_id"] for b in actions["elements"]] == ["resolve"]


# -- the queue: at least once -----------------------------------------------------------------


def test_an_entry_read_by_a_worker_that_died_is_delivered_by_another(
        handoff: Handoff, fake_slack, redis_client: redis.Redis) -> None:
    fake, _ = fake_slack
    handoff.worker.ensure_group()
    open_case(handoff)
    # Worker A reads the case and dies before XACK.
    got = redis_client.xreadgroup(GROUP, "worker-a", {handoff.cases.queue_of(NUMBER): ">"},
                                  count=10)
    assert len(got[0][1]) == 1
    assert handoff.worker.poll_once(block_ms=5) == 0   # nothing new for worker B
    assert fake.posts() == [] and handoff.worker.pending() == 1
    time.sleep(0.06)                                    # past reclaim_idle_ms (50 ms)
    assert handoff.worker.reclaim() == 1
    (call,) = fake.posts()
    assert NUMBER in call.body["blocks"][0]["text"]["text"]
    assert handoff.worker.pending() == 0


@pytest.mark.parametrize("mode", ["http500", "not_ok"])
def test_slack_down_for_a_while_delays_cases_but_loses_none(
        handoff: Handoff, fake_slack, mode: str) -> None:
    fake, _ = fake_slack
    fake.go_down(calls=7, mode=mode)  # type: ignore[arg-type]
    numbers = ["K-AAA2", "K-BBB3", "K-CCC4"]
    for number in numbers:
        open_case(handoff, number=number, pid=f"pid-{number}")
    assert drain(handoff, lambda: len(fake.posts()) == 3 and handoff.worker.pending() == 0)
    assert len(fake.calls(ok_only=False)) - len(fake.calls()) == 7   # the outage happened
    titles = sorted(c.body["blocks"][0]["text"]["text"] for c in fake.posts())
    assert titles == [f"相談 {n}" for n in numbers]                   # each once, none lost
    assert all(handoff.cases.get(n).slack_ts for n in numbers)


def test_an_outage_costs_one_probe_per_pass_not_one_per_case(
        handoff: Handoff, fake_slack) -> None:
    fake, _ = fake_slack
    fake.go_down(calls=1000)
    for number in ("K-AAA2", "K-BBB3", "K-CCC4"):
        open_case(handoff, number=number, pid=f"pid-{number}")
    assert handoff.worker.poll_once(block_ms=5) == 3
    # One case tried with the notifier's 3 attempts; the others wait for the next pass.
    assert len(fake.calls(ok_only=False)) == 3 and handoff.worker.pending() == 3
    fake.go_down(calls=0)
    assert drain(handoff, lambda: handoff.worker.pending() == 0)
    assert len(fake.posts()) == 3


def test_unreadable_queue_entries_are_dropped_without_blocking_the_queue(
        handoff: Handoff, fake_slack, redis_client: redis.Redis) -> None:
    fake, _ = fake_slack
    queue = handoff.cases.queue
    handoff.worker.ensure_group()
    redis_client.xadd(queue, {"x": "y"})
    redis_client.xadd(queue, {"k": "opened", "n": "K-GONE"})
    redis_client.xadd(queue, {"k": "message", "n": NUMBER, "at": "garbage"})
    open_case(handoff)
    assert drain(handoff, lambda: handoff.worker.pending() == 0 and len(fake.posts()) == 1)
    assert queued(redis_client, handoff) == 0


def test_a_webhook_that_is_down_does_not_post_the_case_to_slack_twice(
        make_handoff, fake_slack, receiver) -> None:
    fake, _ = fake_slack
    rec, url = receiver
    rec.statuses = [503, 503, 503, 503]
    h = make_handoff(handoff_webhook_url=url, handoff_webhook_secret=WEBHOOK_SECRET)
    assert [n.name for n in h.notifiers] == ["slack", "webhook"]
    open_case(h)
    assert drain(h, lambda: len(rec.accepted()) == 1 and h.worker.pending() == 0)
    assert len(rec.got) == 5 and len(fake.posts()) == 1


def report_wrong_number(h: Handoff, window: str = "yorisoi_hotline") -> None:
    """Queue a wrong-number report as the conversation side does (Conversations
    ._wrong_numbers): a content problem, no case, nothing about the person."""
    h.worker.ensure_group()
    h.cases.redis.xadd(h.cases.queue, {"k": "wrong_number", "w": window,
                                       "name": "よりそいホットライン",
                                       "phone": "0120-279-338", "d": "2026-12-07"})


def wrong_number_posts(fake: FakeSlack, window: str = "yorisoi_hotline") -> list[dict]:
    """The reports about `window` in the channel (what Slack holds, answered or not)."""
    with fake.lock:
        return [m for m in fake.messages if f"窓口ID: {window}" in (m["text"] or "")]


def test_a_webhook_that_is_down_does_not_post_a_wrong_number_report_to_slack_twice(
        make_handoff, fake_slack, receiver) -> None:
    """Slack took the report, the webhook did not: the entry is retried for the webhook, and
    Slack is not told again (the delivery is marked, as a case's is)."""
    fake, _ = fake_slack
    rec, url = receiver
    rec.statuses = [503, 503, 503, 503]
    h = make_handoff(handoff_webhook_url=url, handoff_webhook_secret=WEBHOOK_SECRET)
    report_wrong_number(h)
    assert drain(h, lambda: len(rec.accepted()) == 1 and h.worker.pending() == 0)
    assert len(rec.got) == 5                    # the webhook failed a whole pass, then took it
    assert len(wrong_number_posts(fake)) == 1


def test_a_wrong_number_report_whose_slack_answer_was_lost_is_posted_once(
        make_handoff, fake_slack) -> None:
    """Slack posted the report but its answer never came: the retried entry finds the post
    (its delivery id rides in the message metadata) instead of posting it again."""
    fake, _ = fake_slack
    h = make_handoff(notifier_attempts=1)
    fake.go_down(1, "lost")
    report_wrong_number(h)
    assert h.worker.poll_once(block_ms=5) == 1 and h.worker.pending() == 1   # failed once
    assert len(wrong_number_posts(fake)) == 1                                # yet posted
    assert drain(h, lambda: h.worker.pending() == 0)
    assert len(wrong_number_posts(fake)) == 1
    assert fake.calls("conversations.history")                               # looked first


def test_the_webhook_signs_its_body(receiver) -> None:
    rec, url = receiver
    case = Case(number=NUMBER, channel="line", pid=PID, created_at=1.0, updated_at=1.0,
                request=CaseRequest(number=NUMBER, categories=["women"], message=MESSAGE))
    WebhookNotifier(url, WEBHOOK_SECRET, attempts=1).notify("opened", case, delivery="1-0")
    ((_, raw, headers),) = rec.got
    expected = hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["x-tsunagu-signature"] == f"sha256={expected}"
    body = json.loads(raw)
    assert headers["x-tsunagu-timestamp"] == str(body["sent_at"])
    assert body["event"] == "opened" and body["delivery"] == "1-0"
    assert body["case"]["number"] == NUMBER and body["case"]["request"]["message"] == MESSAGE
    assert "pid" not in body["case"] and PID not in raw.decode()
    forged = hmac.new(b"other-secret", raw, hashlib.sha256).hexdigest()
    assert headers["x-tsunagu-signature"] != f"sha256={forged}"

    rec.statuses = [400]
    with pytest.raises(WebhookError):
        WebhookNotifier(url, WEBHOOK_SECRET, attempts=1).notify("opened", case)


def test_the_worker_loop_runs_in_a_thread_and_stops(handoff: Handoff, fake_slack) -> None:
    fake, _ = fake_slack
    thread = handoff.start_thread()
    open_case(handoff)
    assert len(fake.wait_for("chat.postMessage", 1, timeout=5)) == 1
    handoff.stop()
    assert not thread.is_alive()


def test_resident_messages_and_urgency_reach_the_case_thread(handoff: Handoff, fake_slack) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    handoff.cases.add_message(NUMBER, "resident", "<@U999> 今日も眠れない")
    handoff.cases.mark_urgent(NUMBER)
    assert drain(handoff, lambda: len(fake.posts(thread=True)) == 2
                 and handoff.worker.pending() == 0)
    said, alarm = fake.posts(thread=True)
    assert said.body["thread_ts"] == case.slack_ts
    assert said.body["text"] == "相談者: &lt;@U999&gt; 今日も眠れない"
    assert alarm.body["reply_broadcast"] is True and "緊急" in alarm.body["text"]
    header = fake.calls("chat.update")[-1].body["blocks"][0]["text"]["text"]
    assert "緊急" in header


# -- Slack endpoints ------------------------------------------------------------------------


def test_url_verification_answers_the_challenge_only_when_signed(http: FlaskClient) -> None:
    body = json.dumps({"type": "url_verification", "token": "x", "challenge": "3eZbrw1aB"})
    ok = http.post("/slack/events", data=body,
                   headers={**signed(body), "Content-Type": "application/json"})
    assert ok.status_code == 200 and ok.get_data(as_text=True) == "3eZbrw1aB"
    bad = http.post("/slack/events", data=body, headers={"Content-Type": "application/json"})
    assert bad.status_code == 401


def test_forged_or_stale_requests_get_401(http: FlaskClient, handoff: Handoff, fake_slack,
                                          relays: Relays) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    event = staff_says(case, "返信です")
    assert post_event(http, event, secret="not-the-secret").status_code == 401
    assert post_event(http, event, ts=int(time.time()) - 6 * 60).status_code == 401
    body = json.dumps({"type": "event_callback", "event_id": "Ev9", "event": event},
                      ensure_ascii=False)
    tampered = signed(body.replace("返信です", "別の文"))
    assert tampered != signed(body)
    assert http.post("/slack/events", data=body, headers=tampered).status_code == 401
    assert click(http, "claim", NUMBER, STAFF_A, secret="not-the-secret").status_code == 401
    assert click(http, "resolve", NUMBER, STAFF_A,
                 ts=int(time.time()) - 6 * 60).status_code == 401
    assert relays.sent == [] and handoff.cases.get(NUMBER).status == "new"
    assert handoff.cases.address(NUMBER) == RAW_ID


def test_a_staff_reply_in_the_thread_reaches_the_resident_once(
        http: FlaskClient, handoff: Handoff, fake_slack, relays: Relays) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    replies = case_metric(handoff, "tsunagu_handoff_first_staff_reply_seconds_count")
    text = "はじめまして。&lt;無理せず&gt; <https://example.jp/soudan|相談窓口> をご覧ください"
    assert post_event(http, staff_says(case, text), event_id="Ev1001").status_code == 200
    expected = "はじめまして。<無理せず> 相談窓口 https://example.jp/soudan をご覧ください"
    # Recorded and queued at once; the worker relays it to the resident.
    assert relays.sent == [] and handoff.cases.get(NUMBER).thread[0].text == expected
    assert drain(handoff, lambda: bool(relays.sent) and handoff.worker.pending() == 0)
    assert relays.sent == [(NUMBER, expected)]
    stored = handoff.cases.get(NUMBER)
    assert stored.first_staff_reply_at is not None
    assert [(m.who, m.text) for m in stored.thread] == [("staff", expected)]
    assert stored.status == "claimed" and stored.claimed_by == STAFF_A   # answering claims it
    assert case_metric(handoff, "tsunagu_handoff_first_staff_reply_seconds_count") == replies + 1
    assert "<@U0STAFFAAA>" in json.dumps(fake.calls("chat.update")[-1].body["blocks"])

    # Slack retries the same event: ignored.
    assert post_event(http, staff_says(case, text), event_id="Ev1001").status_code == 200
    assert drain(handoff, lambda: handoff.worker.pending() == 0)
    assert len(relays.sent) == 1 and len(handoff.cases.get(NUMBER).thread) == 1
    # A second reply is relayed but is not the first reply any more.
    post_event(http, staff_says(case, "お返事お待ちしています", ts="1700000200.000001"),
               event_id="Ev1002")
    assert drain(handoff, lambda: len(relays.sent) == 2)
    assert relays.sent[-1] == (NUMBER, "お返事お待ちしています")
    assert handoff.cases.get(NUMBER).first_staff_reply_at == stored.first_staff_reply_at
    assert case_metric(handoff, "tsunagu_handoff_first_staff_reply_seconds_count") == replies + 1


def test_bot_messages_and_messages_outside_case_threads_are_ignored(
        http: FlaskClient, handoff: Handoff, fake_slack, relays: Relays) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    ignored = [
        staff_says(case, "ボットの投稿", bot_id="B0BOT"),
        staff_says(case, "ボットの投稿", subtype="bot_message"),
        staff_says(case, "編集", subtype="message_changed"),
        {**staff_says(case, "チャンネルへの投稿"), "thread_ts": None},
        {**staff_says(case, "別のスレッド"), "thread_ts": "1600000000.000001"},
        {**staff_says(case, "親メッセージ"), "ts": case.slack_ts},
        {**staff_says(case, "別のチャンネル"), "channel": "C0OTHER"},
    ]
    for i, event in enumerate(ignored):
        assert post_event(http, event, event_id=f"Ev20{i}").status_code == 200
    assert relays.sent == [] and handoff.cases.get(NUMBER).thread == []


def test_a_reply_that_cannot_be_delivered_is_reported_in_the_thread(
        http: FlaskClient, handoff: Handoff, fake_slack, relays: Relays) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    case = posted(handoff, fake)
    relays.fail = True
    post_event(http, staff_says(case, "こんにちは"), event_id="Ev3001")
    # Retried by the worker, then given up on (parked) and staff are told in the thread.
    assert drain(handoff, lambda: len(fake.posts(thread=True)) == 1
                 and handoff.worker.pending() == 0)
    notes = fake.posts(thread=True)
    assert len(notes) == 1 and "届けられませんでした" in notes[0].body["text"]
    handoff.cases.resolve(NUMBER, STAFF_A)
    relays.fail = False
    post_event(http, staff_says(case, "まだいますか", ts="1700000300.000001"),
               event_id="Ev3002")
    assert relays.sent == []
    assert "終了している" in fake.posts(thread=True)[-1].body["text"]


def test_malformed_slack_requests_get_400(http: FlaskClient) -> None:
    for body in ("not json", json.dumps(["a list"]),
                 json.dumps({"type": "event_callback", "event_id": "Ev1", "event": "x"})):
        response = http.post("/slack/events", data=body, headers=signed(body))
        assert response.status_code == 400, body
    for form in ("", "payload=not-json", urlencode({"payload": json.dumps({"type": "x"})}),
                 urlencode({"payload": json.dumps({"type": "block_actions",
                                                   "user": {"id": STAFF_A},
                                                   "actions": [{"action_id": "claim",
                                                                "value": "k 4f7q!"}]})})):
        response = http.post("/slack/interactions", data=form, headers={
            **signed(form), "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 400, form


def test_claim_and_resolve_buttons(http: FlaskClient, handoff: Handoff, fake_slack,
                                   relays: Relays) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    posted(handoff, fake)
    assert click(http, "claim", NUMBER, STAFF_A).status_code == 200
    case = handoff.cases.get(NUMBER)
    assert case.status == "claimed" and case.claimed_by == STAFF_A
    update = fake.calls("chat.update")[-1].body
    assert f"<@{STAFF_A}>" in json.dumps(update["blocks"])
    (actions,) = block(update["blocks"], "actions")
    assert [b["action_id"] for b in actions["elements"]] == ["resolve"]

    assert click(http, "claim", NUMBER, STAFF_B).status_code == 200
    assert handoff.cases.get(NUMBER).claimed_by == STAFF_A
    (note,) = fake.calls("chat.postEphemeral")
    assert note.body["user"] == STAFF_B and f"<@{STAFF_A}>" in note.body["text"]

    assert click(http, "resolve", NUMBER, STAFF_A).status_code == 200
    update = fake.calls("chat.update")[-1].body
    assert not block(update["blocks"], "actions")
    assert "対応完了" in json.dumps(update["blocks"], ensure_ascii=False)
    assert click(http, "resolve", NUMBER, STAFF_B).status_code == 200   # a late double click
    # The worker tells the resident (the address still there), then releases the address.
    assert drain(handoff, lambda: bool(relays.ended) and handoff.worker.pending() == 0)
    ((closed, address_then),) = relays.ended
    assert closed.number == NUMBER and closed.pid == PID and address_then == RAW_ID
    assert handoff.cases.address(NUMBER) is None and handoff.cases.open_case_of(PID) is None
    assert len(relays.ended) == 1
    # The queued claimed/resolved events reach Slack again harmlessly, then the queue is empty.
    assert drain(handoff, lambda: handoff.worker.pending() == 0)


def test_the_whole_loop_leaks_no_platform_id_and_logs_no_typed_text(
        make_handoff, fake_slack, receiver, relays: Relays, redis_client: redis.Redis,
        key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake, _ = fake_slack
    rec, url = receiver
    h = make_handoff(handoff_webhook_url=url, handoff_webhook_secret=WEBHOOK_SECRET)
    app = Flask("test-slack-loop")
    app.register_blueprint(bp)
    app.extensions["tsunagu_handoff"] = h
    http = app.test_client()

    open_case(h, urgent=True)
    case = posted(h, fake)
    h.cases.add_message(NUMBER, "resident", "家にいるのがつらいです")
    h.cases.mark_urgent(NUMBER)
    post_event(http, staff_says(case, "お話を聞かせてください"), event_id="Ev4001")
    click(http, "claim", NUMBER, STAFF_B)
    click(http, "resolve", NUMBER, STAFF_A)
    assert drain(h, lambda: h.worker.pending() == 0 and len(rec.accepted()) >= 5)
    assert relays.sent == [(NUMBER, "お話を聞かせてください")] and len(relays.ended) == 1

    slack_text = fake.everything()
    webhook_text = "\n".join(raw.decode() for _, raw, _ in rec.got)
    assert "家にいるのがつらいです" in slack_text          # the payloads were really captured
    assert {json.loads(raw)["event"] for _, raw, _ in rec.got} == {
        "opened", "message", "urgent", "claimed", "resolved"}
    for where in (slack_text, webhook_text):
        assert RAW_ID not in where and PID not in where
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    assert any('"case_opened"' in line for line in lines)
    for line in lines:
        assert RAW_ID not in line and PID not in line
        for typed in (MESSAGE, "家にいるのがつらいです", "お話を聞かせてください"):
            assert typed not in line
    assert RAW_ID not in redis_dump(redis_client, key_prefix)


# -- wiring ---------------------------------------------------------------------------------


def test_build_handoff_names_the_missing_setting(settings: Settings,
                                                 redis_client: redis.Redis) -> None:
    with pytest.raises(SettingsError, match=r"^SLACK_STAFF_CHANNEL:"):
        build_handoff(replace(settings, slack_bot_token="xoxb-1", slack_signing_secret="s"),
                      redis_client)
    with pytest.raises(SettingsError, match=r"^HANDOFF_WEBHOOK_SECRET:"):
        build_handoff(replace(settings, handoff_webhook_url="http://127.0.0.1:9/x"),
                      redis_client)
    bare = build_handoff(settings, redis_client)
    assert bare.notifiers == [] and bare.slack is None and bare.verifier is None


def test_run_worker_refuses_without_a_shared_redis(settings: Settings, capsys) -> None:
    assert run_worker(replace(settings, redis_url=None)) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_slack_text_becomes_plain_text() -> None:
    assert slack_to_plain("<@U123> 電話は <tel:0752221111|075-222-1111> &amp; <https://a.jp>") \
        == "電話は 075-222-1111 tel:0752221111 & https://a.jp"


# -- case numbers are never reused while a key names them (security review, finding 5) ------


def test_a_reply_in_an_old_thread_never_reaches_a_newer_case_with_the_same_number(
        handoff: Handoff, http: FlaskClient, fake_slack, relays: Relays,
        redis_client: redis.Redis) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    old = posted(handoff, fake)
    cases = handoff.cases
    thread = cases.thread_key(CHANNEL, old.slack_ts)
    # The mapping never outlives the record that reserves the number (the record is read
    # first: both count down together) ...
    record = redis_client.pttl(cases.case_key(NUMBER))
    assert 0 < redis_client.pttl(thread) <= record
    cases.mark_delivered(NUMBER, "x:slack")
    record = redis_client.pttl(cases.case_key(NUMBER))
    assert redis_client.pttl(cases.case_key(NUMBER, "sent")) <= record
    assert click(http, "resolve", NUMBER, STAFF_A).status_code == 200
    kept = redis_client.pttl(cases.case_key(NUMBER))
    assert kept <= cases.keep_closed_s * 1000 and 0 < redis_client.pttl(thread) <= kept
    # ... and even if a mapping were left behind (as before: 37 days against 30), a newer case
    # drawing the same number is not reached from the old thread.
    redis_client.delete(cases.case_key(NUMBER))            # the old record's time is up
    redis_client.set(thread, NUMBER)                       # a stale mapping
    other = pseudonym(SECRET, "web", "b" * 32)
    assert open_case(handoff, pid=other, message=None).number == NUMBER
    assert post_event(http, staff_says(old, "この前の件ですが"), event_id="EvOld1"
                      ).status_code == 200
    assert relays.sent == []
    new = posted(handoff, fake)
    assert new.slack_ts != old.slack_ts
    assert cases.case_for_thread(CHANNEL, old.slack_ts) is None
    assert cases.case_for_thread(CHANNEL, new.slack_ts) == NUMBER


# -- bounded (security review, finding 10) ---------------------------------------------------


def test_the_staff_queue_is_never_trimmed_and_its_backlog_raises_an_alarm(
        make_handoff, fake_slack, redis_client: redis.Redis, caplog) -> None:
    caplog.set_level(logging.ERROR)
    fake, _ = fake_slack
    h: Handoff = make_handoff(queue_backlog_alert=10)
    real_token, fake.token = fake.token, "xoxb-revoked"   # every call: invalid_auth
    for i in range(12):
        open_case(h, number=f"K-Q{i:03d}", pid=f"p{i}")
    drain(h, lambda: False, turns=5)
    assert queued(redis_client, h) == 12                   # nothing dropped
    assert metric("tsunagu_queue_backlog", {"queue": "handoff"}) == 12
    alarms = [r for r in caplog.records if "queue_backlog" in r.getMessage()]
    assert alarms and alarms[0].levelno == logging.ERROR
    fake.token = real_token                                 # the token is fixed: all delivered
    assert drain(h, lambda: h.worker.pending() == 0 and len(fake.posts(thread=False)) == 12)


def test_a_slack_rate_limit_is_not_slept_out_in_a_request(handoff: Handoff, http: FlaskClient,
                                                          fake_slack) -> None:
    fake, _ = fake_slack
    open_case(handoff)
    posted(handoff, fake)
    fake.go_down(1, "ratelimited")
    assert click(http, "claim", NUMBER, STAFF_A).status_code == 200
    updates = fake.calls("chat.update", ok_only=False)
    assert [c.status for c in updates] == [429]            # no retry inside the request
    assert handoff.cases.get(NUMBER).claimed_by == STAFF_A
    # The queue shows the claim in Slack afterwards.
    assert drain(handoff, lambda: any(c.ok for c in fake.calls("chat.update", ok_only=False)))
    assert drain(handoff, lambda: handoff.worker.pending() == 0)
