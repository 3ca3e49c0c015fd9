"""Safe on a phone someone else may see (issue 11): staff messages reach the phone as a neutral
notice and their content comes on tap; the resident may opt in to the content directly; 「けす」
ends everything and deletes what the server holds. Real app, real Redis, fake LINE and Slack on
loopback."""

from __future__ import annotations

import json
import time

import pytest

from bot.engine import Incoming
from bot.replies import Question, Text
from bot.validate import load_checks
from tests import line_helpers as lh
from tests.test_handoff_backend import STAFF_A, click
from tests.test_handoff_loop import Poller, loop_app, staff_reply, wait  # noqa: F401 (fixture)

RAW_LINE_ID = "U" + "5afe" * 8
REVEALING = load_checks()["revealing_words"]


def revealing(text: str) -> list[str]:
    return [w for w in REVEALING if w.casefold() in text.casefold()]


def test_the_neutral_notice_reveals_nothing_in_either_language(engine):
    for lang in ("ja", "en"):
        session = engine.new_session(lang)
        (question,) = engine.notice(session)
        assert isinstance(question, Question)
        assert revealing(question.text) == [] and revealing(question.choices[0].label) == []
        assert question.choices[0].value == "cmd:reveal"


def test_the_revealing_word_list_catches_what_was_sent_before(kyoto_pack):
    pack = kyoto_pack
    # What a staff answer used to look like on the lock screen must fail the check.
    assert revealing(pack.msg("handoff.staff_prefix", "ja") + "お話を聞かせてください")
    assert revealing(pack.msg("handoff.closed", "ja"))


# -- LINE ---------------------------------------------------------------------------------------

@pytest.fixture
def line_case(loop_app):  # noqa: F811
    """A LINE resident with an open case (default delivery), its number and a sender."""
    app, slack, line = loop_app
    client = app.test_client()

    def send(*events):
        body = lh.body(*events)
        resp = client.post("/callback", data=body.encode(),
                           headers={"X-Line-Signature": lh.sign(body)},
                           content_type="application/json")
        assert resp.status_code == 200

    send(lh.event("follow", user=RAW_LINE_ID))
    assert line.wait_for(1)
    steps = [("welcome", "start"), ("whose", "self"), ("age", "18_39"),
             ("concern", "dv_abuse"), ("dv_danger", "no"), ("more", "none"), ("ward", "skip"),
             ("contact", "chat"), ("results", "cmd:human"), ("handoff_consent", "agree"),
             ("handoff_message", "send")]
    for n, (state, value) in enumerate(steps, start=2):
        send(lh.tap(state, value, user=RAW_LINE_ID))
        assert len(line.wait_for(n)) == n, (state, value)
    receipt = line.delivered()[-1].body["messages"][0]["text"]
    number = receipt.split("受付番号は ")[1][:6]
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    return app, slack, line, send, number


def pushes(line, since: int = 0, count: int = 1) -> list:
    """The pushes after `since`, once at least `count` have arrived (relays are queued)."""
    def got():
        return [r for r in line.delivered()[since:] if r.path.endswith("/push")]
    assert wait(lambda: len(got()) >= count), "no push arrived"
    return got()


def _all_text(messages: list[dict]) -> str:
    """Everything a notification could show: texts, altTexts, button labels."""
    return json.dumps(messages, ensure_ascii=False)


