"""Issue 11: every line right (monthly hours, sources, confirmed dates), every window reachable,
no internal note on a resident's card, and crisis replies by the clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from bot.cards import hours_text
from bot.engine import Incoming
from bot.pack.hours import is_open, next_opening
from bot.pack.loader import COMMON
from bot.pack.models import Hours
from bot.replies import Cards
from bot.validate import load_checks, validate
from tests.pack_helpers import edit_yaml

REPO = Path(__file__).resolve().parents[1]
TOKYO = ZoneInfo("Asia/Tokyo")
# The national いのちの電話 free line, as the pack has it: daily 16:00–21:00, and from 8:00 on the
# 10th of every month to 8:00 on the 11th.
FREE_LINE = Hours.model_validate({
    "weekly": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "16:00",
                "end": "21:00"}],
    "holidays": "open",
    "monthly": [{"day": 10, "start": "08:00", "end": "08:00", "next_day": True}],
    "source": "test",
})


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)


# -- the monthly rule -------------------------------------------------------------------------

@pytest.mark.parametrize(("moment", "expected"), [
    (tokyo(2026, 12, 9, 20, 59), True),    # the daily evening hours
    (tokyo(2026, 12, 9, 21, 0), False),
    (tokyo(2026, 12, 10, 7, 59), False),   # the 10th, before 8:00
    (tokyo(2026, 12, 10, 8, 0), True),     # the 10th from 8:00 ...
    (tokyo(2026, 12, 10, 13, 0), True),    # ... all day ...
    (tokyo(2026, 12, 10, 23, 30), True),
    (tokyo(2026, 12, 11, 3, 0), True),     # ... through the night ...
    (tokyo(2026, 12, 11, 7, 59), True),
    (tokyo(2026, 12, 11, 8, 0), False),    # ... to 8:00 on the 11th
    (tokyo(2026, 12, 11, 16, 0), True),    # then the daily hours again
    (tokyo(2026, 11, 23, 3, 0), False),    # 03:00 on a public holiday, not the 10th
    (tokyo(2027, 2, 10, 3, 0), False),     # the 10th but before 8:00
])
def test_free_line_hours_with_the_tenth_of_the_month(moment, expected):
    assert is_open(FREE_LINE, moment) is expected


def test_next_opening_finds_the_tenth_and_the_evening():
    assert next_opening(FREE_LINE, tokyo(2026, 12, 9, 22, 0)) == tokyo(2026, 12, 10, 8, 0)
    assert next_opening(FREE_LINE, tokyo(2026, 12, 11, 9, 0)) == tokyo(2026, 12, 11, 16, 0)
    only_monthly = Hours.model_validate({"monthly": [{"day": 10, "start": "08:00",
                                                      "end": "08:00", "next_day": True}],
                                         "source": "test"})
    assert next_opening(only_monthly, tokyo(2026, 12, 12, 0, 0)) == tokyo(2027, 1, 10, 8, 0)


def test_monthly_period_must_end_after_it_starts_unless_next_day():
    with pytest.raises(ValidationError):
        Hours.model_validate({"monthly": [{"day": 10, "start": "08:00", "end": "08:00"}],
                              "source": "test"})
    with pytest.raises(ValidationError):
        Hours.model_validate({"monthly": [{"day": 32, "start": "08:00", "end": "09:00"}],
                              "source": "test"})


def test_the_monthly_rule_reads_naturally(kyoto_pack):
    assert hours_text(kyoto_pack, FREE_LINE, "ja") == "毎日 16:00〜21:00、毎月10日 8:00〜翌8:00"
    assert "day 10 of every month from 8:00 to 8:00 the next day" in hours_text(
        kyoto_pack, FREE_LINE, "en")


# -- the lines in the Kyoto pack ----------------------------------------------------------------

def test_the_missing_lines_are_in_the_pack_with_sources(kyoto_pack):
    by_phone = {w.phone: w for w in kyoto_pack.windows.values() if w.phone}
    free = by_phone["0120-783-556"]
    assert free.hours.monthly and free.hours.monthly[0].day == 10
    assert "akiruno" in free.hours.source
    assert by_phone["0120-0-78310"].hours.always
    assert "mext.go.jp" in by_phone["0120-0-78310"].source
    assert by_phone["188"].hours is None          # its hours are the local centre's
    assert by_phone["075-256-0800"].id == "consumer_centre"
    assert "075-256-1110" not in by_phone         # the department's line is gone
    assert "075-212-7808" not in by_phone         # no current source for the 2020 number


def test_summaries_tell_the_truth_about_charges_and_hours(kyoto_pack):
    kyoto = kyoto_pack.windows["kyoto_inochi_no_denwa"]
    assert "通話料" in kyoto.summary.ja and "charge" in kyoto.summary.en
    yorisoi = kyoto_pack.windows["yorisoi_hotline"]
    assert "外国語の相談は24時間ではなく" in yorisoi.summary.ja
    assert "not 24 hours" in yorisoi.summary.en


def test_every_window_is_reachable_and_carries_no_internal_note(kyoto_pack):
    markers = load_checks()["internal_note_markers"]
    for w in kyoto_pack.windows.values():
        assert w.reachable, w.id
        shown = [w.name.ja, w.name.en, w.summary.ja, w.summary.en]
        if w.hours and w.hours.note:
            shown += [w.hours.note.ja, w.hours.note.en]
        assert not any(m.casefold() in t.casefold() for m in markers for t in shown), w.id


def test_a_ward_centre_phone_or_address_says_whose_it_is(kyoto_pack):
    """A centre's number may be its ward office's or one section's: the card must say which, and
    an address is the ward office's (the centres sit in the ward and branch offices)."""
    centres = [kyoto_pack.windows[w.centre] for w in kyoto_pack.wards.wards]
    assert sum(1 for c in centres if c.phone) >= 4 and sum(1 for c in centres if c.address) >= 7
    for centre in centres:
        if centre.phone:
            assert "電話" in centre.summary.ja and ("区役所" in centre.summary.ja
                                                    or "室" in centre.summary.ja), centre.id
            assert "phone number is" in centre.summary.en, centre.id
            assert centre.source.startswith("http"), centre.id
        if centre.address:
            assert "区役所" in centre.address.ja and "Ward Office" in centre.address.en, centre.id
            assert "場所" not in centre.summary.ja, centre.id  # the card shows the place itself


