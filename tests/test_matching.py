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
