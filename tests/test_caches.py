"""What the engine, renderer, figures, metrics and logs remember between messages answers
exactly as computing afresh would: for every state and language, at every opening and closing
minute, in each city of one process."""

from __future__ import annotations

import io
import itertools
import json
import logging
from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from bot import figures, logs, metrics
from bot.cards import card
from bot.channels.line_render import postback_data
from bot.engine import TRIAGE, Engine, Incoming, Mover
from bot.pack import load_pack
from bot.pack.models import LANGS
from bot.session import Session
from bot.wiring import build_engine
from tests.conftest import TOKYO, WEEKDAY_MORNING

# A public holiday (Mon), a weekday, a Saturday, a Sunday, the 10th, New Year's Eve and Day.
DAYS = [date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 28), date(2026, 11, 29),
        date(2026, 12, 10), date(2026, 12, 31), date(2027, 1, 1)]


@pytest.fixture(scope="module")
def cities() -> tuple[Engine, Engine]:
    """Two cities in one process, each with its own engine (as bot.tenants builds them)."""
    return build_engine(load_pack("kyoto")), build_engine(load_pack("nagaokakyo"))


def sessions(engine: Engine, state: str) -> list[Session]:
    """Sessions at `state` differing in everything a question may depend on."""
    out = []
    for lang, page, crisis, unseen, direct, resume, concerns in itertools.product(
            LANGS, (0, 1, 5), (None, "self_harm"), (False, True), (False, True),
            (None, "whose"), ([], ["poverty"], ["poverty", "loneliness", "elderly"])):
        session = engine.new_session(lang)
        session.enter(state)
        session.page, session.crisis, session.unseen = page, crisis, unseen
        session.direct, session.resume, session.concerns = direct, resume, list(concerns)
        out.append(session)
    return out


def test_questions_and_options_equal_fresh_ones_in_every_state(cities):
    for engine in cities:
        for state in engine.flow.states:
            if engine.flow.states[state].kind == TRIAGE:
                continue  # never remembered: its question comes from the guess
            for session in sessions(engine, state):
                asked = engine.ask(session)
                assert asked == engine._ask(session), (state, session)
                assert engine.ask(session) is asked  # the second time from memory
                fresh = engine._options_of(
                    state, session.lang, session.page,
                    frozenset(session.concerns)
                    if engine.flow.states[state].exclude_answered else None,
                    bool(session.resume), session.direct, 0)
                assert engine.options(session) == list(fresh)


def test_remembered_questions_do_not_leak_across_cities_or_languages(cities):
    kyoto, nagaokakyo = cities
    for state in ("welcome", "ward"):
        for lang in LANGS:
            here, there = kyoto.new_session(lang), nagaokakyo.new_session(lang)
            here.enter(state)
            there.enter(state)
            assert kyoto.ask(here) != nagaokakyo.ask(there)
            assert kyoto.ask(here) == kyoto._ask(here)
            assert nagaokakyo.ask(there) == nagaokakyo._ask(there)
    ja, en = kyoto.new_session("ja"), kyoto.new_session("en")
    assert kyoto.ask(ja).text != kyoto.ask(en).text


def boundaries(engine: Engine) -> list[datetime]:
    """Around every minute a window of the pack opens or closes, on days of every kind."""
    marks = {"00:00", "12:00"}
    for w in engine.pack.windows.values():
        if w.hours is not None:
            marks |= {x for p in [*w.hours.weekly, *w.hours.monthly] for x in (p.start, p.end)}
    out = []
    for day, mark in itertools.product(DAYS, sorted(marks)):
        hour, minute = (int(x) for x in mark.split(":"))
        at = datetime(day.year, day.month, day.day, tzinfo=TOKYO) + timedelta(hours=hour,
                                                                              minutes=minute)
        out += [at - timedelta(microseconds=1), at, at + timedelta(seconds=59.999999),
                at + timedelta(minutes=1)]
    return out


