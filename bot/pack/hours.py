"""Is a window open now? Asia/Tokyo wall-clock time, with Japanese public holidays (jpholiday).

Weekly periods follow the weekday and skip public holidays (when `holidays: closed`) and
closed dates; monthly periods (the 10th of every month, say) hold on that day whatever it is,
and may run into the next day (`next_day: true`, e.g. 8:00 on the 10th to 8:00 on the 11th).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import jpholiday

from bot.pack.models import WEEKDAYS, Hours

TOKYO = ZoneInfo("Asia/Tokyo")


def to_tokyo(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(TOKYO)


def is_closed_day(hours: Hours, day: date) -> bool:
    if hours.holidays == "closed" and jpholiday.is_holiday(day):
        return True
    return day.strftime("%m-%d") in hours.closed_dates


def _at(day: date, hhmm: str) -> datetime:
    """Wall-clock time on a day; "24:00" is midnight at the end of that day."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, tzinfo=TOKYO) + timedelta(hours=hour,
                                                                             minutes=minute)


def _spans(hours: Hours, day: date) -> Iterator[tuple[datetime, datetime]]:
    """The (start, end) spans that begin on `day`."""
    if not is_closed_day(hours, day):
        weekday = WEEKDAYS[day.weekday()]
        for p in hours.weekly:
            if weekday in p.days:
                yield _at(day, p.start), _at(day, p.end)
    for m in hours.monthly:
        if m.day == day.day:
            end_day = day + timedelta(days=1) if m.next_day else day
            yield _at(day, m.start), _at(end_day, m.end)


def is_open(hours: Hours, now: datetime) -> bool:
    if hours.always:
        return True
    local = to_tokyo(now)
    today = local.date()
    # A span that began yesterday may still run (monthly periods that end the next day).
    return any(start <= local < end for day in (today - timedelta(days=1), today)
               for start, end in _spans(hours, day))


def next_opening(hours: Hours, now: datetime, horizon_days: int = 35) -> datetime | None:
    """The next moment the window opens (now if open); None if it never opens soon.

    The horizon covers a month so that a line open only on one day of the month is found.
    """
    if is_open(hours, now):
        return to_tokyo(now)
    local = to_tokyo(now)
    for offset in range(horizon_days + 1):
        day = (local + timedelta(days=offset)).date()
        starts = sorted(start for start, _ in _spans(hours, day) if start > local)
        if starts:
            return starts[0]
    return None
