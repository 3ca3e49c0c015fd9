"""Is a window open now? Asia/Tokyo wall-clock time, with Japanese public holidays (jpholiday)."""

from __future__ import annotations

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


def is_open(hours: Hours, now: datetime) -> bool:
    if hours.always:
        return True
    local = to_tokyo(now)
    if is_closed_day(hours, local.date()):
        return False
    weekday = WEEKDAYS[local.weekday()]
    hhmm = local.strftime("%H:%M")
    return any(weekday in p.days and p.start <= hhmm < p.end for p in hours.weekly)


def next_opening(hours: Hours, now: datetime, horizon_days: int = 14) -> datetime | None:
    """The next moment the window opens (now if open); None if it never opens soon."""
    if is_open(hours, now):
        return to_tokyo(now)
    local = to_tokyo(now)
    for offset in range(horizon_days + 1):
        day = (local + timedelta(days=offset)).date()
        if is_closed_day(hours, day):
            continue
        weekday = WEEKDAYS[day.weekday()]
        starts = sorted(p.start for p in hours.weekly if weekday in p.days)
        for start in starts:
            h, m = (int(x) for x in start.split(":"))
            moment = datetime(day.year, day.month, day.day, h, m, tzinfo=TOKYO)
            if moment > local:
                return moment
    return None
