"""The engine, state by state: questions, free text, commands, languages, dead ends."""

from __future__ import annotations

import pytest

from bot.engine import Incoming
from bot.replies import Cards, Question, Text, offers_a_way_on
from tests.conftest import WEEKDAY_MORNING, Walker


def test_first_contact_welcomes_anonymously(walker: Walker, pack):
    walker.start()
    q = walker.question
    assert q.state == "welcome"
    assert "110" in q.text and "119" in q.text
    assert [c.value for c in q.choices] == ["start", "cmd:directory", "cmd:lang_switch"]
    assert [c.label for c in q.choices] == ["はじめる", "窓口の一覧", "English"]


def test_first_text_from_a_stranger_gets_the_welcome(walker: Walker):
    walker.text("こんにちは")
    assert walker.question.state == "welcome"
    assert walker.session is not None


def test_every_state_asks_with_choices(engine, walker: Walker):
    """Each state of the flow, entered, asks its prompt with at most 13 choices."""
    for name in engine.flow.states:
        session = engine.new_session()
        session.enter(name)
        q = engine.ask(session)
        assert q.state == name
        assert 1 <= len(q.choices) <= 13, name
        assert len({c.value for c in q.choices}) == len(q.choices), name


def test_every_choice_of_every_state_is_understood(engine):
    """Tapping any offered choice never yields 'not understood' and always offers a way on."""
    for name in engine.flow.states:
        base = engine.new_session()
        base.enter(name)
        base.concerns = ["poverty"] if name in ("more",) else []
        for page in range(3):
            session = base.model_copy(deep=True)
            session.page = page
            for choice in engine.ask(session).choices:
                step = engine.step(session, Incoming("tap", choice.value, name),
                                   WEEKDAY_MORNING)
                texts = [r.text for r in step.replies if isinstance(r, Text)]
                assert engine.pack.msg("common.not_understood", "ja") not in texts, (
                    name, choice)
                assert offers_a_way_on(step.replies), (name, choice)


def test_questionnaire_to_results(walker: Walker):
    walker.start()
    walker.tap("start")
    assert walker.question.state == "whose"
    walker.tap("family")
    walker.tap("40_64")
    walker.tap("hikikomori")
    assert walker.question.state == "hiki_duration"
    walker.tap("long")
    walker.tap("not_open")
    assert walker.question.state == "more"
    walker.tap("none")
    walker.tap_ward("sakyo")
    walker.tap("phone")
    assert walker.question.state == "results"
    cards = walker.cards()
    assert cards, "results show windows"
    assert any(c.tel and c.tel.startswith("tel:") for c in cards)
    assert walker.session.asked <= 10
    assert walker.session.answers["whose"] == "family"
    assert walker.session.flags == ["hiki_long", "not_open"]
    assert [c.value for c in walker.question.choices] == [
        "yes", "no", "unsure", "cmd:human", "cmd:restart", "cmd:directory", "cmd:quick_exit"]