def test_every_ward_centre_can_be_reached(kyoto_pack):
    for ward in kyoto_pack.wards.wards:
        centre = kyoto_pack.windows[ward.centre]
        assert centre.url or centre.phone or centre.address, ward.id


# -- validate -----------------------------------------------------------------------------------

def test_validate_fails_on_a_window_nobody_can_reach(pack_copy):
    def change(data):
        w = next(w for w in data if w["id"] == "wings_kyoto")
        w.pop("url")
    edit_yaml(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(e.startswith("windows.yaml: wings_kyoto:") and "no phone, mail, url or address"
               in e for e in errors), errors


def test_an_address_is_a_way_to_reach(pack_copy):
    def change(data):
        w = next(w for w in data if w["id"] == "wings_kyoto")
        w.pop("url")
        w["address"] = {"ja": "京都市中京区", "en": "Nakagyo, Kyoto"}
    edit_yaml(pack_copy / "windows.yaml", change)
    assert validate(str(pack_copy)) == []


@pytest.mark.parametrize("where", ["summary", "hours.note"])
def test_validate_fails_on_an_internal_note_a_resident_would_read(pack_copy, where):
    def change(data):
        w = next(w for w in data if w.get("hours") and w["hours"].get("weekly"))
        if where == "summary":
            w["summary"]["ja"] += "（2020年開設時の案内。年末年始は未確認）"
        else:
            w["hours"]["note"] = {"ja": "（2020年開設時の案内。年末年始は未確認）",
                                  "en": "(as announced at opening in 2020)"}
    edit_yaml(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(f".{where}: resident-facing" in e and "internal note" in e for e in errors), errors


def test_a_staff_note_field_is_fine_and_never_shown(pack_copy):
    def change(data):
        data[0]["note"] = "未確認: CITY TEAM re-check"
    edit_yaml(pack_copy / "windows.yaml", change)
    assert validate(str(pack_copy)) == []


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_validate_fails_on_a_revealing_word_in_a_neutral_notice(pack_copy, lang):
    word = {"ja": "相談員からの返信があります", "en": "Staff have answered your case"}[lang]
    edit_yaml(pack_copy.parent / COMMON / f"messages.{lang}.yaml",
          lambda d: d["notice"].update(text=word))
    errors = validate(str(pack_copy))
    assert any(e.startswith(f"messages.{lang}.yaml: notice.text:") and "revealing" in e
               for e in errors), errors


def test_validate_fails_when_a_crisis_has_no_line_open_at_any_hour(pack_copy):
    def change(data):
        for w in data:
            if "child_harm" in w.get("crisis", []) and w.get("hours", {}).get("always"):
                w["crisis"] = [k for k in w["crisis"] if k != "child_harm"]
    edit_yaml(pack_copy / "hotlines.yaml", change)
    errors = validate(str(pack_copy))
    assert any("crisis 'child_harm' has no line with hours.always" in e for e in errors), errors


# -- the re-check list --------------------------------------------------------------------------

def test_windows_check_lists_every_window_oldest_first(kyoto_pack):
    proc = subprocess.run([sys.executable, "-m", "bot", "windows", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[1:]
    assert {line.split()[2] for line in lines} == set(kyoto_pack.windows)
    stamps = [line.split()[0] for line in lines]
    never = [s for s in stamps if s == "never"]
    dated = [date.fromisoformat(s) for s in stamps if s != "never"]
    assert stamps[:len(never)] == never            # never confirmed: re-check first
    assert dated == sorted(dated) and dated        # then the oldest confirmation first
    free = next(line for line in lines if line.split()[2] == "inochi_free_dial")
    assert "0120-783-556" in free and "akiruno" in free
    hiki = next(line for line in lines if line.split()[2] == "hikikomori_window")
    assert "[note: " in hiki  # the staff-only note shows here, never to a resident


# -- crisis replies by the clock ----------------------------------------------------------------

def crisis_cards(engine, text: str, now: datetime):
    step = engine.step(None, Incoming("text", text), now)
    cards = [c for r in step.replies if isinstance(r, Cards) and r.urgent for c in r.cards]
    return cards


def _open_first_and_closed_marked(pack, cards):
    open_now = pack.msg("hours.status_open", "ja")
    statuses = [c.status for c in cards]
    assert statuses[0] == open_now                   # at least one line open now, first
    first_closed = next((i for i, s in enumerate(statuses) if s != open_now), len(statuses))
    assert all(s != open_now for s in statuses[first_closed:])  # open ones all come first
    for c in cards[first_closed:]:
        assert c.status.startswith("受付時間外（") and "から" in c.status, c
    assert all(c.hours for c in cards)              # no line of unknown hours in a crisis


HOLIDAY_3AM = tokyo(2026, 11, 23, 3, 0)      # 勤労感謝の日, 03:00
TENTH_3AM = tokyo(2026, 12, 10, 3, 0)        # the 10th, 03:00 (the free line opens at 8:00)
TENTH_NOON = tokyo(2026, 12, 10, 12, 0)      # the 10th: the free line open all day
OFFICE_HOURS = tokyo(2026, 11, 24, 10, 0)    # a Tuesday, 10:00


@pytest.mark.parametrize("moment", [HOLIDAY_3AM, TENTH_3AM, TENTH_NOON, OFFICE_HOURS])
@pytest.mark.parametrize("text", ["死にたい", "夫に殴られている", "子どもを叩いてしまいそう"])
def test_crisis_lines_open_now_first_closed_ones_say_when(engine, pack, moment, text):
    """In every city's pack."""
    cards = crisis_cards(engine, text, moment)
    assert cards
    _open_first_and_closed_marked(pack, cards)


def test_at_3am_on_a_holiday_the_free_line_says_when_it_opens(kyoto_engine, kyoto_pack):
    cards = crisis_cards(kyoto_engine, "死にたい", HOLIDAY_3AM)
    free = next(c for c in cards if c.phone == "0120-783-556")
    assert free.status == "受付時間外（11月23日（月）16:00から）"
    assert cards[0].phone != "0120-783-556"
    assert any(c.phone == "075-864-4343" and c.status == "いま受付中" for c in cards)
    assert "0570-064-556" not in {c.phone for c in cards}


def test_on_the_tenth_the_free_line_is_open_all_day(kyoto_engine, kyoto_pack):
    for moment in (TENTH_NOON, tokyo(2026, 12, 11, 3, 0)):
        cards = crisis_cards(kyoto_engine, "死にたい", moment)
        free = next(c for c in cards if c.phone == "0120-783-556")
        assert free.status == "いま受付中"
        open_ones = [c.phone for c in cards if c.status == "いま受付中"]
        assert "0120-783-556" in open_ones
    at_3am = crisis_cards(kyoto_engine, "死にたい", TENTH_3AM)
    free = next(c for c in at_3am if c.phone == "0120-783-556")
    assert free.status == "受付時間外（12月10日（木）8:00から）"


def test_the_navi_dial_is_a_charged_line_open_in_the_day(kyoto_engine, kyoto_pack):
    navi = next(w for w in kyoto_pack.windows.values() if w.phone == "0570-783-556")
    assert "通話料" in navi.summary.ja and "charges" in navi.summary.en
    assert navi.hours.holidays == "open" and navi.confirmed is not None
    day = crisis_cards(kyoto_engine, "死にたい", OFFICE_HOURS)
    assert next(c for c in day if c.phone == "0570-783-556").status == "いま受付中"
    night = crisis_cards(kyoto_engine, "死にたい", HOLIDAY_3AM)
    assert next(c for c in night
                if c.phone == "0570-783-556").status == "受付時間外（11月23日（月）10:00から）"


def test_in_office_hours_the_free_line_opens_this_evening(kyoto_engine):
    cards = crisis_cards(kyoto_engine, "死にたい", OFFICE_HOURS)
    free = next(c for c in cards if c.phone == "0120-783-556")
    assert free.status == "受付時間外（11月24日（火）16:00から）"
    assert [c.phone for c in cards].index("0120-783-556") > [c.phone for c in cards].index("119")