def test_a_staff_answer_reaches_line_as_a_neutral_push_and_is_revealed_on_tap(line_case):
    app, slack, line, send, number = line_case
    secret = "夫から離れる方法を一緒に考えましょう"
    before = len(line.delivered())
    assert staff_reply(app, slack, number, secret, 1).status_code == 200
    pushed = pushes(line, before)
    assert len(pushed) == 1 and pushed[0].body["to"] == RAW_LINE_ID
    messages = pushed[0].body["messages"]
    shown = _all_text(messages)
    assert secret not in shown
    assert revealing(shown) == [], shown
    quick = messages[-1]["quickReply"]["items"]
    data = json.loads(quick[0]["action"]["data"])
    assert data["v"] == "cmd:reveal" and revealing(quick[0]["action"]["displayText"]) == []
    # The resident opens the chat and taps 「ひらく」: the content comes by reply.
    n = len(line.delivered())
    send(lh.tap(data["s"], "cmd:reveal", user=RAW_LINE_ID))
    got = line.wait_for(n + 1)
    assert got[-1].path.endswith("/reply")
    assert got[-1].body["messages"][0]["text"].startswith("相談員より: " + secret)
    # Tapping again shows nothing twice.
    send(lh.tap(data["s"], "cmd:reveal", user=RAW_LINE_ID))
    again = line.wait_for(n + 2)[-1].body["messages"][0]["text"]
    assert secret not in again


def test_the_staff_text_waits_in_the_case_not_in_a_plain_key(line_case, redis_client,
                                                              key_prefix):
    app, slack, line, _, number = line_case
    secret = "シェルターの空きがあります"
    before = len(line.delivered())
    staff_reply(app, slack, number, secret, 1)
    pushes(line, before)
    for key in redis_client.scan_iter(match=f"{key_prefix}:*"):
        if b"{case:" in key:
            continue  # the case record: the thread lives there (sealed at rest by `sec`)
        kind = redis_client.type(key)
        if kind == b"string":
            assert secret.encode() not in (redis_client.get(key) or b""), key
        elif kind == b"list":
            assert all(secret.encode() not in v for v in redis_client.lrange(key, 0, -1)), key


def test_opting_in_gets_staff_messages_directly_and_opting_out_goes_back(line_case):
    app, slack, line, send, number = line_case
    n = len(line.delivered())
    send(lh.tap("handoff_open", "cmd:direct_on", user=RAW_LINE_ID))
    assert line.wait_for(n + 1)
    staff_reply(app, slack, number, "明日お電話しますか？", 1)
    pushed = pushes(line, n + 1)
    assert pushed[-1].body["messages"][0]["text"] == "相談員より: 明日お電話しますか？"
    # The same question now offers the way back.
    last_quick = [json.loads(i["action"]["data"])["v"]
                  for i in pushed[-1].body["messages"][-1]["quickReply"]["items"]]
    assert "cmd:direct_off" in last_quick and "cmd:direct_on" not in last_quick
    n = len(line.delivered())
    send(lh.text("通知をひかえめにする", user=RAW_LINE_ID))
    assert line.wait_for(n + 1)
    staff_reply(app, slack, number, "ではまた明日", 2)
    pushed = pushes(line, n + 1)
    assert "ではまた明日" not in _all_text(pushed[-1].body["messages"])


def test_the_end_of_the_case_is_neutral_too_and_shown_on_tap(line_case):
    app, slack, line, send, number = line_case
    before = len(line.delivered())
    staff_reply(app, slack, number, "いつでも連絡してください", 1)
    pushes(line, before)
    click(app.test_client(), "resolve", number, STAFF_A)
    handoff = app.extensions["tsunagu_handoff"]
    pushed = pushes(line, before, count=2)
    assert wait(lambda: handoff.cases.address(number) is None)
    assert len(pushed) == 2
    assert all(revealing(_all_text(p.body["messages"])) == [] for p in pushed)
    n = len(line.delivered())
    send(lh.tap("welcome", "cmd:reveal", user=RAW_LINE_ID))
    text = line.wait_for(n + 1)[-1].body["messages"][0]["text"]
    assert "いつでも連絡してください" in text and "終了" in text


# -- web ----------------------------------------------------------------------------------------

def _web_case(app):
    web = app.test_client()
    web.post("/api/chat", json={"type": "start"})
    for state, value in [("welcome", "start"), ("whose", "self"), ("age", "skip"),
                         ("concern", "loneliness"), ("more", "none"), ("ward", "skip"),
                         ("contact", "chat"), ("results", "cmd:human"),
                         ("handoff_consent", "agree"), ("handoff_message", "send")]:
        resp = web.post("/api/chat", json={"type": "tap", "value": value, "state": state})
    receipt = " ".join(r.get("text", "") for r in resp.json["replies"])
    number = next(w for w in receipt.replace("。", " ").split() if w.startswith("K-"))
    handoff = app.extensions["tsunagu_handoff"]
    assert wait(lambda: handoff.cases.get(number).slack_ts is not None)
    return web, number