def test_free_text_matches_a_choice_when_clear(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.text("自分です")
    assert walker.question.state == "age"
    walker.text("答えたくない")
    assert walker.question.state == "concern"
    walker.text("お金がない")
    assert walker.session.concerns == ["poverty"]
    assert walker.question.state == "money_housing"


def test_unclear_text_asks_again_kindly(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.text("うーん")
    assert walker.question.state == "whose"
    assert any(isinstance(r, Text) and r.text == pack.msg("common.not_understood", "ja")
               for r in walker.replies)
    assert len(walker.question.choices) == 4


def test_ambiguous_text_is_not_guessed(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.tap("skip")
    walker.text("家賃")  # poverty and homeless both claim it: offered, not guessed
    assert walker.session.concerns == []
    assert {"poverty", "homeless"} <= {c.value for c in walker.question.choices}
    assert "other" in {c.value for c in walker.question.choices}


def test_typed_number_picks_the_choice(walker: Walker):
    walker.start()
    walker.text("1")
    assert walker.question.state == "whose"
    walker.text("２")  # full-width digit
    assert walker.session.answers["whose"] == "family"


def test_stale_tap_is_not_trusted(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.send(Incoming("tap", "family", "whose"))
    assert walker.session.answers["whose"] == "self"
    assert walker.question.state == "age"
    assert any(isinstance(r, Text) and r.text == pack.msg("common.stale", "ja")
               for r in walker.replies)


def test_forged_tap_value_is_unknown_input(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.send(Incoming("tap", "<script>", "whose"))
    assert walker.question.state == "whose"
    walker.send(Incoming("tap", "cmd:rm_rf", None))
    assert walker.question.state == "whose"


def test_more_stops_after_three_extra_worries(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.tap("18_39")
    walker.tap("loneliness")
    for cat in ("disability", "foreign", "elderly"):
        assert walker.question.state == "more"
        assert "loneliness" not in [c.value for c in walker.question.choices]
        walker.tap(cat)
    assert walker.question.state == ("ward" if walker.engine.pack.wards.wards else "contact")
    assert walker.session.concerns == ["loneliness", "disability", "foreign", "elderly"]


def test_ward_question_pages(kyoto_engine, kyoto_pack):
    walker, pack = Walker(kyoto_engine), kyoto_pack
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.tap("skip")
    walker.tap("loneliness")
    walker.tap("none")
    q = walker.question
    assert q.state == "ward" and len(q.choices) <= 13
    first_page = {c.value for c in q.choices}
    walker.tap("page:1")
    second_page = {c.value for c in walker.question.choices}
    ward_ids = {w.id for w in pack.wards.wards}
    assert ward_ids <= (first_page | second_page)
    assert {"outside", "skip"} <= first_page & second_page
    last = pack.wards.wards[-1].id
    walker.tap(last)
    assert walker.session.answers["ward"] == last
    assert walker.question.state == "contact"


def test_a_city_without_wards_never_asks_the_ward_question(walker: Walker, engine):
    """The ward question lists the pack's wards; with none it is skipped and not counted."""
    walker.start()
    for value in ("start", "self", "skip", "loneliness"):
        walker.tap(value)
    asked = walker.session.asked
    walker.tap("none")
    has_wards = bool(engine.pack.wards.wards)
    assert walker.question.state == ("ward" if has_wards else "contact")
    assert walker.session.asked == asked + 1
    if not has_wards:
        assert "ward" not in walker.session.answers
        walker.tap("phone")
        assert walker.question.state == "results"


def test_global_commands_work_in_any_state(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.text("ヘルプ")
    assert walker.question.state == "age"
    assert any(isinstance(r, Text) and r.text == pack.msg("help.body", "ja")
               for r in walker.replies)
    walker.text("プライバシー")
    assert any(isinstance(r, Text) and "24" in r.text for r in walker.replies)
    walker.text("最初から")
    assert walker.question.state == "welcome"
    assert walker.session.answers == {}


def test_stop_offers_a_way_back(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.text("やめる")
    assert offers_a_way_on(walker.replies)
    assert {c.value for c in walker.question.choices} == {"cmd:restart", "cmd:directory"}


def test_forget_deletes_the_session(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    step = walker.text("データを消す")
    assert step.session is None
    assert any(isinstance(r, Text) and r.text == pack.msg("forget.done", "ja")
               for r in step.replies)
    assert offers_a_way_on(step.replies)


def test_directory_browses_and_resumes(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.text("窓口の一覧")
    assert walker.question.state == "directory"
    walker.tap("hikikomori")
    assert walker.cards(), "directory shows windows of the category"
    assert walker.question.state == "directory"
    walker.tap("cmd:resume")
    assert walker.question.state == "age"
    assert walker.session.answers["whose"] == "self"


def test_english_switch_keeps_the_place(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.text("English")
    assert walker.session.lang == "en"
    assert walker.question.state == "age"
    assert walker.question.text == pack.msg("q.age", "en")
    walker.text("日本語")
    assert walker.question.text == pack.msg("q.age", "ja")


def test_english_run_through(walker: Walker, pack):
    walker.start()
    walker.tap("cmd:lang_switch")
    assert walker.question.text == pack.msg("welcome.body", "en")
    walker.tap("start")
    walker.text("myself")
    walker.tap("18_39")
    walker.text("money")
    assert walker.session.concerns == ["poverty"]
    walker.tap("yes")
    walker.tap("none")
    walker.tap_ward("outside")
    walker.tap("mail")
    assert walker.question.state == "results"
    assert walker.question.text == pack.msg("feedback.ask", "en")
    for card in walker.cards():
        assert card.name == pack.windows[card.id].name.en
        if card.status:
            assert card.status in {pack.msg(k, "en") for k in
                                   ("hours.status_open", "hours.status_closed",
                                    "hours.status_always")}


def test_sticker_repeats_the_question(walker: Walker, pack):
    walker.start()
    walker.tap("start")
    walker.send(Incoming("event", "sticker"))
    assert walker.question.state == "whose"
    assert walker.replies[0].text == pack.msg("event.sticker", "ja")


def test_suicide_category_tap_brings_crisis_lines_first(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.tap("18_39")
    walker.tap("suicide")
    first = walker.replies[0]
    assert isinstance(first, Text) and first.urgent
    crisis_cards = next(r for r in walker.replies if isinstance(r, Cards))
    assert crisis_cards.urgent and crisis_cards.cards
    assert walker.question.state == "more"
    assert "cmd:human" in [c.value for c in walker.question.choices]


def test_step_is_pure(engine, walker: Walker):
    walker.start()
    before = walker.session.model_copy(deep=True)
    engine.step(walker.session, Incoming("tap", "start", "welcome"), WEEKDAY_MORNING)
    assert walker.session == before


def test_a_message_never_builds_a_machine(engine, monkeypatch):
    """Machines are compiled at start-up; a step only attaches a model and detaches it."""
    import transitions

    def forbidden(*args, **kwargs):
        raise AssertionError("a Machine was built while handling a message")

    monkeypatch.setattr(transitions.Machine, "__init__", forbidden)
    session = engine.new_session()
    for _ in range(20):
        step = engine.step(session, Incoming("tap", "start", "welcome"), WEEKDAY_MORNING)
    assert step.session.state == "whose"
    assert engine.machine.models == []


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_no_reply_is_a_dead_end(engine, lang):
    session = engine.new_session(lang)
    for text in ("", "???", "1", "99", "最初から", "データを消す"):
        step = engine.step(session, Incoming("text", text or " "), WEEKDAY_MORNING)
        assert offers_a_way_on(step.replies)
        assert any(isinstance(r, Question) for r in step.replies)


# --- the page opened again, and "in this chat" (issue 10) ---


def test_open_again_shows_the_current_question_without_moving(walker: Walker, pack):
    walker.start()
    for value in ("start", "family", "18_39"):
        walker.tap(value)
    before = walker.session.model_copy()
    asked = walker.question
    step = walker.send(Incoming(kind="event", value="open"))
    assert walker.question == asked
    assert step.session.state == before.state and step.session.answers == before.answers
    assert step.resumed
    assert step.replies == [asked]


def test_open_on_results_draws_the_results_again(walker: Walker):
    _to_contact(walker, "18_39")
    walker.tap("phone")
    shown = walker.cards()
    walker.send(Incoming(kind="event", value="open"))
    assert walker.cards() == shown and walker.question.state == "results"


def test_open_with_a_language_starts_or_switches_in_it(walker: Walker, pack):
    walker.send(Incoming(kind="event", value="open", lang="en"))
    assert walker.session.lang == "en"
    assert walker.question.text == pack.msg("welcome.body", "en")
    walker.tap("start")
    walker.send(Incoming(kind="event", value="open", lang="ja"))
    assert walker.question.text == pack.msg("q.whose", "ja")


def _to_contact(walker: Walker, age: str) -> None:
    """A lonely person of this age, up to the question of how to talk (any city)."""
    walker.start()
    for value in ("start", "self", age, "loneliness", "none"):
        walker.tap(value)
    while walker.question.state != "contact":
        walker.tap("skip")


def _to_results_by_chat(engine, now):
    walker = Walker(engine, now=now)
    _to_contact(walker, "40_64")
    walker.tap("chat")
    return walker


def test_chat_preference_without_staff_says_so(engine, pack):
    walker = _to_results_by_chat(engine, WEEKDAY_MORNING)
    texts = [r.text for r in walker.replies if isinstance(r, Text)]
    assert pack.msg("results.chat_no_staff", "ja") in texts


@pytest.mark.parametrize("moment", ["office", "night"])
def test_chat_preference_with_staff_offers_a_person_and_says_when(pack, moment):
    from bot.wiring import build_engine

    engine = build_engine(pack, handoff=True)
    now = WEEKDAY_MORNING if moment == "office" else WEEKDAY_MORNING.replace(hour=22)
    walker = _to_results_by_chat(engine, now)
    said = "\n".join(r.text for r in walker.replies if isinstance(r, Text))
    assert pack.msg("cmd.human", "ja") in said
    when = (pack.msg("handoff.when_open", "ja") if moment == "office"
            else pack.msg("handoff.when_closed", "ja").split("{")[0])
    assert when in said
    assert "cmd:human" in [c.value for c in walker.question.choices]
    if moment == "night":
        lines = [engine.pack.windows[c.id] for c in walker.cards()]
        assert any(w.hours and w.hours.always for w in lines)  # someone answers tonight
        # ... and no line for another age band (no children's line for a 40–64-year-old)
        assert all(not w.ages or "40_64" in w.ages for w in lines)
