"""Safety rules at the engine and service level: crisis first in every state, never a dead
end (property-based), flood protection, degraded mode with Redis down, anonymity in logs."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import Settings
from bot.engine import Incoming
from bot.replies import Cards, Question, Text, offers_a_way_on
from tests.conftest import SECRET, WEEKDAY_MORNING

CRISIS_TEXTS = ["死にたい", "ｼﾆﾀｲ", "消えたい…", "殴られている、助けて", "I want to kill myself"]


def _is_crisis_first(replies) -> bool:
    first = replies[0]
    cards = next((r for r in replies if isinstance(r, Cards)), None)
    return (isinstance(first, Text) and first.urgent and cards is not None and cards.urgent
            and any(c.tel for c in cards.cards))


@pytest.mark.parametrize("text", CRISIS_TEXTS)
def test_crisis_reply_comes_first_in_every_state(engine, text):
    for name in engine.flow.states:
        session = engine.new_session()
        session.enter(name)
        step = engine.step(session, Incoming("text", text), WEEKDAY_MORNING)
        assert _is_crisis_first(step.replies), (name, text)
        # ... and the person can go on where they were, with a person on offer.
        question = [r for r in step.replies if isinstance(r, Question)][-1]
        # Written where the person composes a message for staff, it becomes that (urgent)
        # message and the case opens; everywhere else the person stays where they were.
        assert question.state == ("handoff_open" if name == "handoff_message" else name)
        assert "cmd:human" in [c.value for c in question.choices] or len(question.choices) == 13


def test_crisis_from_a_stranger_before_any_question(engine):
    step = engine.step(None, Incoming("text", "死にたい"), WEEKDAY_MORNING)
    assert _is_crisis_first(step.replies)
    assert "crisis:self_harm" in step.events


def test_crisis_lines_name_the_right_numbers(engine, pack):
    step = engine.step(None, Incoming("text", "死にたい"), WEEKDAY_MORNING)
    phones = [c.phone for r in step.replies if isinstance(r, Cards) for c in r.cards]
    assert {"0120-279-338", "075-864-4343", "110", "119"} <= set(phones)
    # Listeners open now first, the emergency numbers still there; a line whose hours depend
    # on where it connects (0570-064-556) is not among the crisis lines.
    assert phones.index("0120-279-338") < phones.index("110") < phones.index("119")
    assert "0570-064-556" not in phones
    step = engine.step(None, Incoming("text", "夫に殴られている"), WEEKDAY_MORNING)
    phones = [c.phone for r in step.replies if isinstance(r, Cards) for c in r.cards]
    assert phones[0] == "110" and "0120-279-889" in phones


@pytest.mark.parametrize("text", ["お父さんに毎晩なぐられる。中2です", "ママがごはんくれない",
                                  "おかんにどつかれた", "子どもを叩いてしまいそう"])
def test_child_harm_brings_the_childrens_lines_first(engine, text):
    """The child_harm kind, from a child's view as from a parent's: the crisis reply first, with
    the child-abuse line (189) and 110, in every city's pack."""
    step = engine.step(None, Incoming("text", text), WEEKDAY_MORNING)
    assert _is_crisis_first(step.replies), text
    assert "crisis:child_harm" in step.events, (text, step.events)
    phones = [c.phone for r in step.replies if isinstance(r, Cards) for c in r.cards]
    assert {"189", "110"} <= set(phones), (text, phones)


def test_hyperbole_is_not_a_crisis(engine):
    for text in ("死ぬほど笑った", "死ぬほど忙しい"):
        step = engine.step(None, Incoming("text", text), WEEKDAY_MORNING)
        assert not any(getattr(r, "urgent", False) for r in step.replies), text


def test_flood_gets_one_gentle_note_and_crisis_still_answered(engine, pack):
    session = engine.new_session()
    notes = 0
    for _ in range(30):
        step = engine.step(session, Incoming("text", "あ"), WEEKDAY_MORNING)
        session = step.session
        notes += sum(isinstance(r, Text) and r.text == pack.msg("flood.note", "ja")
                     for r in step.replies)
    assert notes == 1
    assert step.replies == [] and "flooded" in step.events
    step = engine.step(session, Incoming("text", "死にたい"), WEEKDAY_MORNING)
    assert _is_crisis_first(step.replies)
    # A new minute: answered normally again.
    later = engine.step(session, Incoming("text", "1"), WEEKDAY_MORNING + timedelta(minutes=1))
    assert later.session.state == "whose"