def test_web_gets_the_notice_then_the_content_on_tap(loop_app):  # noqa: F811
    app, slack, _ = loop_app
    web, number = _web_case(app)
    staff_reply(app, slack, number, "お話を聞かせてください", 1)
    polled = Poller(web).next()
    assert "お話を聞かせてください" not in json.dumps(polled, ensure_ascii=False)
    assert revealing(json.dumps(polled, ensure_ascii=False)) == []
    tap = polled[-1]["choices"][0]
    resp = web.post("/api/chat", json={"type": "tap", "value": tap["value"],
                                        "state": polled[-1]["state"]})
    assert resp.json["replies"][0]["text"] == "相談員より: お話を聞かせてください"
    assert resp.json["replies"][-1]["choices"]  # never a dead end


# -- quick exit ---------------------------------------------------------------------------------

def test_quick_exit_works_in_any_state_and_says_how_to_clear_the_phone(engine):
    step = engine.step(None, Incoming("event", "first_contact"), _now())
    for value in ("start", "self"):
        q = next(r for r in step.replies if isinstance(r, Question))
        step = engine.step(step.session, Incoming("tap", value, q.state), _now())
    out = engine.step(step.session, Incoming("text", "けす"), _now())
    assert out.session is None and out.quick_exit
    assert out.forget  # the caller deletes the session and the case address
    said = " ".join(r.text for r in out.replies if isinstance(r, Text))
    assert "トーク履歴を削除" in said and "ブラウザの履歴" in said
    assert isinstance(out.replies[-1], Question) and out.replies[-1].choices


def test_every_result_screen_offers_the_quick_exit(kyoto_engine):
    from tests.conftest import Walker

    walker = Walker(kyoto_engine)
    walker.start()
    for value in ("start", "self", "skip", "loneliness", "none", "skip", "chat"):
        walker.tap(value)
    assert walker.question.state == "results"
    assert "cmd:quick_exit" in [c.value for c in walker.question.choices]


def test_quick_exit_deletes_the_session_and_the_case_address(loop_app, redis_client,  # noqa: F811
                                                             key_prefix):
    app, _, _ = loop_app
    web, number = _web_case(app)
    handoff = app.extensions["tsunagu_handoff"]
    services = app.extensions["tsunagu"]
    pid = [k for k in redis_client.scan_iter(match=f"{key_prefix}:{{*}}:session")]
    assert len(pid) == 1 and handoff.cases.address(number) is not None
    resp = web.post("/api/chat", json={"type": "text", "text": "けす"})
    assert resp.status_code == 200 and resp.json["exit"] is True
    assert pack_text(services, "quick_exit.done") in [r.get("text") for r in resp.json["replies"]]
    assert redis_client.exists(pid[0]) == 0                    # the session is gone
    assert handoff.cases.address(number) is None               # so is the case address
    assert handoff.cases.get(number).pid == ""


def pack_text(services, key: str) -> str:
    return services.pack.msg(key, "ja")


def _now():
    from tests.conftest import WEEKDAY_MORNING

    return WEEKDAY_MORNING


def test_an_expired_case_is_a_neutral_notice_too(line_case, kyoto_pack):
    app, _, line, send, number = line_case
    handoff = app.extensions["tsunagu_handoff"]
    before = len(line.delivered())
    assert handoff.cases.expire_stale(now=time.time() + 30 * 24 * 3600,
                                      before_forget=handoff.relay.expired) == [number]
    pushed = pushes(line, before)
    assert revealing(_all_text(pushed[-1].body["messages"])) == []
    n = len(line.delivered())
    send(lh.tap("welcome", "cmd:reveal", user=RAW_LINE_ID))
    text = line.wait_for(n + 1)[-1].body["messages"][0]["text"]
    assert kyoto_pack.msg("handoff.expired", "ja") in text


