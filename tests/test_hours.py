"""Open now? Asia/Tokyo wall clock, Japanese public holidays, year-end closures."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.cards import hours_text
from bot.pack.hours import is_open, next_opening
from bot.pack.models import Hours

TOKYO = ZoneInfo("Asia/Tokyo")
OFFICE = Hours.model_validate({
    "weekly": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:30",
                "end": "17:15"}],
    "closed_dates": ["12-29", "12-30", "12-31", "01-01", "01-02", "01-03"],
    "source": "test",
})
ALWAYS = Hours.model_validate({"always": True, "source": "test"})


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)


@pytest.mark.parametrize(("moment", "expected"), [
    (tokyo(2026, 11, 24, 8, 29), False),   # Tuesday, before opening
    (tokyo(2026, 11, 24, 8, 30), True),    # opening minute
    (tokyo(2026, 11, 24, 17, 14), True),
    (tokyo(2026, 11, 24, 17, 15), False),  # closing minute is closed
    (tokyo(2026, 11, 28, 10, 0), False),   # Saturday
    (tokyo(2026, 11, 23, 10, 0), False),   # 勤労感謝の日 (a Monday holiday)
    (tokyo(2026, 12, 29, 10, 0), False),   # year-end closure, a Tuesday
    (tokyo(2027, 1, 4, 10, 0), True),      # first working day of the year
])
def test_office_hours(moment, expected):
    assert is_open(OFFICE, moment) is expected


def test_utc_input_is_read_in_tokyo_time():
    # 00:30 UTC on Tuesday is 09:30 in Kyoto.
    assert is_open(OFFICE, datetime(2026, 11, 24, 0, 30, tzinfo=UTC))
    # 23:30 UTC on Monday 23 Nov is 08:30 Tuesday in Kyoto: open.
    assert is_open(OFFICE, datetime(2026, 11, 23, 23, 30, tzinfo=UTC))


def test_naive_time_is_refused():
    with pytest.raises(ValueError):
        is_open(OFFICE, datetime(2026, 11, 24, 10, 0))


def test_always_open_on_holidays_and_at_night():
    assert is_open(ALWAYS, tokyo(2027, 1, 1, 3, 0))


def test_next_opening_skips_holiday_and_weekend():
    # Friday evening before a Monday holiday (2026-11-23): next opening is Tuesday 08:30.
    assert next_opening(OFFICE, tokyo(2026, 11, 20, 18, 0)) == tokyo(2026, 11, 24, 8, 30)


def test_hours_must_be_one_or_the_other():
    with pytest.raises(ValueError):
        Hours.model_validate({"source": "test"})
    with pytest.raises(ValueError):
        Hours.model_validate({"always": True, "source": "test", "weekly": OFFICE.weekly})


def test_hours_read_naturally(pack):
    assert hours_text(pack, OFFICE, "ja") == "平日 8:30〜17:15（祝日・年末年始を除く）"
    assert hours_text(pack, OFFICE, "en") == (
        "Weekdays 8:30-17:15 (closed on public holidays and over the New Year)")
    assert hours_text(pack, ALWAYS, "ja") == "24時間・年中無休"