def test_cards_equal_fresh_ones_at_every_opening_and_closing_minute(cities):
    for engine in cities:
        windows = list(engine.pack.windows.values())
        for now in boundaries(engine):
            for w, lang, live in itertools.product(windows, LANGS, (False, True)):
                assert engine._card(w, lang, now, live) == card(engine.pack, w, lang, now,
                                                                live=live), (w.id, now)


def test_cards_of_a_window_two_cities_share_are_each_citys_own(cities):
    kyoto, nagaokakyo = cities
    shared = set(kyoto.pack.windows) & set(nagaokakyo.pack.windows)
    assert shared
    for wid, lang in itertools.product(sorted(shared), LANGS):
        for engine in (kyoto, nagaokakyo, kyoto):
            w = engine.pack.windows[wid]
            assert engine._card(w, lang, WEEKDAY_MORNING, False) == card(
                engine.pack, w, lang, WEEKDAY_MORNING)


def test_a_window_not_of_the_pack_is_not_answered_from_memory(cities):
    kyoto, _ = cities
    w = next(w for w in kyoto.pack.windows.values() if w.hours is None)
    other = w.model_copy(update={"summary": w.summary.model_copy(update={"ja": "別の説明"})})
    assert kyoto._card(w, "ja", WEEKDAY_MORNING, False).summary != "別の説明"
    assert kyoto._card(other, "ja", WEEKDAY_MORNING, False).summary.startswith("別の説明")


def test_a_remembered_move_is_the_machines_for_every_state_value_and_session(cities):
    """`_move` remembers the machine's answer by what `Mover` carries: for real sessions of
    every channel and number of concerns, the machine itself agrees."""
    from bot.engine import Conversation

    engine = cities[0]
    for state, spec in engine.flow.states.items():
        answers = {c.value for c in [*spec.choices, *spec.extra]} | {"x"}
        if spec.choices_from:
            answers |= {v for v, _ in engine.items[spec.choices_from]}
        for trigger in engine.machine.events:
            values = {"answer": sorted(answers), "resume": sorted(engine.flow.states)}.get(
                trigger, [None])
            for value, channel, n in itertools.product(values, (None, "line"), range(5)):
                session = engine.new_session()
                session.enter(state)
                session.channel = channel
                session.concerns = sorted(engine.pack.categories)[:n]
                model = Conversation()
                model.state = state
                kwargs = {} if value is None else {"value": value}
                try:
                    moved = engine.machine.events[trigger].trigger(model, session=session,
                                                                   **kwargs)
                except Exception as exc:  # not a trigger of this state: the same both ways
                    with pytest.raises(type(exc)):
                        engine._move(session, trigger, **kwargs)
                    continue
                assert engine._move(session, trigger, **kwargs) == bool(moved)
                assert session.state == (model.state if moved else state)


def test_conditions_read_only_what_a_mover_carries():
    assert set(Mover.__dataclass_fields__) == {"channel", "concerns"}


def test_typed_answers_are_understood_in_every_language(cities):
    for engine in cities:
        for lang, choice in itertools.product(LANGS, ("whose.self", "whose.family")):
            session = engine.new_session(lang)
            session.enter("whose")
            label = engine.pack.msg(choice, lang)
            step = engine.step(session, Incoming("text", label), WEEKDAY_MORNING)
            assert step.session.answers["whose"] == choice.split(".")[1]


def test_postback_data_remembered_equals_fresh():
    for state, value in (("whose", "self"), (None, "wrong:x"), ("a" * 200, "b" * 200)):
        assert postback_data(state, value) == postback_data.__wrapped__(state, value)
        assert postback_data(state, value) is postback_data(state, value)
    assert json.loads(postback_data("whose", "self")) == {"s": "whose", "v": "self"}


def test_tokyo_day_across_midnight_and_the_hour_in_any_order():
    start = datetime(2026, 12, 7, 14, 58, tzinfo=UTC)  # 23:58 in Tokyo
    moments = [start + timedelta(seconds=s) for s in range(0, 300, 7)]
    for now in [*moments, *reversed(moments), start.replace(tzinfo=None),
                start.astimezone(TOKYO) + timedelta(hours=5)]:
        local = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(TOKYO)
        assert figures.tokyo_day(now) == (local.date().isoformat(), f"{local.hour:02d}")