def test_quick_exit_over_line_deletes_session_waiting_messages_and_case_address(
        line_case, redis_client, key_prefix, kyoto_pack):
    app, slack, line, send, number = line_case
    before = len(line.delivered())
    staff_reply(app, slack, number, "折り返しお電話します", 1)   # waits, sealed, for 「ひらく」
    pushes(line, before)
    mine = [k for k in redis_client.scan_iter(match=f"{key_prefix}:*")
            if k.endswith((b":session", b":unseen"))]
    assert len(mine) == 2
    handoff = app.extensions["tsunagu_handoff"]
    assert handoff.cases.address(number) is not None
    n = len(line.delivered())
    send(lh.text("けす", user=RAW_LINE_ID))
    said = line.wait_for(n + 1)[-1].body["messages"][0]["text"]
    assert kyoto_pack.msg("quick_exit.done", "ja").splitlines()[0] in said
    assert wait(lambda: all(redis_client.exists(k) == 0 for k in mine)), [
        k for k in mine if redis_client.exists(k)]
    assert handoff.cases.address(number) is None
    assert all(m.text == "" for m in handoff.cases.get(number).thread)


# -- the Cases port -----------------------------------------------------------------------------

class PortOnlyCases:
    """Only what bot.ports.Cases promises phonesafe (no Redis client, no sealer): phonesafe
    must work with any case store that keeps the port."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: dict[str, list[tuple[str, str, str]]] = {}

    def keep_unseen(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        kept = self.waiting.setdefault(pid, [])
        kept += [(event_id, k, t) for k, t in items if (event_id, k, t) not in kept]

    def take_unseen(self, pid: str) -> list[tuple[str, str]]:
        return [(k, t) for _, k, t in self.waiting.pop(pid, [])]


def test_phonesafe_keeps_and_reveals_through_the_cases_port_only(kyoto_engine):
    from bot import phonesafe
    from bot.engine import Step

    engine, cases = kyoto_engine, PortOnlyCases()
    session = engine.new_session("ja")
    notice = Step(session=session, replies=[], unseen=[("staff", "明日お電話します")])
    phonesafe.effects(cases, engine, "pid-1", "ev-1", notice)
    phonesafe.effects(cases, engine, "pid-1", "ev-1", notice)  # a retried delivery
    assert cases.waiting["pid-1"] == [("ev-1", "staff", "明日お電話します")]
    session.unseen = True
    opened = Step(session=session, replies=[], reveal=True)
    phonesafe.effects(cases, engine, "pid-1", "ev-2", opened)
    texts = [r.text for r in opened.replies if isinstance(r, Text)]
    assert texts == [kyoto_engine.t("handoff.staff_prefix", session) + "明日お電話します"]
    assert session.unseen is False and "phonesafe:revealed" in opened.events
    assert cases.waiting == {}


def test_the_case_store_keeps_unseen_items_sealed_under_the_persons_session_key(
        redis_client, key_prefix, services):
    """CaseStore's side of the port: sealed at rest, once per event, in order, taken once,
    under the key the session store deletes with the person (データを消す, 「けす」)."""
    from bot.crypto import Sealer
    from bot.handoff.cases import CaseStore
    from tests.conftest import SECRET

    cases = CaseStore(redis_client, key_prefix, Sealer(SECRET))
    cases.keep_unseen("pid-2", "ev-1", [("staff", "シェルターの空きがあります")])
    cases.keep_unseen("pid-2", "ev-1", [("staff", "シェルターの空きがあります")])
    cases.keep_unseen("pid-2", "ev-2", [("closed", "")])
    key = services.store.key("pid-2", "unseen")
    assert redis_client.llen(key) == 3
    assert all("シェルター".encode() not in v for v in redis_client.lrange(key, 0, -1))
    assert cases.take_unseen("pid-2") == [("staff", "シェルターの空きがあります"), ("closed", "")]
    assert cases.take_unseen("pid-2") == [] and not redis_client.exists(key)
