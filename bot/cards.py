"""Windows of a content pack → Card replies, with hours and open-now in the resident's language."""

from __future__ import annotations

from datetime import datetime

from bot.pack.hours import is_open
from bot.pack.loader import Pack
from bot.pack.models import WEEKDAYS, Hours, Lang, Window
from bot.replies import Card

WEEKDAYS_MON_FRI = ["mon", "tue", "wed", "thu", "fri"]


def _clock(hhmm: str) -> str:
    hour, minute = hhmm.split(":")
    return f"{int(hour)}:{minute}"


def _days_text(pack: Pack, days: list[str], lang: Lang) -> str:
    if sorted(days, key=WEEKDAYS.index) == list(WEEKDAYS):
        return pack.msg("hours.everyday", lang)
    if sorted(days, key=WEEKDAYS.index) == WEEKDAYS_MON_FRI:
        return pack.msg("hours.weekdays", lang)
    sep = pack.msg("hours.day_separator", lang)
    return sep.join(pack.msg(f"hours.day.{d}", lang) for d in sorted(days, key=WEEKDAYS.index))


def hours_text(pack: Pack, hours: Hours, lang: Lang) -> str:
    """E.g. "Weekdays 8:30-17:15 (closed on public holidays ...)", in the pack's words."""
    if hours.always:
        text = pack.msg("hours.always", lang)
    else:
        parts = [pack.msg("hours.period", lang).format(
                    days=_days_text(pack, p.days, lang), start=_clock(p.start),
                    end=_clock(p.end)) for p in hours.weekly]
        text = pack.msg("hours.period_separator", lang).join(parts)
        if hours.holidays == "closed" and hours.closed_dates:
            text += pack.msg("hours.closed_holidays_and_new_year", lang)
        elif hours.holidays == "closed":
            text += pack.msg("hours.closed_holidays", lang)
    if hours.note:
        text += " " + hours.note.get(lang)
    return text


def card(pack: Pack, window: Window, lang: Lang, now: datetime) -> Card:
    open_now = is_open(window.hours, now) if window.hours else None
    if window.hours is None:
        status = None
    elif window.hours.always:
        status = pack.msg("hours.status_always", lang)
    else:
        status = pack.msg("hours.status_open" if open_now else "hours.status_closed", lang)
    return Card(
        id=window.id, kind=window.kind, name=window.name.get(lang),
        summary=window.summary.get(lang), phone=window.phone, tel=window.tel,
        hours=hours_text(pack, window.hours, lang) if window.hours else None,
        open_now=open_now, status=status, url=window.url, mail=window.mail,
    )