def test_a_remembered_metric_child_counts_in_the_registry():
    labels = {"city": "cache-test", "channel": "line", "kind": "tap"}
    before = REGISTRY.get_sample_value("tsunagu_events_total", labels) or 0
    metrics.child(metrics.EVENTS, "cache-test", "line", "tap").inc()
    metrics.child(metrics.EVENTS, "cache-test", "line", "tap").inc()
    assert metrics.child(metrics.EVENTS, "cache-test", "line", "tap") is \
        metrics.EVENTS.labels(city="cache-test", channel="line", kind="tap")
    assert REGISTRY.get_sample_value("tsunagu_events_total", labels) == before + 2


def test_an_event_line_is_what_logger_log_wrote():
    logger = logs.get("cache-test")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logs.event(logger, "message", pid="abc", events=["results"], ms=1.5)
        logger.log(logging.INFO, "message", extra={"tsunagu_fields": {
            "pid": "abc", "events": ["results"], "ms": 1.5}})
        logs.event(logger, "quiet", logging.DEBUG - 1)  # below the level: nothing
    finally:
        logger.removeHandler(handler)
    ours, theirs = (json.loads(line) for line in out.getvalue().splitlines())
    ours.pop("ts")
    theirs.pop("ts")
    assert ours == theirs == {"level": "info", "logger": "tsunagu.cache-test",
                              "event": "message", "pid": "abc", "events": ["results"],
                              "ms": 1.5}


def test_rendered_answers_are_rendered_afresh_for_new_objects_and_encode_as_json_does(cities):
    """line_render.render_once: every question of every state, in every language, renders and
    encodes exactly as `render` and `json.dumps` do; the same objects come back rendered
    once; an equal but new object is rendered again; the cache stays bounded."""
    from bot.channels import line_render
    from bot.channels.line_api import encode
    from bot.channels.line_queue import line_messages

    for engine in cities:
        for state in engine.flow.states:
            if engine.flow.states[state].kind == TRIAGE:
                continue
            for lang in LANGS:
                session = engine.new_session(lang)
                session.enter(state)
                replies = [engine.ask(session)]
                pack = engine.pack
                labels = (pack.msg("web.call", lang), pack.msg("web.open_site", lang),
                          pack.msg("wrong_number.button", lang))
                got = line_messages(engine, replies, lang)
                assert list(got) == line_render.render(replies, *labels)
                assert line_messages(engine, replies, lang) is got  # from memory
                body = {"replyToken": "r\"1", "messages": got}
                assert encode(body) == json.dumps({**body, "messages": list(got)}).encode()
                copy = replies[0].model_copy()
                again = line_messages(engine, [copy], lang)
                assert again is not got and list(again) == list(got)
    assert len(line_render._RENDERED) <= line_render.RENDERED_MAX


def test_only_questions_are_remembered_never_a_persons_words(cities):
    """A text (a staff message revealed on a shared phone) or a list of cards is rendered
    afresh and never kept in the renderer's memory."""
    from bot.channels import line_render
    from bot.channels.line_queue import line_messages
    from bot.replies import Text

    engine = cities[0]
    session = engine.new_session("ja")
    session.enter(engine.first_question)
    question = engine.ask(session)
    secret = Text(text="staff: 明日の午後にお電話します")
    line_render._RENDERED.clear()
    got = line_messages(engine, [secret, question], "ja")
    pack = engine.pack
    assert got == line_render.render([secret, question], pack.msg("web.call", "ja"),
                                     pack.msg("web.open_site", "ja"),
                                     pack.msg("wrong_number.button", "ja"))
    assert not isinstance(got, line_render.Rendered)
    assert line_render._RENDERED == {}
    assert "明日の午後" not in repr(line_render._RENDERED)
    assert isinstance(line_messages(engine, [question], "ja"), line_render.Rendered)
    assert len(line_render._RENDERED) == 1