TAPS = st.sampled_from(["start", "self", "family", "u18", "40_64", "skip", "hikikomori",
                        "dv_abuse", "poverty", "children_youth", "suicide", "yes", "no",
                        "long", "open", "school", "none", "kita", "daigo", "page:1",
                        "page:0", "outside", "phone", "info", "cmd:restart", "cmd:directory",
                        "cmd:resume", "cmd:lang_switch", "cmd:human", "cmd:privacy",
                        "cmd:help", "cmd:stop", "cmd:forget", "bogus", ""])
TEXTS = st.one_of(
    st.sampled_from(["最初から", "やめる", "ヘルプ", "窓口の一覧", "English", "日本語",
                     "データを消す", "プライバシー", "人と話したい", "1", "2", "13", "99",
                     "自分", "お金がない", "死にたい", "死ぬほど笑った", "ｈｅｌｐ", "restart"]),
    st.text(max_size=40),
)
STEP = st.one_of(
    st.tuples(st.just("tap"), TAPS, st.booleans()),
    st.tuples(st.just("text"), TEXTS, st.just(False)),
    st.tuples(st.just("event"), st.sampled_from(["sticker", "media", "first_contact"]),
              st.just(False)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=40))
def test_random_walks_never_dead_end(engine, walk):
    session = None
    now = WEEKDAY_MORNING
    for kind, value, use_state in walk:
        now += timedelta(seconds=5)
        state = session.state if (use_state and session) else None
        incoming = Incoming(kind, value if kind != "text" or value.strip() else "?", state)
        step = engine.step(session, incoming, now)
        assert offers_a_way_on(step.replies), (kind, value, step.replies)
        assert isinstance([r for r in step.replies if isinstance(r, Question)][-1], Question)
        session = step.session


# -- degraded mode: Redis unreachable --------------------------------------------------------

@pytest.fixture
def dead_redis_app(key_prefix):
    import redis

    from bot.wiring import build
    from server import create_app

    settings = Settings(redis_url="redis://127.0.0.1:1/0", bot_secret_key=SECRET,
                        key_prefix=key_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.2,
                                  socket_timeout=0.2)
    return create_app(settings, services=build(settings, client=client))


def test_web_chat_answers_crisis_with_redis_down(dead_redis_app):
    client = dead_redis_app.test_client()
    resp = client.post("/api/chat", json={"type": "text", "text": "死にたい"})
    assert resp.status_code == 200
    replies = resp.json["replies"]
    assert replies[0]["type"] == "text" and replies[0]["urgent"]
    phones = {c["phone"] for r in replies if r["type"] == "cards" for c in r["cards"]}
    assert "0120-279-338" in phones
    assert replies[-1]["type"] == "question" and replies[-1]["choices"]


def test_directory_works_statelessly_with_redis_down(dead_redis_app):
    client = dead_redis_app.test_client()
    resp = client.post("/api/chat", json={"type": "start"})
    assert resp.status_code == 200
    q = resp.json["replies"][-1]
    assert q["state"] == "directory"
    resp = client.post("/api/chat", json={"type": "tap", "value": "hikikomori",
                                          "state": "directory"})
    cards = [c for r in resp.json["replies"] if r["type"] == "cards" for c in r["cards"]]
    assert cards
    assert dead_redis_app.test_client().get("/readyz").status_code == 503


def test_outage_is_logged_at_most_once_a_minute(dead_redis_app, caplog):
    caplog.set_level(logging.WARNING, logger="tsunagu")
    client = dead_redis_app.test_client()
    for _ in range(5):
        client.post("/api/chat", json={"type": "text", "text": "こんにちは"})
    outages = [r for r in caplog.records if r.getMessage() == "redis_unavailable"]
    assert len(outages) == 1


# -- anonymity --------------------------------------------------------------------------------

def test_logs_of_a_full_conversation_hold_no_typed_text(client, caplog):
    caplog.set_level(logging.DEBUG)
    typed = ["はじめたいです", "自分のことです", "40代", "ひきこもりで", "何年も", "話せる",
             "ほかにはない", "答えたくない", "電話がいい", "死にたい"]
    client.post("/api/chat", json={"type": "start"})
    for text in typed:
        assert client.post("/api/chat", json={"type": "text", "text": text}).status_code == 200
    cookie = client.get_cookie("tsunagu_visitor").value
    logged = "\n".join(r.getMessage() + " " + repr(r.__dict__) for r in caplog.records)
    assert "message" in logged
    assert cookie not in logged
    for text in typed:
        assert text not in logged, text
