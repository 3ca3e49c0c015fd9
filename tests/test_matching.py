"""Matching answers to windows: deterministic, explainable, pinned on the handbook's cases."""

from __future__ import annotations

from bot.pack.matching import Answers, match
from tests.conftest import WEEKDAY_MORNING, Walker


def test_family_midlife_hikikomori_gets_the_hikikomori_window_first(pack):
    found = match(pack, Answers(whose="family", age="40_64", concerns=("hikikomori",)))
    assert found.windows[0].window.id == "hikikomori_window"
    assert "primary:hikikomori" in found.windows[0].reasons


def test_dv_in_danger_puts_110_and_the_dv_centre_first(kyoto_pack):
    pack = kyoto_pack
    found = match(pack, Answers(whose="self", age="18_39", concerns=("dv_abuse",),
                                flags=frozenset({"danger_now"})))
    assert found.hotlines[0].window.id == "police_110"
    assert found.hotlines[0].urgent and found.urgent
    assert found.windows[0].window.id == "kyoto_dv_support"


def test_dv_not_in_danger_does_not_show_110(pack):
    found = match(pack, Answers(whose="self", concerns=("dv_abuse",)))
    assert "police_110" not in [m.window.id for m in found.hotlines]
    assert not found.urgent


def test_child_at_school_gets_7333_and_the_children_youth_window(kyoto_pack):
    pack = kyoto_pack
    found = match(pack, Answers(whose="self", age="u18", concerns=("children_youth",),
                                flags=frozenset({"school"})))
    assert found.hotlines[0].window.id == "kodomo_hotline_7333"
    window_ids = [m.window.id for m in found.windows]
    top = found.windows[0].window
    assert "children_youth" in top.categories and "school" in top.flags, window_ids


def test_ward_brings_its_centre(kyoto_pack):
    pack = kyoto_pack
    found = match(pack, Answers(concerns=("loneliness",), ward="daigo"))
    assert found.centre is not None and found.centre.id == "centre_daigo"


def test_age_limited_windows_are_left_out(pack):
    adult = match(pack, Answers(age="40_64", concerns=("children_youth",)))
    for m in [*adult.windows, *adult.hotlines]:
        assert m.window.ages is None or "40_64" in m.window.ages


def test_matching_is_deterministic(pack):
    answers = Answers(whose="friend", age="65_plus", concerns=("elderly", "loneliness"),
                      contact="phone")
    first = match(pack, answers)
    for _ in range(5):
        again = match(pack, answers)
        assert [m.window.id for m in again.windows] == [m.window.id for m in first.windows]
        assert [m.score for m in again.windows] == [m.score for m in first.windows]


def test_every_category_alone_finds_a_window(pack):
    for cat in pack.categories:
        found = match(pack, Answers(concerns=(cat,)))
        assert found.windows or found.hotlines, cat


def test_results_show_cards_with_tel_links_and_open_status(kyoto_engine):
    walker = Walker(kyoto_engine, now=WEEKDAY_MORNING)
    walker.start()
    for value in ("start", "family", "40_64", "hikikomori", "long", "not_open", "none",
                  "sakyo", "phone"):
        walker.tap(value)
    cards = walker.cards()
    assert cards[0].id == "hikikomori_window"
    assert cards[0].phone is None and "ひと・まち交流館" in cards[0].summary  # its address
    phoned = [c for c in cards if c.phone]
    assert phoned and all(c.tel == "tel:" + c.phone.replace("-", "").replace("#", "%23")
                          for c in phoned)
    assert any(c.id == "centre_sakyo" and c.url for c in cards)
    assert all(c.status for c in cards if c.hours)


# --- results people can use (issue 10) ---

AGES = ("u18", "18_39", "40_64", "65_plus")


def _all_results(engine, now=WEEKDAY_MORNING):
    """Every age × whose × primary worry (+ a second worry), walked to results; the cards of
    the answer that shows the results, with the walk that led there."""
    from bot.replies import Cards

    for age in AGES:
        for whose in ("self", "family"):
            for concern in engine.pack.categories:
                walker = Walker(engine, now=now)
                walker.start()
                for value in ("start", whose, age, concern):
                    walker.tap(value)
                while walker.question.state != "contact":
                    values = [c.value for c in walker.question.choices
                              if not c.value.startswith("cmd:")]
                    walker.tap("elderly" if walker.question.state == "more"
                               and "elderly" in values else
                               "none" if "none" in values else values[0])
                walker.tap("chat")
                cards = [c for r in walker.replies if isinstance(r, Cards) for c in r.cards]
                yield (age, whose, concern), walker, cards


def test_no_window_twice_in_one_answer(pack):
    """At night with staff connected, "in this chat" adds the 24-hour lines to the results:
    a line already shown is not shown again."""
    from bot.wiring import build_engine

    night = WEEKDAY_MORNING.replace(hour=22)
    for walk, _, cards in _all_results(build_engine(pack, handoff=True), now=night):
        ids = [c.id for c in cards]
        assert len(ids) == len(set(ids)), (walk, ids)


def test_no_window_for_another_age_band_in_any_answer(engine, pack):
    seen = 0
    for (age, _, _), _, cards in _all_results(engine):
        for card in cards:
            window = pack.windows[card.id]
            assert not window.ages or age in window.ages, (age, card.id)
            seen += bool(window.ages)
    has_limited = any(w.ages for w in pack.windows.values())
    assert seen or not has_limited  # age-limited windows do appear where they fit


def test_a_midlife_person_gets_no_childrens_desk(kyoto_pack):
    pack = kyoto_pack
    for concern in ("poverty", "loneliness"):
        found = match(pack, Answers(whose="self", age="40_64", concerns=(concern,)))
        ids = {m.window.id for m in [*found.windows, *found.hotlines]}
        assert not ids & {"child_family_support", "oyako_hotline_info",
                          "kodomo_hotline_7333"}, (concern, ids)
    young = match(pack, Answers(whose="self", age="18_39", concerns=("poverty",)))
    assert "child_family_support" in {m.window.id for m in young.windows}
